"""Frames of user code: finding the with-statement, skipping a body, writing variables back."""
import sys

from nnglass.tracing import frames


class Probe:
    """A context that records what with_frame finds (called from here, as a context's __enter__ is)."""

    def __enter__(self):
        self.frame = frames.with_frame()
        return self

    def __exit__(self, *exc):
        return None


def test_with_frame_is_the_frame_of_the_with_statement():
    with Probe() as probe:
        pass
    assert probe.frame is sys._getframe()


def test_with_frame_is_none_when_entered_by_hand():
    assert Probe().__enter__().frame is None


def test_write_sets_function_locals_and_read_reads_them():
    value = 1
    frame = sys._getframe()
    frames.write(frame, {"value": 2})
    assert value == 2 and frames.read(frame)["value"] == 2


def test_write_sets_module_variables():
    namespace = {"frames": frames, "sys": sys}
    exec("value = 1\nframes.write(sys._getframe(), {'value': 2})\n", namespace)
    assert namespace["value"] == 2


def test_skip_body_raises_at_the_first_line_of_the_body():
    class Skipper:
        def __enter__(self):
            frame = sys._getframe(1)
            assert frames.skip_body(frame, frame.f_lineno + 1)
            return self

        def __exit__(self, kind, error, tb):
            return isinstance(error, frames.SkipBody)
    ran = False
    with Skipper():
        ran = True
    assert not ran and sys.gettrace() is None


def test_skip_body_declines_under_another_tracer():
    sys.settrace(lambda *a: None)
    try:
        assert not frames.skip_body(sys._getframe(), 0)
    finally:
        sys.settrace(None)


def test_skip_body_is_not_caught_by_except_exception():
    assert not issubclass(frames.SkipBody, Exception)
