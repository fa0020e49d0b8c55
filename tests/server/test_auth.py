"""Auth: job ids are unguessable and bound to the key that made them; tokens never reach a log."""
import logging
import uuid

import httpx
import pytest
import torch

from tests.server.attacks.craft import attack, final, post
from tests.server.serving import hosting, tiny_model


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    with hosting({"tiny": tiny_model()}, tmp_path_factory.mktemp("server")) as served:
        yield served


def test_job_ids_are_random_uuids(hosted, x):
    ids = [post(hosted, attack(x)).json()["job_id"] for _ in range(20)]
    assert len(set(ids)) == 20 and all(uuid.UUID(job).version == 4 for job in ids)
    for job in ids:
        final(hosted, job)


def test_another_keys_job_is_not_found(hosted, x):
    job = post(hosted, attack(x)).json()["job_id"]
    assert final(hosted, job)["status"] == "COMPLETED"
    _, other = hosted.app.state.keys.create("mallory")
    theirs = {"X-API-Key": other}
    assert httpx.get(f"{hosted.url}/jobs/{job}/status", headers=theirs).status_code == 404
    assert httpx.get(f"{hosted.url}/jobs/{job}/result", headers=theirs).status_code == 404
    mine = httpx.get(f"{hosted.url}/jobs/{job}/result", headers={"X-API-Key": hosted.token})
    assert mine.status_code == 200  # mallory's attempts did not use up the owner's download


def test_tokens_never_appear_in_logs_or_statuses(hosted, x, caplog):
    caplog.set_level(logging.DEBUG)
    model = tiny_model()
    with model.trace(x, remote=True):
        out = model.output.save()
    assert isinstance(out.value, torch.Tensor)
    wrong = "nng_" + "s3cret" * 6
    assert post(hosted, attack(x), token=wrong).status_code == 403
    job = post(hosted, attack(x)).json()["job_id"]
    statuses = httpx.get(f"{hosted.url}/jobs/{job}/status", headers={"X-API-Key": hosted.token}).text
    for token in (hosted.token, wrong):
        assert token not in caplog.text and token not in statuses
