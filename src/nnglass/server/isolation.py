"""Isolation: a job run in a forked child process, killed at the time limit, with its own memory cap.

The child shares the hosted weights copy-on-write, so nothing it writes reaches the server; a crash, a
runaway C call or an allocation past the cap ends the child, never the API process. CPU hosts only:
CUDA does not survive a fork; and the child computes on one thread (OpenMP's pool does not survive it).
"""
from __future__ import annotations

import json
import os
import resource
import select
import signal
import struct
import threading
import time
from typing import Any, Callable, Optional

import torch

__all__ = ["run_forked"]

_FRAME = struct.Struct("!Q")  # each message: its length, then its JSON
_FORKING = threading.Lock()    # no other child may inherit the write end of a pipe that is not its own


def run_forked(child: Callable[[Callable[[Any], None]], None], timeout: float, memory: int,
               on_message: Callable[[Any], None]) -> Optional[str]:
    """Run `child(send)` in a forked process; each message sent reaches `on_message` here.

    None if the child ended by itself, else why it did not: killed at the time limit, or died of a signal."""
    with _FORKING:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns into the server's code
            os.close(read)
            _child(child, write, memory)
        os.close(write)
    try:
        finished = _relay(read, time.monotonic() + timeout, on_message)
    finally:
        os.close(read)
    if not finished:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if not finished:
        return f"ran longer than this server's limit of {timeout:g} s (Limits.job_timeout_s) and was killed"
    if os.WIFSIGNALED(status):
        return f"crashed: its process died of {signal.Signals(os.WTERMSIG(status)).name}"
    return None


def _child(child: Callable[[Callable[[Any], None]], None], write: int, memory: int) -> None:
    code = 1
    try:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = _address_space() + memory
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        torch.set_num_threads(1)  # the parent's OpenMP threads are not in the child: a parallel region would hang
        child(lambda message: _send(write, message))
        code = 0
    finally:
        os._exit(code)


def _address_space() -> int:
    """This process's virtual memory size in bytes (what the memory cap is added to)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _send(write: int, message: Any) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    view = memoryview(_FRAME.pack(len(data)) + data)
    while view:
        view = view[os.write(write, view):]


def _relay(read: int, deadline: float, on_message: Callable[[Any], None]) -> bool:
    """Pass on each message until the child closes the pipe (True) or the deadline passes (False)."""
    buffer = bytearray()
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read], [], [], left)[0]:
            return False
        chunk = os.read(read, 1 << 20)
        if not chunk:
            return True
        buffer += chunk
        while len(buffer) >= _FRAME.size and len(buffer) >= _FRAME.size + _FRAME.unpack_from(buffer)[0]:
            size = _FRAME.unpack_from(buffer)[0]
            on_message(json.loads(buffer[_FRAME.size:_FRAME.size + size]))
            del buffer[:_FRAME.size + size]
