"""Hosting: where the jobs of a server run. One interface, two backends: this process, or Ray actors.

The queues, job records, statuses and positions live in the API process either way (server/workers.py,
server/jobs.py); a backend only runs a job's request once its queue hands the job over, and posts the
job's statuses (RUNNING, LOG, then COMPLETED with the result or ERROR) to its record.
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
from typing import Any, Callable, ContextManager, Iterator, Protocol, runtime_checkable

from ..modeling.language import LanguageModel
from ..remote.schema import JobStatus
from .integrity import Pristine
from .isolation import run_forked
from .jobs import JobRecord
from .limits import Limits
from .running import JobRun, Relay, execute, replay
from .stats import JobStats

__all__ = ["Hosting", "InProcess"]


@runtime_checkable
class Hosting(Protocol):
    """What a Host needs of a backend: models to check requests against, and somewhere to run jobs."""

    limits: Limits
    models: dict[str, Any]  # name -> a model to decode requests against (weightless where the weights live apart)
    parallel: int           # how many jobs of one queue may run at once

    def place(self, record: JobRecord) -> ContextManager[Any]:
        """Wait until the job can run (its models free, a replica idle) and keep that place for the block;
        the block runs the job there, or a group of jobs sharing its forward (what `run` is given)."""

    def run(self, record: JobRecord, held: int, stats: JobStats, place: Any) -> None:
        """Run the job at its place to its end, posting RUNNING and then its final status, counted in
        `stats` while it runs (`held`: bytes of results its key has not downloaded yet)."""

    def close(self) -> None:
        """Let go of whatever the backend holds (threads, actors)."""


class InProcess:
    """The embedded default: the models' weights in this process, jobs run on a thread of it (or, with
    `Limits.isolate`, in a forked child), one job at a time per model."""

    parallel = 1  # the jobs of one model share its weights

    def __init__(self, models: dict[str, Any], limits: Limits) -> None:
        for model in models.values():
            if isinstance(model, LanguageModel):
                model.dispatch()  # load the weights once, before the first job
        self.models = dict(models)
        self.isolate = _isolate(limits, self.models)
        self.limits = limits
        self.locks = {name: threading.Lock() for name in self.models}  # a job holds those of every model it uses
        # a forked job writes only to its own copy of the weights; in-process jobs get theirs put back
        self.pristine = {} if self.isolate else {name: Pristine(model._model) for name, model in self.models.items()}

    def place(self, record: JobRecord) -> ContextManager[None]:
        """Hold every model the job uses."""
        return self._models_of(record)

    def run(self, record: JobRecord, held: int, stats: JobStats, place: None) -> None:
        """Run the job here (its models held); put back whatever it changed in them."""
        data = record.request
        with stats.running(record.jobs):
            record.post(JobStatus.RUNNING, "Your job has started running.")
            work = functools.partial(execute, data, self.models.__getitem__, self.limits, held, record.jobs)
            if self.isolate:
                self._forked(record, work)
            else:
                JobRun(record, work, self.limits, record.id).start_and_wait()
                for name in sorted(record.models):
                    self.pristine[name].restore()

    def close(self) -> None:
        """Nothing to let go of: the models belong to the caller."""

    @contextlib.contextmanager
    def _models_of(self, record: JobRecord) -> Iterator[None]:
        """Hold every model the job uses (always in name order, so two jobs cannot wait on each other)."""
        with contextlib.ExitStack() as held:
            for name in sorted(record.models):
                held.enter_context(self.locks[name])
            yield

    def _forked(self, record: JobRecord, work: Callable[[], bytes]) -> None:
        """Run the job in a child process that posts through a relay; say why if it ended otherwise."""
        limits, relay = self.limits, Relay()
        child = JobRun(relay, work, limits, record.id)
        why = run_forked(relay.sending(child.main), limits.job_timeout_s, limits.max_job_bytes,
                         lambda message: replay(record, message))
        error = "JobCrashed" if why is None or why.startswith("crashed") else "TimeoutError"
        record.post(JobStatus.ERROR, f"The job {why or 'ended without a result'}.", error=error)  # unless it ended


def _isolate(limits: Limits, models: dict[str, Any]) -> bool:
    """Whether jobs run in forked processes: as asked, else on Linux when every hosted weight is on the CPU
    (CUDA does not survive a fork)."""
    if limits.isolate is not None:
        return limits.isolate
    on_cpu = all(p.device.type == "cpu" for model in models.values() for p in model._model.parameters())
    return sys.platform == "linux" and hasattr(os, "fork") and on_cpu
