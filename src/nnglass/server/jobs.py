"""Jobs: each submitted request's statuses and result, and the store that keeps them until downloaded."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any, Optional

from ..remote.schema import JobStatus, StatusMessage

__all__ = ["JobRecord", "JobStore"]


class JobRecord:
    """One job: its decoded request, the statuses so far (pushed to followers), its result bytes."""

    def __init__(self, owner: int, model: str, models: set[str], request: Any) -> None:
        self.id = str(uuid.uuid4())
        self.owner = owner              # id of the API key that submitted it
        self.model = model              # the queue it waits in
        self.models = models            # every model its traces run on
        self.request = request          # the wire request (a dict, see serialize.request); dropped once run
        self.statuses: list[StatusMessage] = []
        self.result: Optional[bytes] = None
        self.ended: Optional[float] = None
        self._watchers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()

    def post(self, status: JobStatus, description: str = "", **fields: Any) -> None:
        """Add a status and wake everyone following the job (from any thread)."""
        message = StatusMessage(job_id=self.id, status=status, description=description, **fields)
        with self._lock:
            if self.ended is not None:
                return  # a job ends once: a late timeout after COMPLETED changes nothing
            if status.final:
                self.ended = time.monotonic()
                self.request = None
            self.statuses.append(message)
            watchers = list(self._watchers)
        for loop, event in watchers:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that follower's event loop has closed
                pass

    def finish(self, result: bytes) -> None:
        """Keep the result and say COMPLETED."""
        self.result = result
        self.post(JobStatus.COMPLETED, "Your job has been completed.")

    async def statuses_after(self, seen: int, timeout: Optional[float]) -> list[StatusMessage]:
        """The statuses after the first `seen`, waiting up to `timeout` seconds (None: forever) for one."""
        watcher = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._watchers.add(watcher)
        try:
            if len(self.statuses) <= seen:
                try:
                    await asyncio.wait_for(watcher[1].wait(), timeout)
                except TimeoutError:
                    pass
            return self.statuses[seen:]
        finally:
            with self._lock:
                self._watchers.discard(watcher)


class JobStore:
    """Jobs by id; a finished job is dropped when its result is downloaded, or `ttl` seconds after it ended."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Lock()

    def add(self, record: JobRecord) -> None:
        """Keep a new job, and drop those that expired."""
        now = time.monotonic()
        with self._lock:
            expired = [key for key, job in self._jobs.items() if job.ended is not None and now - job.ended > self.ttl]
            for key in expired:
                del self._jobs[key]
            self._jobs[record.id] = record

    def find(self, job_id: str, owner: int) -> Optional[JobRecord]:
        """The job with this id if the key `owner` submitted it."""
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def held(self, owner: int) -> int:
        """Bytes of results that the key `owner` has not downloaded yet."""
        with self._lock:
            return sum(len(job.result) for job in self._jobs.values() if job.owner == owner and job.result)

    def take_result(self, job_id: str, owner: int) -> Optional[bytes]:
        """A completed job's result, handed out once (the job is then forgotten)."""
        with self._lock:
            job = self.find(job_id, owner)
            if job is None or job.result is None:
                return None
            del self._jobs[job_id]
        return job.result
