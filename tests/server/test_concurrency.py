"""Many clients at once: every job gets exactly its own results."""
import logging
import threading
import time

import pytest
import torch

from tests.server.rounding import same
from tests.server.serving import hosting, tiny_model

THREADS, JOBS = 20, 10


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model()}, tmp_path_factory.mktemp("server")) as served:
        yield served


def test_twenty_clients_submitting_ten_jobs_each(hosted, net, caplog):
    caplog.set_level(logging.WARNING, logger="nnglass.remote")  # not 800 status lines
    tiny = tiny_model()
    inputs = [[torch.full((1, 5), float(t * JOBS + j)) for j in range(JOBS)] for t in range(THREADS)]
    results: dict[int, list] = {}
    failures: list[BaseException] = []

    def client(t: int) -> None:
        try:
            mine = []
            for x in inputs[t]:
                with tiny.trace(x, remote=True):
                    hidden = tiny.layer1.output.save()
                    out = tiny.output.save()
                mine.append((hidden.value, out.value))
            results[t] = mine
        except BaseException as error:  # reported below, with the thread's own traceback
            failures.append(error)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.perf_counter() - started
    assert not failures, failures[0]
    assert sorted(results) == list(range(THREADS)) and elapsed < 60
    for t, mine in results.items():
        for x, (hidden, out) in zip(inputs[t], mine):
            assert same(hidden, net.layer1(x)) and same(out, net(x))  # jobs may share a forward
