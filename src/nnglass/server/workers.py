"""Workers: one queue per hosted model, and the threads that hand its jobs, in order, to the hosting backend."""
from __future__ import annotations

import collections
import threading
from typing import Callable, Optional

from ..remote.schema import JobStatus
from .hosting import Hosting
from .jobs import JobRecord
from .stats import JobStats

__all__ = ["ModelWorker"]


class ModelWorker:
    """The queue of one model and the threads (as many as its jobs that may run at once) that run its jobs."""

    def __init__(self, name: str, hosting: Hosting, held: Callable[[int], int]) -> None:
        self.name = name
        self.hosting = hosting        # where a job's request runs
        self.held = held              # bytes of results an API key has not downloaded yet
        self.queue: collections.deque[Optional[JobRecord]] = collections.deque()
        self.ready = threading.Condition()
        self.running: set[JobRecord] = set()
        self.stats = JobStats()       # jobs running now, recent throughput (the status page)
        self.threads = [threading.Thread(target=self._loop, name=f"nnglass-worker-{name}-{i}", daemon=True)
                        for i in range(hosting.parallel)]
        for thread in self.threads:
            thread.start()

    def __len__(self) -> int:
        """Jobs waiting or running."""
        return len(self.queue) + len(self.running)

    def submit(self, record: JobRecord) -> None:
        """Queue a job and tell its owner how many jobs run before it."""
        with self.ready:
            self._queued(record, len(self))
            self.queue.append(record)
            self.ready.notify()

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
                for ahead, waiting in enumerate(self.queue, start=len(self.running)):  # each moved up by one
                    if waiting is not None:
                        self._queued(waiting, ahead)
            return record

    def _loop(self) -> None:
        while (record := self._next()) is not None:
            try:
                self.hosting.run(record, self.held(record.owner), self.stats)
            finally:
                with self.ready:
                    self.running.discard(record)
