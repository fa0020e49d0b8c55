"""Host: the models a server runs, their workers, and the checks a request passes before it is queued."""
from __future__ import annotations

import json
import threading
from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError

from .. import __version__
from ..modeling.language import LanguageModel
from ..remote import serialize
from ..remote.allowlist import WireError
from ..remote.schema import JobStatus, ModelInfo, RequestSpec, ServerStatus, SubmitResponse
from .jobs import JobRecord, JobStore
from .limits import Limits
from .workers import ModelWorker


class Host:
    """Hosted models by name, one worker each, and the jobs sent to them."""

    def __init__(self, models: dict[str, Any], limits: Limits) -> None:
        for model in models.values():
            if isinstance(model, LanguageModel):
                model.dispatch()  # load the weights once, before the first job
        self.models = dict(models)
        self.limits = limits
        self.jobs = JobStore(limits.result_ttl_s)
        locks = {name: threading.Lock() for name in self.models}
        self.workers = {name: ModelWorker(name, locks, limits.job_timeout_s) for name in self.models}
        self.sizes = {name: sum(p.numel() for p in model._model.parameters()) for name, model in self.models.items()}

    def submit(self, body: bytes, owner: int) -> SubmitResponse:
        """Check a request, decode it, and queue it for its model; HTTPException says what is wrong."""
        data = _json(body)
        spec = self._checked(data)
        try:
            request = serialize.Job(data, self.models.__getitem__)
        except WireError as error:
            raise HTTPException(400, str(error)) from error
        except (ValueError, TypeError, KeyError, IndexError) as error:
            raise HTTPException(400, f"malformed request: {type(error).__name__}: {error}") from error
        record = JobRecord(owner, spec.model, spec.traced_models(), request)
        self.jobs.add(record)
        record.post(JobStatus.RECEIVED, "Your job has been received and is waiting to be queued.")
        self.workers[spec.model].submit(record)
        return SubmitResponse(job_id=record.id, model=spec.model)

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
        nodes = sum(len(graph.nodes) for graph in spec.graphs)
        if nodes > self.limits.max_nodes:
            raise HTTPException(413, f"the request has {nodes} graph nodes; this server runs at most "
                                     f"{self.limits.max_nodes} per request")
        unknown = sorted(spec.traced_models() - self.models.keys())
        if unknown:
            raise HTTPException(404, f"model {unknown[0]!r} is not hosted on this server; it hosts: "
                                     f"{', '.join(sorted(self.models)) or 'nothing'}")
        return spec

    def status(self) -> ServerStatus:
        """The hosted models with their size and queue length."""
        return ServerStatus(nnglass=__version__, models=[
            ModelInfo(name=name, architecture=type(model._model).__name__, parameters=self.sizes[name],
                      queue=len(self.workers[name]))
            for name, model in self.models.items()])

    def close(self) -> None:
        """Finish the queued jobs and stop the workers."""
        for worker in self.workers.values():
            worker.close()


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as error:
        raise HTTPException(400, f"the request body is not valid JSON: {error}") from error


def _problems(error: ValidationError) -> str:
    """The first few validation problems, one `field.path: message` each."""
    found = [f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}"
             for problem in error.errors()[:5]]
    return "; ".join(found)
