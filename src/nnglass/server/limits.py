"""Limits: how much one request may ask of the server."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Request size, graph size, run time, and how long an undownloaded result is kept."""

    max_request_bytes: int = 256 * 2**20  # a larger body is answered 413
    max_nodes: int = 100_000              # a graph with more nodes (all subgraphs together) is answered 413
    job_timeout_s: float = 600.0          # a job running longer is stopped and ends with ERROR
    result_ttl_s: float = 3600.0          # a finished job's result is dropped this long after it ended
