"""Client: the `remote=True` backend: submit a trace or session, follow its status, download the saved values."""
from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any, Iterator, Optional

import httpx
from tqdm.auto import tqdm
from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

from ..config import CONFIG
from . import redact, serialize
from .schema import API_KEY_HEADER, JobStatus, StatusMessage

logger = logging.getLogger("nnglass.remote")
redact.install()  # API keys stay out of the websockets library's header logging
_FORMAT = "%(asctime)s %(processName)s %(name)s %(levelname)s %(message)s"
POLL_WAIT_S = 10.0  # how long one polling request waits on the server for a new status


class RemoteError(RuntimeError):
    """The server refused a request or a job failed; the message is the server's."""

    def __init__(self, message: str, *, job_id: Optional[str] = None, where: Optional[str] = None,
                 status_code: Optional[int] = None, error: Optional[str] = None) -> None:
        super().__init__(message)
        self.job_id = job_id            # the job, once the server accepted it
        self.where = where              # the user's `file:line` of the operation that failed
        self.status_code = status_code  # the HTTP status of a refused request
        self.error = error              # the class name of the exception on the server


def execute_remote(context: Any, *, host: Optional[str] = None, api_key: Optional[str] = None,
                   http: Optional[httpx.Client] = None) -> None:
    """Run a recorded trace or session on the server and give its saved proxies their values.

    `host` and `api_key` default to `nnglass.CONFIG`; `http` is a client to talk through instead
    (its base URL is the server's).
    """
    _show_status_lines()
    data = serialize.request(context)
    data["model"] = serialize.remote_name(getattr(context.model, "_remote_name", None))
    server = Connection(host, api_key, http)
    job_id = server.submit(data)
    server.follow(job_id)
    serialize.apply_results(context, server.download(job_id))


def _show_status_lines() -> None:
    """Status lines are INFO records of "nnglass.remote"; show them on stderr if logging is not set up."""
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)


class RemoteBackend:
    """Runs a recorded trace or session on the server (`remote=True`)."""

    def run(self, recorder: Any) -> None:
        execute_remote(recorder)


_clients: dict[str, httpx.Client] = {}
_clients_lock = threading.Lock()


def _client_for(host: str) -> httpx.Client:
    """One HTTP client (and its pool of open connections) per server, shared by every remote run."""
    with _clients_lock:
        client = _clients.get(host)
        if client is None:
            client = _clients[host] = httpx.Client(base_url=host, timeout=httpx.Timeout(30.0))
        return client


class Connection:
    """Talks to one server with one API key."""

    def __init__(self, host: Optional[str] = None, api_key: Optional[str] = None,
                 http: Optional[httpx.Client] = None) -> None:
        key = api_key or CONFIG.api_key
        self.headers = {API_KEY_HEADER: key} if key else {}
        self.http = http or _client_for(host or CONFIG.host)

    def submit(self, data: dict) -> str:
        """Send the request; the job id."""
        body = json.dumps(data, separators=(",", ":")).encode()
        response = self._call("POST", "/jobs", content=body, headers={"Content-Type": "application/json"})
        return response.json()["job_id"]

    def follow(self, job_id: str) -> None:
        """Report each status until the job ends; raises RemoteError if it ended with ERROR."""
        seen = 0
        try:
            with contextlib.closing(self._pushed(job_id)) as pushed:
                for message in pushed:
                    seen += 1
                    if _report(message):
                        return
        except (OSError, WebSocketException) as error:
            logger.debug("%s - status WebSocket failed (%s); polling instead", job_id, error)
        while True:
            for message in self._polled(job_id, seen):
                seen += 1
                if _report(message):
                    return

    def download(self, job_id: str) -> dict:
        """The job's saved values, with a progress bar."""
        with self.http.stream("GET", f"/jobs/{job_id}/result", headers=self.headers) as response:
            if not response.is_success:
                response.read()
                _refused(response)
            total = int(response.headers.get("Content-Length", 0)) or None
            chunks = []
            with tqdm(total=total, unit="B", unit_scale=True, desc="Downloading result") as bar:
                for chunk in response.iter_bytes():
                    chunks.append(chunk)
                    bar.update(len(chunk))
        return json.loads(b"".join(chunks))

    # -- transport ----------------------------------------------------------------------------------
    def _pushed(self, job_id: str) -> Iterator[StatusMessage]:
        """Statuses pushed over the WebSocket (stops early if the server closes it before the end)."""
        base = self.http.base_url
        url = base.copy_with(scheme="wss" if base.scheme == "https" else "ws").join(f"jobs/{job_id}/ws")
        with connect(str(url), additional_headers=self.headers, open_timeout=10, max_size=2**26) as socket:
            for text in socket:
                yield StatusMessage.model_validate_json(text)

    def _polled(self, job_id: str, seen: int) -> list[StatusMessage]:
        """The statuses after the first `seen`, waiting on the server a while for one."""
        response = self._call("GET", f"/jobs/{job_id}/status", params={"since": seen, "wait": POLL_WAIT_S},
                              timeout=POLL_WAIT_S + 30)
        return [StatusMessage.model_validate(item) for item in response.json()]

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self.headers, **kwargs.pop("headers", {})}
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.TransportError as error:
            raise RemoteError(f"cannot reach the nnglass server at {self.http.base_url} ({error}); start one with "
                              "`nnglass serve` or point to it with nnglass.CONFIG.set_default_host(url)") from error
        if not response.is_success:
            _refused(response)
        return response


def _report(message: StatusMessage) -> bool:
    """Log a status line (if CONFIG.APP.REMOTE_LOGGING), print LOG text, raise on ERROR; whether the job has ended.

    A LOG line is printed as a local run prints it, and logged only at DEBUG: the user sees it once.
    """
    if message.status is JobStatus.LOG:
        logger.debug(message.line())
        print(message.description)
    elif CONFIG.APP.REMOTE_LOGGING:
        logger.info(message.line())
    if message.status is JobStatus.ERROR:
        raise RemoteError(message.line(), job_id=message.job_id, where=message.where, error=message.error)
    return message.status.final


def _refused(response: httpx.Response) -> None:
    """Raise RemoteError with the server's reason for an error response."""
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    if isinstance(detail, list):  # a validation error of FastAPI: [{"loc": [...], "msg": ...}, ...]
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}" for d in detail)
    raise RemoteError(f"the server refused the request ({response.status_code}): {detail}",
                      status_code=response.status_code)
