"""Limits: how much one request may ask of the server, and how many jobs may share a forward."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .budget import LimitExceeded

__all__ = ["Limits", "check_result"]


@dataclass(frozen=True)
class Limits:
    """Request size and nesting, graph size, invokes, loops, tensor sizes, logs, results, run time, batching."""

    max_request_bytes: int = 256 * 2**20     # a larger body is answered 413
    max_depth: int = 64                      # JSON nested deeper is answered 413
    max_nodes: int = 100_000                 # more graphs and nodes (all subgraphs together): 413
    max_invokes: int = 256                   # more invokes in one trace: 413
    max_loop_iterations: int = 100_000       # a longer `range` in a graph: 413
    max_tensor_elements: int = 2**28         # a job making a larger tensor ends with ERROR
    max_list_elements: int = 2**22           # `.tolist()` of a larger tensor ends with ERROR
    max_products: int = 2**36                # a matrix product of more multiply-adds ends with ERROR
    max_log_lines: int = 1_000               # a job logging more ends with ERROR
    max_result_bytes: int = 512 * 2**20      # a job saving more ends with ERROR
    max_held_bytes: int = 2 * 2**30          # undownloaded results kept per API key; past it new jobs end with ERROR
    job_timeout_s: float = 600.0             # a job running longer is stopped and ends with ERROR
    isolate: Optional[bool] = None           # each job in a forked process; None: on Linux if no weights are on a GPU
    max_job_bytes: int = 8 * 2**30           # with `isolate`: memory a job's process may add (RLIMIT_AS)
    result_ttl_s: float = 3600.0             # a finished job's result is dropped this long after it ended
    batch_size: int = 8                      # most queued jobs run as the invokes of one forward; 1: no batching
    batch_window_s: float = 0.005            # how long a group that could share a forward waits for the next job


def check_result(limits: Limits, size: int, held: int, jobs: int = 1) -> None:
    """Refuse a result of `size` bytes when it is too large (for `jobs` users' jobs), or its key already
    `held` too much."""
    if size > limits.max_result_bytes * jobs:
        raise LimitExceeded(f"the job's saved values take {size:,} bytes; this server returns at "
                            f"most {limits.max_result_bytes:,} (Limits.max_result_bytes)")
    if held + size > limits.max_held_bytes:
        raise LimitExceeded(f"this API key has {held:,} bytes of results not downloaded yet; this server "
                            f"keeps at most {limits.max_held_bytes:,} per key (Limits.max_held_bytes): "
                            "download them first")
