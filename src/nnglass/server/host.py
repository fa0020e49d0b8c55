"""Host: the models a server runs, their workers, and the checks a request passes before it is queued."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

from fastapi import HTTPException
from pydantic import ValidationError

from .. import __version__
from ..remote import serialize
from ..remote.allowlist import WireError
from ..remote.schema import JobStatus, ModelInfo, RequestSpec, ServerStatus, SubmitResponse
from .audit import audit
from .batching import Grouping, group_key
from .hosting import Hosting
from .jobs import JobStore
from .numerics import gemm_batch_invariant
from .store import Store
from .workers import ModelWorker

__all__ = ["Host"]


_EXACT_HINT = {  # whether MKL_CBWR was set: what gives bit-identical batched results on the CPU
    False: "start the server with MKL_CBWR=AUTO,STRICT (`nnglass serve` sets it)",
    True: "MKL_CBWR does not make this CPU's matrix products batch-invariant; use --batch-size 1",
}


class Host:
    """Hosted models by name, one queue each, and the jobs sent to them; a hosting backend runs the jobs."""

    def __init__(self, hosting: Hosting, store: Optional[Store] = None) -> None:
        self.hosting = hosting
        self.models = hosting.models    # what requests are checked and decoded against before they are queued
        self.limits = hosting.limits
        self.jobs = JobStore(self.limits.result_ttl_s, store)
        self.workers = {name: ModelWorker(name, hosting, self.jobs.held) for name in self.models}
        self.sizes = {name: sum(p.numel() for p in model._model.parameters()) for name, model in self.models.items()}
        if self.limits.batch_size > 1 and not gemm_batch_invariant():
            logging.getLogger("nnglass.server").warning(
                "jobs sharing a forward may differ from running alone in the last bits: " + _EXACT_HINT[
                    "MKL_CBWR" in os.environ])
        self._resume()

    def submit(self, body: bytes, owner: int) -> SubmitResponse:
        """Check a request, decode it, and queue it for its model; HTTPException says what is wrong."""
        data = _json(body, self.limits.max_depth)
        spec = self._checked(data)
        grouping = self._check_decoding(data)
        record = self.jobs.new(owner, spec.model, spec.traced_models(), data, body)  # the backend decodes it again
        record.post(JobStatus.RECEIVED, "Your job has been received and is waiting to be queued.")
        self.workers[spec.model].submit(record, grouping)
        return SubmitResponse(job_id=record.id, model=spec.model)

    def _check_decoding(self, data: Any) -> Optional[Grouping]:
        """Decode and audit the request against the hosted models (HTTPException says what is wrong); how it
        may share a forward with other jobs (None: it runs alone)."""
        try:
            request = serialize.Job(data, self.models.__getitem__)
            audit(request, self.limits)
        except HTTPException:
            raise
        except WireError as error:
            raise HTTPException(400, str(error)) from error
        except Exception as error:  # whatever a malformed request makes the decoder raise is the request's fault
            raise HTTPException(400, f"malformed request: {type(error).__name__}: {error!s:.200}") from error
        return group_key(request) if self.limits.batch_size > 1 else None

    def _resume(self) -> None:
        """Queue again, in their order, the jobs a previous run of the server left waiting."""
        for record in self.jobs.reload():
            try:
                body = self.jobs.store.request(record.id)
                if body is None:
                    raise HTTPException(500, "its request was not found in the server's data folder")
                data = _json(body, self.limits.max_depth)
                self._checked(data)
                grouping = self._check_decoding(data)
                record.request = data
            except HTTPException as error:
                record.post(JobStatus.ERROR, f"The server restarted while this job waited and could not queue it "
                                             f"again: {error.detail}", error="ServerRestarted")
                continue
            self.workers[record.model].submit(record, grouping)

    def _checked(self, data: Any) -> RequestSpec:
        """The request's shape, size and models, checked before anything is decoded."""
        if not isinstance(data, dict):
            raise HTTPException(400, "the request body must be a JSON object")
        try:
            serialize.check_version(data)
        except WireError as error:
            raise HTTPException(400, str(error)) from error
        try:
            spec = RequestSpec.model_validate(data)
        except ValidationError as error:
            raise HTTPException(422, "malformed request: " + _problems(error)) from error
        nodes = sum(len(graph.nodes) + 1 for graph in spec.graphs)
        if nodes > self.limits.max_nodes:
            raise HTTPException(413, f"the request has {nodes} graph nodes; this server runs at most "
                                     f"{self.limits.max_nodes} per request")
        invokes = max((sum(node.op == "invoke" for node in graph.nodes) for graph in spec.graphs), default=0)
        if invokes > self.limits.max_invokes:
            raise HTTPException(413, f"a trace of the request has {invokes} invokes; this server runs "
                                     f"0 to {self.limits.max_invokes} per trace (Limits.max_invokes)")
        unknown = sorted(spec.traced_models() - self.models.keys())
        if unknown:
            raise HTTPException(404, f"model {unknown[0]!r} is not hosted on this server; it hosts: "
                                     f"{', '.join(sorted(self.models)) or 'nothing'}")
        return spec

    def status(self) -> ServerStatus:
        """The hosted models with their size, queue, running jobs and recent throughput."""
        return ServerStatus(nnglass=__version__, models=[self._info(name) for name in self.models])

    def _info(self, name: str) -> ModelInfo:
        """One hosted model as `/status` lists it."""
        worker = self.workers[name]
        figures = worker.stats.figures()
        queue = len(worker)  # a job that ends in between is in the figures, not in the queue: hence max(..., 0)
        return ModelInfo(name=public_name(name), architecture=type(self.models[name]._model).__name__,
                         parameters=self.sizes[name], queue=queue, waiting=max(queue - figures.running, 0),
                         **dataclasses.asdict(figures))

    def close(self) -> None:
        """Finish the queued jobs, stop the workers and let go of the backend."""
        for worker in self.workers.values():
            worker.close()
        self.hosting.close()


def public_name(name: str) -> str:
    """A hosted model's name as `/status` shows it: a local checkpoint path shows its last part only."""
    return os.path.basename(os.path.normpath(name)) if os.path.isabs(name) or os.path.exists(name) else name


def _json(body: bytes, max_depth: int) -> Any:
    """The parsed body; 400 if it is not JSON, 413 if it nests deeper than `max_depth`."""
    try:
        data = json.loads(body)
    except RecursionError as error:
        raise HTTPException(413, f"the request nests deeper than this server reads ({max_depth})") from error
    except ValueError as error:
        raise HTTPException(400, f"the request body is not valid JSON: {error}") from error
    if _depth(data, max_depth) > max_depth:
        raise HTTPException(413, f"the request nests deeper than {max_depth} levels (Limits.max_depth)")
    return data


def _depth(data: Any, limit: int) -> int:
    """How deep lists and objects nest in data (counting stops past `limit`)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)) and depth <= limit + 1:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))
    return deepest


def _problems(error: ValidationError) -> str:
    """The first few validation problems, one `field.path: message` each."""
    found = [f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
             for problem in error.errors()[:5]]
    return "; ".join(found)
