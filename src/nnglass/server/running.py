"""Running: what runs one job's request, wherever it runs (this process, a forked child, a Ray actor).

`execute` turns a wire request (the JSON dict or its bytes, as submitted or as merged from several jobs)
into its result bytes; `JobRun` runs that work on a thread within the time limit and posts the job's
statuses to a sink (the job's record, or a `Relay` that sends them back from where the job runs).
"""
from __future__ import annotations

import ctypes
import json
import threading
from typing import Any, Callable, Protocol, Union

from ..remote import serialize
from ..remote.schema import JobStatus
from ..tracing import local
from ..tracing.node import location
from .budget import Budget, LimitExceeded
from .limits import Limits, check_result

__all__ = ["JobRun", "JobTimeout", "Relay", "Sink", "execute", "replay"]

Wire = Union[dict, bytes]  # a request as `serialize.request` makes it, or the JSON bytes of one


class JobTimeout(BaseException):
    """Raised in the thread of a job that ran past the limit (a BaseException: model code won't catch it)."""


class Sink(Protocol):
    """Where a running job's statuses and result go: its JobRecord, or a Relay."""

    def post(self, status: JobStatus, description: str = "", **fields: Any) -> None: ...

    def finish(self, result: bytes) -> None: ...


def execute(data: Wire, models: Callable[[str], Any], limits: Limits, held: int, jobs: int = 1) -> bytes:
    """Decode a request against the hosted `models` and run it within the tensor-size budget; its saved
    values as JSON bytes, within the result limits (`held`: bytes of results its key has not downloaded;
    `jobs`: how many users' jobs the request holds, each of which may return the most bytes)."""
    request = serialize.Job(json.loads(data) if isinstance(data, bytes) else data, models)
    with Budget(limits.max_tensor_elements, limits.max_list_elements, limits.max_products):
        request.run()
    result = json.dumps(request.encoded_results(), separators=(",", ":")).encode()
    check_result(limits, len(result), held, jobs)
    return result


class JobRun:
    """One job's work on a thread of its own, stopped with JobTimeout if it runs past the time limit.

    The exception is sent only while the job is still running (`finished` is read and written under
    `lock`), and the thread makes one more Python call after it finishes, where the interpreter raises
    an exception sent just before: so every JobTimeout sent is raised inside `main`, never later.
    """

    def __init__(self, sink: Sink, work: Callable[[], bytes], limits: Limits, name: str) -> None:
        self.sink = sink
        self.work = work
        self.limits = limits
        self.timeout = limits.job_timeout_s
        self.lock = threading.Lock()
        self.finished = False
        self.thread = threading.Thread(target=self.main, name=f"nnglass-job-{name}", daemon=True)

    def start_and_wait(self) -> None:
        """Run the job; interrupt it at the time limit, then wait for it to unwind (hooks removed)."""
        self.thread.start()
        self.thread.join(self.timeout)
        if self.thread.is_alive():
            with self.lock:
                if not self.finished:
                    _async_raise(self.thread.ident, JobTimeout)
            self.thread.join()

    def main(self) -> None:
        """Do the work here and now; post its result, or the error that ended it."""
        sink = self.sink
        local.set_log_handler(_Log(sink, self.limits.max_log_lines))
        try:
            try:
                result = self.work()
            finally:
                with self.lock:
                    self.finished = True
                _checkpoint()
            sink.finish(result)
        except JobTimeout:
            sink.post(JobStatus.ERROR, f"The job ran longer than this server's limit of {self.timeout:g} s "
                                       "(Limits.job_timeout_s) and was stopped.", error="TimeoutError")
        except Exception as error:
            node = getattr(error, "nnglass_node", None)
            where = "{}:{}".format(*location(node.where)) if node is not None and node.where else None
            sink.post(JobStatus.ERROR, str(error), error=type(error).__name__, where=where)
        except BaseException as error:  # an exit() or stop() that no session, loop or trace caught
            sink.post(JobStatus.ERROR, f"The job ended with {type(error).__name__}({error}) outside the "
                                       "scope that handles it.", error=type(error).__name__)
        finally:
            local.set_log_handler(None)


class Relay:
    """Stands in for a job's record where the job runs apart from it: statuses and the result become
    JSON-able messages for `send` (a pipe to the server, a Ray stream), applied there by `replay`."""

    def __init__(self, send: Callable[[list], None] = lambda message: None) -> None:
        self.send = send

    def post(self, status: JobStatus, description: str = "", **fields: Any) -> None:
        """Send a status."""
        self.send(["post", status.value, description, fields])

    def finish(self, result: bytes) -> None:
        """Send the result."""
        self.send(["finish", result.decode()])

    def sending(self, main: Callable[[], None]) -> Callable[[Callable[[list], None]], None]:
        """`main` as the work of a forked child: run with this relay sending down the child's pipe."""
        def child(send: Callable[[list], None]) -> None:
            self.send = send
            main()
        return child


def replay(sink: Sink, message: list) -> None:
    """Apply one message of a Relay to the job's real record."""
    if message[0] == "finish":
        sink.finish(message[1].encode())
    else:
        sink.post(JobStatus(message[1]), message[2], **message[3])


class _Log:
    """A job's log handler: each line becomes a LOG status, up to `limit` lines."""

    def __init__(self, sink: Sink, limit: int) -> None:
        self.sink, self.limit, self.lines = sink, limit, 0

    def __call__(self, text: str) -> None:
        self.lines += 1
        if self.lines > self.limit:
            raise LimitExceeded(f"the job logged more than {self.limit:,} lines (Limits.max_log_lines)")
        self.sink.post(JobStatus.LOG, text)


def _checkpoint() -> None:
    """A Python call: the interpreter raises an exception pending for this thread when it enters one."""


def _async_raise(thread: int, exception: type[BaseException]) -> None:
    """Raise `exception` in another thread when it next runs Python code (never call it to cancel one:
    PyThreadState_SetAsyncExc(id, NULL) leaves a flag set that makes CPython 3.11 spin under a profiler)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(exception))
