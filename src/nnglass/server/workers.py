"""Workers: one queue and one thread per hosted model, running jobs (or groups sharing a forward) in turn."""
from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import threading
import time
from typing import Callable, Iterator, Optional

from ..remote.schema import JobStatus
from ..tracing import local
from ..tracing.node import location
from .batching import Group, Grouping, fits, group_key
from .budget import Budget, LimitExceeded
from .integrity import Pristine
from .isolation import run_forked
from .jobs import JobRecord
from .limits import Limits, check_result
from .stats import JobStats

__all__ = ["JobTimeout", "ModelWorker"]


class JobTimeout(BaseException):
    """Raised in the thread of a job that ran past the limit (a BaseException: model code won't catch it)."""


class ModelWorker:
    """The queue of one model and the thread that runs its jobs in order."""

    def __init__(self, name: str, locks: dict[str, threading.Lock], limits: Limits,
                 pristine: dict[str, Pristine], held: Callable[[int], int]) -> None:
        self.name = name
        self.locks = locks            # one per hosted model: a job holds those of every model it uses
        self.limits = limits
        self.pristine = pristine      # per hosted model: its weights as loaded, put back after each job
        self.held = held              # bytes of results an API key has not downloaded yet
        self.queue: collections.deque[Optional[JobRecord]] = collections.deque()
        self.ready = threading.Condition()
        self.keys: dict[str, Grouping] = {}  # how queued jobs may share a forward
        self.running: list[JobRecord] = []
        self.runs = 0                        # runs started: a group sharing one forward counts once
        self.stats = JobStats()              # jobs running now, recent throughput (the status page)
        self.thread = threading.Thread(target=self._loop, name=f"nnglass-worker-{name}", daemon=True)
        self.thread.start()

    def __len__(self) -> int:
        """Jobs waiting or running."""
        return len(self.queue) + len(self.running)

    def submit(self, record: JobRecord) -> None:
        """Queue a job and tell its owner how many jobs run before it."""
        key = group_key(record.request) if self.limits.batch_size > 1 else None
        with self.ready:
            self._queued(record, len(self))
            self.queue.append(record)
            if key is not None:
                self.keys[record.id] = key
            self.ready.notify()

    def _queued(self, record: JobRecord, ahead: int) -> None:
        """Tell a job's owner its place in the queue."""
        record.post(JobStatus.QUEUED, f"Your job is in the queue of {self.name}; {ahead} job(s) before it.",
                    position=ahead)

    def close(self) -> None:
        """Let the thread finish the queued jobs and stop."""
        with self.ready:
            self.queue.append(None)
            self.ready.notify()
        self.thread.join()

    # -- the thread ---------------------------------------------------------------------------------
    def _next(self) -> Optional[JobRecord]:
        with self.ready:
            while not self.queue:
                self.ready.wait()
            record = self.queue.popleft()
            self.running = [record]
            self._moved()
            return record

    def _moved(self) -> None:
        """Tell every waiting job its new place, after jobs left the queue (under `ready`)."""
        for ahead, waiting in enumerate(self.queue, start=len(self.running)):
            if waiting is not None:
                self._queued(waiting, ahead)

    def _loop(self) -> None:
        while (first := self._next()) is not None:
            try:
                with self._models_of(first):
                    group = self._group(first)
                    for record in group:
                        record.post(JobStatus.RUNNING, "Your job has started running.")
                    with contextlib.ExitStack() as counted:  # each job of a group counts as one job
                        for _ in group:
                            counted.enter_context(self.stats.running())
                        self._run(group)
                    for name in sorted(first.models) if not self.limits.isolate else ():
                        self.pristine[name].restore()
            finally:
                self.running = []

    def _run(self, group: list[JobRecord]) -> None:
        """Run the group's jobs as one forward; if that fails (or it is one job), each job alone."""
        if len(group) > 1 and self._shared(group):
            return
        for record in group:
            self.runs += 1
            _Run(record, self.limits, self.held).start_and_wait()

    def _shared(self, group: list[JobRecord]) -> bool:
        """Run the group as one merged request; whether each of its jobs ended that way."""
        try:
            merged = Group(group, self.limits, self.held)
        except Exception:  # requests that do not merge after all (a bug, never a user's): each runs alone
            return False
        self.runs += 1
        _Run(merged, merged.run_limits, self.held).start_and_wait()  # type: ignore[arg-type]
        return not merged.failed

    def _group(self, first: JobRecord) -> list[JobRecord]:
        """first, and the queued jobs that may share its forward (waiting up to the batch window for more)."""
        limits = self.limits
        deadline = time.monotonic() + limits.batch_window_s
        with self.ready:
            grouping, group = self.keys.pop(first.id, None), [first]
            rows = grouping.rows if grouping is not None else 0
            while grouping is not None and len(group) < limits.batch_size:
                taken = self._take(grouping, limits.batch_size - len(group), rows)
                group += [record for record, _ in taken]
                rows += sum(added for _, added in taken)
                left = deadline - time.monotonic()
                if len(group) == limits.batch_size or left <= 0 or None in self.queue:
                    break
                self.ready.wait(left)
            if len(group) > 1:
                self.running = group
                self._moved()
        return group

    def _take(self, grouping: Grouping, most: int, rows: int) -> list[tuple[JobRecord, int]]:
        """Up to `most` queued jobs that may join a group of `rows` rows, taken out of the queue with their
        rows (the others keep their place); the group never ends with a disallowed number of rows."""
        taken: list[tuple[JobRecord, int]] = []
        for record in self.queue:
            if record is None or len(taken) == most:
                break
            other = self.keys.get(record.id)
            if other is not None and other.key == grouping.key:
                taken.append((record, other.rows))
                rows += other.rows
        while taken and not fits(rows, grouping.sizes):
            rows -= taken.pop()[1]
        for record, _ in taken:
            self.queue.remove(record)
            del self.keys[record.id]
        return taken

    @contextlib.contextmanager
    def _models_of(self, record: JobRecord) -> Iterator[None]:
        """Hold every model the job uses (always in name order, so two jobs cannot wait on each other)."""
        with contextlib.ExitStack() as held:
            for name in sorted(record.models):
                held.enter_context(self.locks[name])
            yield


class _Run:
    """One job on a thread of its own, stopped with JobTimeout if it runs past the time limit.

    The exception is sent only while the job is still running (`finished` is read and written under
    `lock`), and the thread makes one more Python call after it finishes, where the interpreter raises
    an exception sent just before: so every JobTimeout sent is raised inside `_main`, never later.
    """

    def __init__(self, record: JobRecord, limits: Limits, held: Callable[[int], int]) -> None:
        self.record = record
        self.limits = limits
        self.timeout = limits.job_timeout_s
        self.held = held
        self.lock = threading.Lock()
        self.finished = False
        self.thread = threading.Thread(target=self._main, name=f"nnglass-job-{record.id}", daemon=True)

    def start_and_wait(self) -> None:
        """Run the job; interrupt it at the time limit, then wait for it to unwind (hooks removed)."""
        if self.limits.isolate:
            self._forked()
            return
        self.thread.start()
        self.thread.join(self.timeout)
        if self.thread.is_alive():
            with self.lock:
                if not self.finished:
                    _async_raise(self.thread.ident, JobTimeout)
            self.thread.join()

    def _forked(self) -> None:
        """Run the job in a child process that posts through a relay; say why if it ended otherwise."""
        record, limits = self.record, self.limits
        relay = _Relay(record)
        child = _Run(relay, limits, self.held)  # type: ignore[arg-type]
        why = run_forked(relay.run(child._main), self.timeout, limits.max_job_bytes, relay.replay)
        error = "JobCrashed" if why is None or why.startswith("crashed") else "TimeoutError"
        record.post(JobStatus.ERROR, f"The job {why or 'ended without a result'}.", error=error)  # unless it ended

    def _main(self) -> None:
        record = self.record
        local.set_log_handler(_Log(record, self.limits.max_log_lines))
        try:
            try:
                result = self._result()
            finally:
                with self.lock:
                    self.finished = True
                _checkpoint()
            record.finish(result)
        except JobTimeout:
            record.post(JobStatus.ERROR, f"The job ran longer than this server's limit of {self.timeout:g} s "
                                         "(Limits.job_timeout_s) and was stopped.", error="TimeoutError")
        except Exception as error:
            node = getattr(error, "nnglass_node", None)
            where = "{}:{}".format(*location(node.where)) if node is not None and node.where else None
            record.post(JobStatus.ERROR, str(error), error=type(error).__name__, where=where)
        except BaseException as error:  # an exit() or stop() that no session, loop or trace caught
            record.post(JobStatus.ERROR, f"The job ended with {type(error).__name__}({error}) outside the "
                                         "scope that handles it.", error=type(error).__name__)
        finally:
            local.set_log_handler(None)

    def _result(self) -> bytes:
        """Run the request within the tensor-size budget; its saved values as JSON, within the result limits."""
        limits, request = self.limits, self.record.request
        with Budget(limits.max_tensor_elements, limits.max_list_elements, limits.max_products):
            request.run()
        result = json.dumps(request.encoded_results(), separators=(",", ":")).encode()
        check_result(limits, len(result), self.held(self.record.owner))
        return result


class _Relay:
    """Stands in for a job's record in its child process: statuses and the result go down the pipe."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.id, self.owner, self.request = record.id, record.owner, record.request
        self.send: Callable[[list], None] = lambda message: None

    def run(self, main: Callable[[], None]) -> Callable[[Callable[[list], None]], None]:
        """The child's work: `main()` with this relay's `send` set to the pipe."""
        def child(send: Callable[[list], None]) -> None:
            self.send = send
            main()
        return child

    def post(self, status: JobStatus, description: str = "", **fields: object) -> None:
        self.send(["post", status.value, description, fields])

    def finish(self, result: bytes) -> None:
        self.send(["finish", result.decode()])

    def replay(self, message: list) -> None:
        """In the server: apply one message from the child to the real record."""
        if message[0] == "finish":
            self.record.finish(message[1].encode())
        else:
            self.record.post(JobStatus(message[1]), message[2], **message[3])


class _Log:
    """A job's log handler: each line becomes a LOG status, up to `limit` lines."""

    def __init__(self, record: JobRecord, limit: int) -> None:
        self.record, self.limit, self.lines = record, limit, 0

    def __call__(self, text: str) -> None:
        self.lines += 1
        if self.lines > self.limit:
            raise LimitExceeded(f"the job logged more than {self.limit:,} lines (Limits.max_log_lines)")
        self.record.post(JobStatus.LOG, text)


def _checkpoint() -> None:
    """A Python call: the interpreter raises an exception pending for this thread when it enters one."""


def _async_raise(thread: int, exception: type[BaseException]) -> None:
    """Raise `exception` in another thread when it next runs Python code (never call it to cancel one:
    PyThreadState_SetAsyncExc(id, NULL) leaves a flag set that makes CPython 3.11 spin under a profiler)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(exception))
