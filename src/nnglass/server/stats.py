"""Stats: one model's job figures (running now, recent throughput), kept in a thread-safe sliding window."""
from __future__ import annotations

import collections
import contextlib
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

__all__ = ["JobFigures", "JobStats"]

WINDOW_S = 300.0  # throughput and mean job time are over this many seconds


@dataclass(frozen=True)
class JobFigures:
    """A model's jobs at one moment (the names of ModelInfo's fields)."""

    running: int                  # jobs running now
    running_s: Optional[float]    # how long the longest-running of them has run; None: none runs
    completed_1m: int             # jobs that ended in the last minute
    per_minute: float             # jobs ended per minute over the last five minutes (or since the start)
    mean_s: Optional[float]       # mean run time of the jobs that ended in the last five minutes


class JobStats:
    """When each running job started, and when the jobs of the last `WINDOW_S` seconds ended and how long they took."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.since = clock()
        self.started: dict[object, float] = {}                                  # running job -> its start
        self.ended: collections.deque[tuple[float, float]] = collections.deque()  # (end, run time), oldest first
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def running(self, jobs: int = 1) -> Iterator[None]:
        """Count the block as `jobs` jobs running (a forward they share), then as ended (however it ends)."""
        tickets = [object() for _ in range(jobs)]
        with self._lock:
            start = self.clock()
            self.started.update((ticket, start) for ticket in tickets)
        try:
            yield
        finally:
            with self._lock:
                now = self.clock()
                for ticket in tickets:
                    self.ended.append((now, now - self.started.pop(ticket)))
                self._forget(now)

    def figures(self) -> JobFigures:
        """The figures now."""
        with self._lock:
            now = self.clock()
            self._forget(now)
            oldest = min(self.started.values(), default=None)
            times = [run for _, run in self.ended]
            last_minute = sum(end > now - 60 for end, _ in self.ended)
            span = min(max(now - self.since, 60.0), WINDOW_S)  # a young server's rate is not diluted by 5 min
            return JobFigures(running=len(self.started), running_s=None if oldest is None else now - oldest,
                              completed_1m=last_minute, per_minute=len(times) * 60 / span,
                              mean_s=sum(times) / len(times) if times else None)

    def _forget(self, now: float) -> None:
        """Drop the jobs that ended before the window (under the lock)."""
        while self.ended and self.ended[0][0] <= now - WINDOW_S:
            self.ended.popleft()
