"""Hand-made requests, as an attacker writes them (the client refuses to record most of these)."""
from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import safetensors.torch
import torch

from nnglass import __version__
from nnglass.remote.serialize import WIRE_VERSION


def base_request(x: torch.Tensor) -> dict:
    """A valid trace of the tiny net whose node 0 is layer1's output, saved (an attack appends nodes after it).

    Written out by hand, as an attacker would, so that it does not depend on how the client records."""
    meta = {"model": "tiny", "method": "forward", "call_kwargs": {"$dict": []}}
    layer1 = node("output", "layer1", 0, saved=True)
    invoke = node("invoke", 0, {"$tuple": [{"$tensor": "t0", "grad": False, "param": False}]}, {"$dict": []})
    return {**_header(), "graphs": [graph(None, "trace", [layer1, invoke], meta)],
            "tensors": base64.b64encode(safetensors.torch.save({"t0": x.contiguous()})).decode()}


def graph(parent: int | None, kind: str, nodes: list, meta: dict | None = None, owner: list | None = None) -> dict:
    """One graph on the wire (a loop or trace inside another names its owner node)."""
    return {"parent": parent, "kind": kind, "meta": meta or {}, "owner": owner, "free": [], "exports": [],
            "nodes": nodes}


def _header() -> dict:
    return {"nnglass": __version__, "wire": WIRE_VERSION, "model": "tiny"}


def ref(index: int, graph: int = 0) -> dict:
    """A reference to node `index` of graph `graph`."""
    return {"$node": [graph, index]}


def node(op: str, target: Any, *args: Any, saved: bool = False, **kwargs: Any) -> dict:
    """One node on the wire; its dependencies are the node references among its top-level args."""
    refs = [a["$node"] for a in (*args, *kwargs.values()) if isinstance(a, dict) and "$node" in a]
    deps = [r[1] if isinstance(r, list) and len(r) == 2 else r for r in refs]  # fuzzed refs pass through as they are
    return {"op": op, "target": target, "args": {"$tuple": list(args)},
            "kwargs": {"$dict": [[k, v] for k, v in kwargs.items()]},
            "deps": deps, "invoke": 0, "saved": saved, "where": None}


def attack(x: torch.Tensor, *nodes: dict) -> dict:
    """The base request with `nodes` added to its trace (before its invoke node, which comes last)."""
    data = base_request(x)
    trace = data["graphs"][0]["nodes"]
    trace[-1:-1] = nodes
    return data


def session(*nodes: dict) -> dict:
    """A session request whose graph is `nodes` (no trace)."""
    return {**_header(), "tensors": "",
            "graphs": [graph(None, "session", list(nodes))]}


def post(hosted: Any, body: Any, token: str | None = None) -> httpx.Response:
    """POST a request (a dict sent as JSON, or raw bytes) with the test key."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": token or hosted.token}
    return httpx.post(f"{hosted.url}/jobs", content=content, headers=headers, timeout=60)


def refused(response: httpx.Response, status: int, *texts: str) -> None:
    """The request was answered `status` with a message holding every one of `texts`."""
    assert response.status_code == status, response.text
    for text in texts:
        assert text in response.json()["detail"], response.text


def final(hosted: Any, job_id: str, token: str | None = None, within: float = 60) -> dict:
    """The job's last status (COMPLETED or ERROR), polling for at most `within` seconds."""
    headers, seen, deadline = {"X-API-Key": token or hosted.token}, [], time.monotonic() + within
    while time.monotonic() < deadline:
        seen += httpx.get(f"{hosted.url}/jobs/{job_id}/status", params={"since": len(seen), "wait": 5},
                          headers=headers, timeout=30).json()
        if seen and seen[-1]["status"] in ("COMPLETED", "ERROR"):
            return seen[-1]
    raise AssertionError(f"job {job_id} reached no final status in {within} s: {seen}")


def ended_with(hosted: Any, body: dict, *texts: str) -> dict:
    """Submit body (accepted), wait for its end, check it is an ERROR whose message holds `texts`."""
    response = post(hosted, body)
    assert response.status_code == 200, response.text
    last = final(hosted, response.json()["job_id"])
    assert last["status"] == "ERROR", last
    for text in texts:
        assert text in last["description"], last
    return last
