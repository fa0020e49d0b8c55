"""Ray hosting: every replica of the hosted models is a Ray actor; the API process keeps no weights.

Each replica actor builds every hosted model from its `Loader` (a session may use several models, and it
runs in one process), takes one CPU and, on a cluster with GPUs, one GPU (its models then load on cuda
unless a device is given); replicas are spread over the nodes. The API process keeps the queues, the job
records, and a weightless copy of each model (`Loader.shell()`, on the meta device) that requests are
checked and decoded against before they are queued: a bad request is answered 4xx at once, as with the
in-process backend. A replica runs one job at a time; a queue hands each job to the least loaded replica,
one that is up and idle, and until there is one the job waits in its queue (its position is true, and its
time limit counts from when it runs). The job's statuses stream back from the actor as they happen (LOG
lines included).

A replica that dies (killed, out of memory, a crash in native code) ends the job it was running with
ERROR (`ReplicaDied`); Ray restarts the actor, which loads its models again, and until it is back new
jobs go to the other replicas (or wait for it). The job time limit is kept inside the actor (`JobRun`),
and a job stuck past it in native code gets its replica killed. `Limits.isolate` and
`Limits.max_job_bytes` do not apply: the actor's process is the job's sandbox.
"""
from __future__ import annotations

import functools
import contextlib
import os
import queue
import threading
from typing import Any, Iterator, Optional

from ..remote.schema import JobStatus
from .integrity import Pristine
from .jobs import JobRecord
from .limits import Limits
from .loading import Loader
from .running import JobRun, Relay, execute, replay
from .numerics import MKL_MODE
from .stats import JobStats

__all__ = ["RayHosting", "Replica"]

UNWIND_S = 5.0  # how long past the time limit a job may take to stop before its replica is killed


class Replica:
    """The Ray actor: one copy of every hosted model, and the jobs run on it one at a time."""

    def __init__(self, loaders: list[Loader], limits: Limits, gpu: bool) -> None:
        self.limits = limits
        self.models = {}
        for loader in loaders:
            if gpu and loader.device is None and loader.device_map is None:
                loader = Loader(loader.ref, "cuda", loader.dtype)
            model = loader.load()
            self.models[model._remote_name] = model
        self.pristine = {name: Pristine(model._model) for name, model in self.models.items()}

    def pid(self) -> int:
        """This replica's process id (answered once its models are loaded)."""
        return os.getpid()

    def run(self, data: dict, models: list[str], held: int, job_id: str, jobs: int = 1) -> Iterator[list]:
        """Run one request (of `jobs` users' jobs); yield its Relay messages as they come; then put back what
        it changed."""
        messages: queue.Queue[Optional[list]] = queue.Queue()
        work = functools.partial(execute, data, self.models.__getitem__, self.limits, held, jobs)
        job = JobRun(Relay(messages.put), work, self.limits, job_id)
        threading.Thread(target=_then, args=(job.start_and_wait, messages.put), daemon=True).start()
        while (message := messages.get()) is not None:
            yield message
        for name in models:
            self.pristine[name].restore()


class RayHosting:
    """Replicas of the models as Ray actors, on the Ray cluster at `address` ('auto': the one running on
    this machine, else a new local one)."""

    def __init__(self, loaders: list[Loader], limits: Limits, replicas: int = 1, address: str = "auto") -> None:
        import ray

        if not ray.is_initialized():
            ray.init(address=None if address == "auto" else address)
        self.limits = limits
        self.models = {}
        for loader in loaders:
            shell = loader.shell()
            self.models[shell._remote_name] = shell
        gpu = ray.cluster_resources().get("GPU", 0) > 0
        strict = {"MKL_CBWR": os.environ.get("MKL_CBWR", MKL_MODE)}  # batched jobs bit-identical (numerics.py)
        actor = ray.remote(Replica).options(num_cpus=1, num_gpus=1 if gpu else 0, max_restarts=-1,
                                            max_task_retries=0, scheduling_strategy="SPREAD",
                                            runtime_env={"env_vars": strict})
        self.replicas = [_Slot(index, actor.remote(loaders, limits, gpu)) for index in range(replicas)]
        self._started()
        self.parallel = replicas
        self.idle = threading.Condition()  # notified when a replica ends a job

    def _started(self) -> None:
        """Wait until every replica has loaded its models; RuntimeError (replicas stopped) if one cannot."""
        import ray

        try:
            ray.get([slot.back for slot in self.replicas])
        except ray.exceptions.RayActorError as error:
            self.close()
            raise RuntimeError(f"a replica could not load the models: {_last_line(error)}") from None

    @contextlib.contextmanager
    def place(self, record: JobRecord) -> Iterator[_Slot]:
        """The least loaded replica, once one is idle, kept busy for the block."""
        slot = self._take()
        try:
            yield slot
        finally:
            with self.idle:
                slot.load -= 1
                self.idle.notify()

    def run(self, record: JobRecord, held: int, stats: JobStats, place: _Slot) -> None:
        """Run the job on its replica."""
        with stats.running(record.jobs):
            record.post(JobStatus.RUNNING, f"Your job has started running on replica {place.index}.")
            self._stream(place, record, record.request, held)

    def _stream(self, slot: _Slot, record: JobRecord, data: dict, held: int) -> None:
        """Run the request on the replica, replaying its statuses onto the record; kill the replica if the job
        outlives the time limit by `UNWIND_S` (stuck in native code, where JobTimeout cannot land)."""
        import ray

        limit = self.limits.job_timeout_s
        stuck = threading.Timer(limit + UNWIND_S, ray.kill, (slot.actor,), {"no_restart": False})
        stuck.start()
        try:
            for ref in slot.actor.run.options(num_returns="streaming").remote(
                    data, sorted(record.models), held, record.id, record.jobs):
                replay(record, ray.get(ref))
        except ray.exceptions.RayActorError as error:
            slot.restarted()
            description, name = _death(slot.index, error, limit if stuck.finished.is_set() else None)
            record.post(JobStatus.ERROR, description, error=name)
        finally:
            stuck.cancel()

    def _take(self) -> _Slot:
        """The least loaded replica: one that is up and idle, once there is one (the job waits in its queue
        until then, so its time limit counts from when it runs); counted busy."""
        with self.idle:
            while (slot := idle_replica(self.replicas)) is None:
                self.idle.wait(0.2)  # a restarted replica comes back without notice
            slot.load += 1
            return slot

    def close(self) -> None:
        """Stop the replica actors."""
        import ray

        for slot in self.replicas:
            ray.kill(slot.actor, no_restart=True)


class _Slot:
    """A replica's actor handle, its running jobs (0 or 1), and its `pid()` answer while it (re)starts."""

    def __init__(self, index: int, actor: Any) -> None:
        self.index, self.actor, self.load = index, actor, 0
        self.restarted()

    def restarted(self) -> None:
        """Ask for the pid the replica answers once it is (back) up: Ray restarts a dead actor, and new
        jobs avoid it until then (the call is retried while the actor restarts)."""
        self.back = self.actor.pid.options(max_task_retries=-1).remote()

    @property
    def up(self) -> bool:
        """Whether the replica has answered since it last (re)started."""
        import ray

        ready, _ = ray.wait([self.back], timeout=0)
        return bool(ready)


def idle_replica(slots: list[_Slot]) -> Optional[_Slot]:
    """The first replica that is up and runs no job, if any."""
    return next((slot for slot in slots if slot.load == 0 and slot.up), None)


def _then(first: Any, put: Any) -> None:
    """Call `first()`, then `put(None)`: the end of a job's messages."""
    try:
        first()
    finally:
        put(None)


def _death(index: int, error: BaseException, limit: Optional[float]) -> tuple[str, str]:
    """The ERROR description and error name of a job whose replica died (`limit`: killed past this time limit)."""
    if limit is not None:
        return (f"The job ran longer than this server's limit of {limit:g} s (Limits.job_timeout_s) and did not "
                f"stop, so its replica (replica {index}) was killed; Ray restarts it.", "TimeoutError")
    why = str(error).strip().splitlines()
    return (f"The replica running the job (replica {index}) died, and the job with it: "
            f"{why[0] if why else type(error).__name__}. Ray restarts the replica; send the job again.", "ReplicaDied")


def _last_line(error: BaseException) -> str:
    """The last line of Ray's report of an error (the exception raised in the actor, after its traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
