"""Jobs: each submitted request's statuses and result, and the store that keeps them until downloaded.

With a `Store` every status and result is written through to the database and the data folder, so a
restarted server finds its jobs again (`JobStore.reload`); without one they live in memory only.
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any, Optional

from ..remote.schema import JobStatus, StatusMessage
from .store import Store, StoredJob

__all__ = ["JobRecord", "JobStore", "RESTARTED"]

RESTARTED = ("The server restarted while this job ran, so it was stopped and not run again; "
             "submit it again for its result.")


class JobRecord:
    """One job: its request, the statuses so far (pushed to followers), its result."""

    jobs = 1  # how many users' jobs it stands for (a batching Group stands for several)

    def __init__(self, owner: int, model: str, models: set[str], request: Any, store: Optional[Store] = None,
                 job_id: Optional[str] = None) -> None:
        self.id = job_id or str(uuid.uuid4())
        self.owner = owner              # id of the API key that submitted it
        self.model = model              # the queue it waits in
        self.models = models            # every model its traces run on
        self.request = request          # the wire request (a dict, see serialize.request); dropped once run
        self.store = store              # where statuses and the result are kept (None: in memory only)
        self.statuses: list[StatusMessage] = []
        self.result: Optional[bytes] = None    # without a store: the result itself
        self.result_bytes: Optional[int] = None
        self.downloaded = False
        self.ended: Optional[float] = None     # when it ended (epoch seconds)
        self._watchers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._lock = threading.Lock()

    @classmethod
    def stored(cls, job: StoredJob, store: Store) -> JobRecord:
        """A job as a previous run of the server left it (its request not read yet)."""
        record = cls(job.owner, job.model, job.models, None, store, job.id)
        record.statuses, record.ended = job.statuses, job.ended
        record.result_bytes, record.downloaded = job.result_bytes, job.downloaded
        return record

    def post(self, status: JobStatus, description: str = "", **fields: Any) -> None:
        """Add a status and wake everyone following the job (from any thread)."""
        message = StatusMessage(job_id=self.id, status=status, description=description, **fields)
        with self._lock:
            if self.ended is not None:
                return  # a job ends once: a late timeout after COMPLETED changes nothing
            if status.final:
                self.ended = time.time()
                self.request = None
            if self.store is not None:
                self.store.post(len(self.statuses), message, self.ended)
            self.statuses.append(message)
            watchers = list(self._watchers)
        for loop, event in watchers:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that follower's event loop has closed
                pass

    def finish(self, result: bytes) -> None:
        """Keep the result and say COMPLETED."""
        if self.store is not None:
            self.store.put_result(self.id, result)
        else:
            self.result = result
        self.result_bytes = len(result)
        self.post(JobStatus.COMPLETED, "Your job has been completed.")

    @property
    def waiting(self) -> bool:
        """Whether the job has not started running (its latest status other than LOG is RECEIVED or QUEUED)."""
        latest = next((m.status for m in reversed(self.statuses) if m.status is not JobStatus.LOG), None)
        return latest in (None, JobStatus.RECEIVED, JobStatus.QUEUED)

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
    """Jobs by id; a result is handed out once, and a finished job is dropped `ttl` seconds after it ended."""

    def __init__(self, ttl: float, store: Optional[Store] = None) -> None:
        self.ttl = ttl
        self.store = store
        self._jobs: dict[str, JobRecord] = {}
        self._lock = threading.Lock()

    def new(self, owner: int, model: str, models: set[str], request: Any, body: bytes) -> JobRecord:
        """Keep a new job (and its request body, to queue it again after a restart); drop those that expired."""
        record = JobRecord(owner, model, models, request, self.store)
        if self.store is not None:
            self.store.add(record.id, owner, model, models, body)
        self.expire()
        with self._lock:
            self._jobs[record.id] = record
        return record

    def reload(self) -> list[JobRecord]:
        """The jobs a previous run of the server kept; a job it was running ends with ERROR (RESTARTED).

        Returns the jobs that were still waiting, in the order they were submitted: queue them again."""
        if self.store is None:
            return []
        records = [JobRecord.stored(job, self.store) for job in self.store.jobs()]
        with self._lock:
            self._jobs.update((record.id, record) for record in records)
        self.expire()
        for record in records:
            if record.ended is None and not record.waiting:
                record.post(JobStatus.ERROR, RESTARTED, error="ServerRestarted")
        return [record for record in records if record.ended is None]

    def expire(self) -> None:
        """Drop the jobs that ended more than `ttl` seconds ago, with their files."""
        now = time.time()
        with self._lock:
            expired = [key for key, job in self._jobs.items() if job.ended is not None and now - job.ended > self.ttl]
            for key in expired:
                del self._jobs[key]
        if self.store is not None:
            self.store.drop(expired)

    def find(self, job_id: str, owner: int) -> Optional[JobRecord]:
        """The job with this id if the key `owner` submitted it (and it has not expired)."""
        self.expire()
        job = self._jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    def held(self, owner: int) -> int:
        """Bytes of results that the key `owner` has not downloaded yet."""
        with self._lock:
            return sum(job.result_bytes or 0 for job in self._jobs.values()
                       if job.owner == owner and not job.downloaded)

    def take_result(self, record: JobRecord) -> Optional[bytes]:
        """A completed job's result, handed out once (the job and its statuses stay until they expire)."""
        with self._lock:
            if record.downloaded or record.result_bytes is None:
                return None
            record.downloaded = True
        if self.store is None:
            result, record.result = record.result, None
            return result
        result = self.store.result(record.id)
        self.store.downloaded(record.id)
        return result
