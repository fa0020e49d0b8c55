"""Workers: one queue per hosted model, and the threads that hand its jobs (alone, or several sharing one
forward) in order to the hosting backend."""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Hashable, Optional

from ..remote.schema import JobStatus
from .batching import Group, Grouping, fillers
from .hosting import Hosting
from .jobs import JobRecord
from .stats import JobStats

__all__ = ["ModelWorker"]

BURST_WINDOWS = 20  # a group keeps waiting while jobs keep joining, up to this many batch windows in all


class ModelWorker:
    """The queue of one model and the threads (as many as its jobs that may run at once) that run its jobs."""

    def __init__(self, name: str, hosting: Hosting, held: Callable[[int], int]) -> None:
        self.name = name
        self.hosting = hosting        # where a job's request runs
        self.limits = hosting.limits
        self.held = held              # bytes of results an API key has not downloaded yet
        self.queue: collections.deque[Optional[JobRecord]] = collections.deque()
        self.ready = threading.Condition()
        self.keys: dict[str, Grouping] = {}  # how queued jobs may share a forward
        self.running: set[JobRecord] = set()
        self.runs = 0                        # runs started: a group sharing one forward counts once
        self.stats = JobStats()              # jobs running now, recent throughput (the status page)
        self.threads = [threading.Thread(target=self._loop, name=f"nnglass-worker-{name}-{i}", daemon=True)
                        for i in range(hosting.parallel)]
        for thread in self.threads:
            thread.start()

    def __len__(self) -> int:
        """Jobs waiting or running."""
        return len(self.queue) + len(self.running)

    def submit(self, record: JobRecord, grouping: Optional[Grouping] = None) -> None:
        """Queue a job (`grouping`: how it may share a forward) and tell its owner how many jobs run before it."""
        with self.ready:
            self._queued(record, len(self))
            self.queue.append(record)
            if grouping is not None and self.limits.batch_size > 1:
                self.keys[record.id] = grouping
            self.ready.notify_all()

    def _queued(self, record: JobRecord, ahead: int) -> None:
        """Tell a job's owner its place in the queue."""
        record.post(JobStatus.QUEUED, f"Your job is in the queue of {self.name}; {ahead} job(s) before it.",
                    position=ahead)

    def close(self) -> None:
        """Let the threads finish the queued jobs and stop."""
        with self.ready:
            self.queue.extend([None] * len(self.threads))
            self.ready.notify_all()
        for thread in self.threads:
            thread.join()

    # -- the threads --------------------------------------------------------------------------------
    def _next(self) -> Optional[JobRecord]:
        """The next job, taken off the queue and counted as running (None: stop)."""
        with self.ready:
            while not self.queue:
                self.ready.wait()
            record = self.queue.popleft()
            if record is not None:
                self.running.add(record)
                self._moved()
            return record

    def _moved(self) -> None:
        """Tell every waiting job its new place, after jobs left the queue (under `ready`)."""
        for ahead, waiting in enumerate(self.queue, start=len(self.running)):
            if waiting is not None:
                self._queued(waiting, ahead)

    def _loop(self) -> None:
        while (first := self._next()) is not None:
            group = [first]
            try:
                with self.hosting.place(first) as place:  # jobs queued meanwhile may join its forward
                    group, padding = self._group(first)
                    self._run(group, padding, place)
            finally:
                with self.ready:
                    self.running.difference_update(group)

    def _run(self, group: list[JobRecord], padding: int, place: Any) -> None:
        """Run the group's jobs as one forward; if that fails (or it is one job), each job alone."""
        if len(group) > 1 and self._shared(group, padding, place):
            return
        for record in group:
            self.runs += 1
            self.hosting.run(record, self.held(record.owner), self.stats, place)

    def _shared(self, group: list[JobRecord], padding: int, place: Any) -> bool:
        """Run the group as one merged request; whether each of its jobs ended that way."""
        try:
            merged = Group(group, self.limits, self.held, padding)
        except Exception:  # requests that do not merge after all (a bug, never a user's): each runs alone
            return False
        self.runs += 1
        self.hosting.run(merged, 0, self.stats, place)  # type: ignore[arg-type]
        return not merged.failed

    def _group(self, first: JobRecord) -> tuple[list[JobRecord], int]:
        """first, and the queued jobs that may share its forward (waiting a batch window for the next one, up
        to BURST_WINDOWS windows while jobs keep coming); how many filler copies of first's rows the shared
        batch needs (see batching.fits)."""
        limits = self.limits
        start = time.monotonic()
        deadline = start + limits.batch_window_s
        with self.ready:
            grouping, group = self.keys.pop(first.id, None), [first]
            rows = 0 if grouping is None else grouping.rows
            while grouping is not None and len(group) < limits.batch_size:
                for record, other in self._take(grouping.key, limits.batch_size - len(group)):
                    group.append(record)
                    rows += other.rows
                    # a job joined: a window more for the next one, within BURST_WINDOWS windows in all
                    deadline = min(time.monotonic(), start + (BURST_WINDOWS - 1) * limits.batch_window_s) \
                        + limits.batch_window_s
                left = deadline - time.monotonic()
                if len(group) == limits.batch_size or left <= 0 or None in self.queue:
                    break
                self.ready.wait(left)
            if len(group) == 1:
                return group, 0
            self.running.update(group)
            self._moved()
        return group, fillers(rows, grouping)

    def _take(self, key: Hashable, most: int) -> list[tuple[JobRecord, Grouping]]:
        """Up to `most` queued jobs with this group key, taken out of the queue with their groupings (the
        others keep their place)."""
        taken = []
        for record in self.queue:
            if record is None or len(taken) == most:
                break
            other = self.keys.get(record.id)
            if other is not None and other.key == key:
                taken.append((record, other))
        for record, _ in taken:
            self.queue.remove(record)
            del self.keys[record.id]
        return taken
