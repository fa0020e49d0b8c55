"""Background: a server app run by uvicorn in a thread of this process (notebooks, tests, benchmarks)."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any


class BackgroundServer:
    """`with BackgroundServer(app) as url:` serves app on a free port (or `port`) until the block ends."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, **config: Any) -> None:
        import uvicorn

        # IPPROTO_TCP given explicitly: asyncio then sets TCP_NODELAY on accepted connections (no 40 ms stalls)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.bind((host, port))
        self.url = f"http://{host}:{self.socket.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, **{"log_level": "warning", **config}))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="nnglass-server", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start (see the uvicorn messages above)")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.socket.close()
