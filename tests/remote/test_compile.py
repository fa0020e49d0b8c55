"""Remote traces and sessions with native control flow: only a graph travels, results match local ones."""
import torch

import nnglass


def test_native_if_print_and_loop_in_a_remote_trace(tiny, x, capsys):
    def run(remote):
        with tiny.trace(x, remote=remote):
            h = tiny.layer1.output
            if h.sum() > -1e6 and not h.max() > 1e6:
                tiny.layer1.output[:, 0] = 0
            else:
                tiny.layer1.output[:, 1] = 0
            print(f"max {h.max():.3f}")
            rows = []
            for i in range(2):
                rows.append(tiny.layer1.output[0, i].save())
            out = tiny.output.save()
        return out, rows, capsys.readouterr().out

    (local, local_rows, local_log), (remote, remote_rows, remote_log) = run(False), run(True)
    assert isinstance(remote, torch.Tensor) and torch.equal(local, remote)
    assert all(torch.equal(a, b) for a, b in zip(local_rows, remote_rows))
    assert local_log.strip() in remote_log


def test_native_loop_over_a_proxy_in_a_remote_session(tiny):
    with tiny.session(remote=True):
        got = nnglass.list().save()
        for item in nnglass.list([1, 2, 3]):
            if item == 3:
                break
            got.append(item)
    assert got == [1, 2]
