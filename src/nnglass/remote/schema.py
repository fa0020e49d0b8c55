"""Schema: the pydantic models of requests, job statuses and server information on the wire."""
from __future__ import annotations

import time
from enum import Enum
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator


API_KEY_HEADER = "X-API-Key"  # the header that carries the API key, on every job endpoint


class JobStatus(str, Enum):
    """Where a job stands; a job ends COMPLETED or ERROR."""

    RECEIVED = "RECEIVED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    LOG = "LOG"
    COMPLETED = "COMPLETED"
    ERROR = "ERROR"

    @property
    def final(self) -> bool:
        """Whether no status follows this one."""
        return self in (JobStatus.COMPLETED, JobStatus.ERROR)


class StatusMessage(BaseModel):
    """One status line of a job, as the server pushes it and the client logs it."""

    job_id: str
    status: JobStatus
    description: str = ""
    position: Optional[int] = None  # QUEUED: how many jobs run before this one
    where: Optional[str] = None     # ERROR: the user's `file:line` that made the failing operation
    error: Optional[str] = None     # ERROR: the exception's class name
    timestamp: float = Field(default_factory=time.time)

    def line(self) -> str:
        """`<job id> - STATUS: description`, the form the client logs."""
        return f"{self.job_id} - {self.status.value}: {self.description}"


class SubmitResponse(BaseModel):
    """The answer to a submitted request."""

    job_id: str
    model: str


class ModelInfo(BaseModel):
    """A hosted model, as `/status` lists it."""

    name: str
    architecture: str
    parameters: int
    queue: int  # jobs waiting or running
    # figures of newer servers (None from older ones)
    waiting: Optional[int] = None           # jobs queued, not running yet
    running: Optional[int] = None           # jobs running now
    running_s: Optional[float] = None       # how long the longest-running of them has run, in seconds
    completed_1m: Optional[int] = None      # jobs that ended in the last minute
    per_minute: Optional[float] = None      # jobs ended per minute over the last five minutes
    mean_s: Optional[float] = None          # mean run time of the jobs that ended in the last five minutes


class ServerStatus(BaseModel):
    """What `/status` answers."""

    nnglass: str
    models: list[ModelInfo]


# -- the request body: its shape is checked here, its meaning by serialize.Job ----------------------
class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetaSpec(_Wire):
    """What runs a graph: for a trace, its hosted model, run method and the method's keywords."""

    model: Optional[str] = None
    method: Optional[str] = None
    call_kwargs: Any = None


class NodeSpec(_Wire):
    """One node of a graph on the wire."""

    op: str
    target: Any = None
    args: Any
    kwargs: Any
    deps: list[int]
    invoke: Optional[int] = None
    saved: bool = False
    where: Optional[tuple[str, int]] = None


class GraphSpec(_Wire):
    """One graph (a trace, session or loop body) on the wire."""

    parent: Optional[int]
    kind: Literal["trace", "session", "loop"]
    meta: MetaSpec
    owner: Optional[tuple[int, int]] = None
    free: list[tuple[int, int]] = []
    exports: list[tuple[int, int]] = []
    nodes: list[NodeSpec]

    @model_validator(mode="after")
    def _trace_fields(self) -> GraphSpec:
        if self.kind == "trace" and (self.meta.model is None or self.meta.method is None):
            raise ValueError("a trace needs its model and method")
        return self


class RequestSpec(_Wire):
    """A whole request: the graphs, the inputs of a lone trace, the tensors, the model it queues for."""

    nnglass: str
    wire: int
    model: str
    graphs: list[GraphSpec] = Field(min_length=1)
    inputs: Any = None
    tensors: str = ""
    names: dict[str, Any] = {}  # the client's variable names of saved values, returned with the result

    def traced_models(self) -> set[str]:
        """The model names that the request's traces run on (its own queue's model included)."""
        return {self.model} | {g.meta.model for g in self.graphs if g.kind == "trace" and g.meta.model}
