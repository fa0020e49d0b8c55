"""Client: the `remote=True` backend: submit a trace or session, follow its status, download the saved values."""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import threading
import time
from typing import Any, Iterator, Optional

import httpx
from tqdm.auto import tqdm
from websockets.exceptions import ConnectionClosedOK, WebSocketException
from websockets.sync.client import connect

from ..config import CONFIG
from . import redact, serialize
from .schema import API_KEY_HEADER, JobStatus, StatusMessage

__all__ = ["RemoteError", "RemoteBackend", "JobHandle", "Connection", "execute_remote", "job"]

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
                   http: Optional[httpx.Client] = None, blocking: bool = True) -> JobHandle:
    """Run a recorded trace or session on the server and give its saved proxies their values; its job.

    `host` and `api_key` default to `nnglass.CONFIG`; `http` is a client to talk through instead
    (its base URL is the server's). With `blocking=False` it returns once the server has the job:
    `job.result()` then waits for the values (the request names the variables that hold them).
    """
    _show_status_lines()
    data = serialize.request(context)
    data["model"] = serialize.remote_name(getattr(context.model, "_remote_name", None))
    if not blocking:
        data["names"] = serialize.saved_names(context)
    connection = Connection(host, api_key, http)
    job = JobHandle(connection, connection.submit(data), context)
    if blocking:
        job.result()
    else:
        block = "tracer" if context.kind == "trace" else context.kind
        context.experiment.pending = (f"This value is computed by the remote job {job.id}, which ran with "
                                      f"blocking=False: call {block}.job.result() to wait for it and fill the "
                                      f"saved values ({block}.job.status() says where the job stands).")
    return job


def _show_status_lines() -> None:
    """Status lines are INFO records of "nnglass.remote"; show them on stderr if logging is not set up."""
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)


class RemoteBackend:
    """Runs a recorded trace or session on the server (`remote=True`); with `blocking=False` it only submits
    it, and `recorder.job` is the job's handle."""

    def __init__(self, blocking: bool = True) -> None:
        self.blocking = blocking

    def run(self, recorder: Any) -> None:
        job = execute_remote(recorder, blocking=self.blocking)
        if not self.blocking:
            recorder.job = job


class JobHandle:
    """A job on the server: its id, where it stands, and its saved values once it has ended.

    `recorder` is the trace or session that sent it (None for a handle re-attached by id): `result()`
    fills its saved proxies too. A result is handed out once; `result()` keeps it for later calls.
    """

    def __init__(self, connection: Connection, job_id: str, recorder: Any = None) -> None:
        self.id = job_id
        self.connection = connection
        self.recorder = recorder
        self.statuses: list[StatusMessage] = []  # every status seen so far
        self._values: Optional[dict[str, Any]] = None

    def __repr__(self) -> str:
        latest = self.statuses[-1].status.value if self.statuses else "not asked yet"
        return f"<JobHandle {self.id} ({latest})>"

    @property
    def ended(self) -> bool:
        """Whether the last status seen is COMPLETED or ERROR."""
        return bool(self.statuses) and self.statuses[-1].status.final

    def status(self) -> StatusMessage:
        """The job's latest status, asked of the server now (without waiting for a new one)."""
        if not self.ended:
            self.statuses += self.connection.polled(self.id, len(self.statuses), 0)
        if not self.statuses:
            raise RemoteError(f"the server has no status of job {self.id} yet", job_id=self.id)
        return self.statuses[-1]

    def wait(self, timeout: Optional[float] = None) -> StatusMessage:
        """Report each new status until the job ends (TimeoutError after `timeout` s); RemoteError if it failed."""
        if not self.ended:
            for message in self.connection.statuses(self.id, len(self.statuses), timeout):
                self.statuses.append(message)
                _report(message)
        last = self.statuses[-1]
        if last.status is JobStatus.ERROR:
            raise _failure(last)
        return last

    def result(self, timeout: Optional[float] = None) -> dict[str, Any]:
        """Wait for the job, download its saved values (with a progress bar) and fill the recorder's
        saved proxies; the values by the names of the variables that held them in the with-block."""
        if self._values is None:
            self.wait(timeout)
            data = self.connection.download(self.id)
            values = serialize.saved_values(data)
            if self.recorder is not None:
                serialize.apply_results(self.recorder, data, values)
                self.recorder.experiment.pending = None
            self._values = serialize.by_name(data, values)
        return self._values


def job(job_id: str, host: Optional[str] = None, api_key: Optional[str] = None) -> JobHandle:
    """The handle of a job sent earlier (from any process), by its id; `host`, `api_key`: as nnglass.CONFIG."""
    _show_status_lines()
    return JobHandle(Connection(host, api_key), job_id)


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

    def statuses(self, job_id: str, seen: int = 0, timeout: Optional[float] = None) -> Iterator[StatusMessage]:
        """The job's statuses after the first `seen`, as they come, to the last; TimeoutError after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with contextlib.closing(self._pushed(job_id, seen, deadline)) as pushed:
                for message in pushed:
                    seen += 1
                    yield message
                    if message.status.final:
                        return
        except TimeoutError:
            raise
        except (OSError, WebSocketException) as error:
            logger.debug("%s - status WebSocket failed (%s); polling instead", job_id, error)
        while True:
            left = _left(deadline, job_id)
            for message in self.polled(job_id, seen, POLL_WAIT_S if left is None else min(left, POLL_WAIT_S)):
                seen += 1
                yield message
                if message.status.final:
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
    def _pushed(self, job_id: str, seen: int, deadline: Optional[float]) -> Iterator[StatusMessage]:
        """Statuses pushed over the WebSocket after the first `seen` (it sends all; stops early if the server
        closes it before the end)."""
        base = self.http.base_url
        url = base.copy_with(scheme="wss" if base.scheme == "https" else "ws").join(f"jobs/{job_id}/ws")
        with connect(str(url), additional_headers=self.headers, open_timeout=10, max_size=2**26) as socket:
            for number in itertools.count():
                try:
                    text = socket.recv(timeout=_left(deadline, job_id))
                except ConnectionClosedOK:
                    return
                except TimeoutError:
                    raise _late(job_id) from None
                if number >= seen:
                    yield StatusMessage.model_validate_json(text)

    def polled(self, job_id: str, seen: int, wait: float = POLL_WAIT_S) -> list[StatusMessage]:
        """The statuses after the first `seen`, waiting on the server up to `wait` seconds for one."""
        response = self._call("GET", f"/jobs/{job_id}/status", params={"since": seen, "wait": wait},
                              timeout=wait + 30)
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


def _report(message: StatusMessage) -> None:
    """Log a status line (if CONFIG.APP.REMOTE_LOGGING) and print LOG text.

    A LOG line is printed as a local run prints it, and logged only at DEBUG: the user sees it once.
    """
    if message.status is JobStatus.LOG:
        logger.debug(message.line())
        print(message.description)
    elif CONFIG.APP.REMOTE_LOGGING:
        logger.info(message.line())


def _failure(message: StatusMessage) -> RemoteError:
    """The error of a job that ended with ERROR, with the server's message."""
    return RemoteError(message.line(), job_id=message.job_id, where=message.where, error=message.error)


def _left(deadline: Optional[float], job_id: str) -> Optional[float]:
    """Seconds left until `deadline` (None: no deadline); TimeoutError once it has passed."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise _late(job_id)
    return left


def _late(job_id: str) -> TimeoutError:
    return TimeoutError(f"job {job_id} has not ended in the time given; it goes on on the server "
                        "(wait again, or look with job.status())")


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
