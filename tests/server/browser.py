"""A real headless chromium, driven over the Chrome DevTools Protocol (a WebSocket): open pages, run JavaScript."""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import httpx
from websockets.sync.client import ClientConnection, connect

__all__ = ["Browser", "Page", "chromium"]

FLAGS = ("--headless=new", "--remote-debugging-port=0", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-background-networking")


def chromium() -> Optional[str]:
    """The browser to test with: $NNGLASS_CHROMIUM, else chromium (or Chrome) on the PATH; None if there is none."""
    names = (os.environ.get("NNGLASS_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome")
    return next((found for name in names if name and (found := shutil.which(name))), None)


class Browser:
    """`with Browser(binary, folder) as browser:` a headless chromium with its profile in folder.

    It runs in a process group of its own: leaving the block (however) ends it, then kills what is left of the group.
    """

    def __init__(self, binary: str, folder: Path) -> None:
        self.binary, self.folder = binary, folder
        self.log = folder / "chromium.log"
        self.process: Optional[subprocess.Popen] = None
        self.sockets = contextlib.ExitStack()  # one WebSocket per open page
        self.port = 0

    def __enter__(self) -> Browser:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([self.binary, *FLAGS, f"--user-data-dir={self.folder / 'profile'}",
                                             "about:blank"], stdout=log, stderr=log, start_new_session=True)
        try:
            self.port = self._port()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.sockets.close()
        if self.process is None:
            return
        self.process.terminate()  # chromium itself first: it then ends and reaps its helpers
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):  # whatever of its group is left
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def _port(self, timeout: float = 30) -> int:
        """The DevTools port, from the DevToolsActivePort file chromium writes into its profile once it listens."""
        written = self.folder / "profile" / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (written.exists() and written.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start; its output:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)
        return int(written.read_text().split()[0])

    def open(self, url: str) -> Page:
        """A new tab showing url, once its document has loaded."""
        target = httpx.put(f"http://127.0.0.1:{self.port}/json/new?about:blank").json()
        page = Page(self.sockets.enter_context(connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10)))
        page.call("Runtime.enable")
        page.call("Page.navigate", url=url)  # answers once the new document is committed
        page.wait_for("location.href !== 'about:blank' && document.readyState === 'complete'")
        return page


class Page:
    """One tab: `evaluate` JavaScript in it; `errors` are the uncaught exceptions of its scripts."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.errors: list[str] = []
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict:
        """Send one DevTools command and wait for its answer (noting the exceptions reported meanwhile)."""
        sent = next(self._ids)
        self.socket.send(json.dumps({"id": sent, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=30))
            if message.get("method") == "Runtime.exceptionThrown":
                details = message["params"]["exceptionDetails"]
                self.errors.append(details.get("exception", {}).get("description") or details["text"])
            if message.get("id") == sent:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited if it is a promise)."""
        answer = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise RuntimeError(details.get("exception", {}).get("description") or details["text"])
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 15) -> Any:
        """Evaluate expression every 50 ms until its value is truthy; that value (AssertionError at the timeout)."""
        deadline = time.monotonic() + timeout
        while not (value := self.evaluate(expression)):
            if time.monotonic() > deadline:
                raise AssertionError(f"after {timeout:g} s, {expression} is still {value!r}")
            time.sleep(0.05)
        return value
