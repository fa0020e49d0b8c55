"""Audit: the checks a decoded request passes before it is queued (per node: op, target, args, kwargs)."""
from __future__ import annotations

import builtins
from typing import Any

from fastapi import HTTPException

from ..remote.allowlist import WireError, check_model_keywords
from .limits import Limits

__all__ = ["audit"]


def audit(job: Any, limits: Limits) -> None:
    """Refuse what the wire format allows but this server does not: model keywords, long loops."""
    try:
        for graph in job.graphs:
            check_model_keywords(graph.meta.get("call_kwargs"), "the traced model")
            for node in graph.nodes:
                _audit_node(node.op, node.target, node.args, limits)
    except WireError as error:
        raise HTTPException(400, str(error)) from error


def _audit_node(op: str, target: Any, args: tuple, limits: Limits) -> None:
    if op == "invoke":  # args: (the invoke's positional inputs, its keywords)
        check_model_keywords(args[1] if len(args) == 2 and isinstance(args[1], dict) else None, "an invoke")
    if op == "call_function" and target is builtins.range:
        _check_range(args, limits.max_loop_iterations)


def _check_range(args: tuple, limit: int) -> None:
    if not all(type(a) is int for a in args) or not 1 <= len(args) <= 3 or (len(args) == 3 and args[2] == 0):
        raise WireError("range(...) in a remote graph takes one to three whole numbers written in the request")
    steps = range(*args)
    if len(steps[:limit + 1]) > limit:  # a slice: len() of a huge range itself overflows
        raise HTTPException(413, f"range{args} has more than {limit:,} steps; this server runs at most "
                                 f"{limit:,} loop iterations (Limits.max_loop_iterations)")
