"""App: the FastAPI application: submit a job, follow it (WebSocket or polling), download its result."""
from __future__ import annotations

import contextlib
import os
from typing import Any, AsyncIterator, Optional

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from starlette.websockets import WebSocketDisconnect

from .. import __version__
from ..remote import redact
from ..remote.schema import API_KEY_HEADER, ServerStatus, StatusMessage, SubmitResponse
from . import page
from .host import Host
from .hosting import Hosting, InProcess
from .jobs import JobRecord
from .keys import KeyInfo, KeyStore
from .limits import Limits
from .store import Store


def create_app(models: dict[str, Any] | Hosting, database_url: str = "sqlite:///nnglass.db",
               limits: Optional[Limits] = None, data: Optional[os.PathLike] = None) -> FastAPI:
    """The server for `models`, with API keys and jobs in the database at `database_url`.

    `models`: name -> NNsight model, run in this process within `limits`; or a hosting backend (such as
    `nnglass.server.ray_hosting.RayHosting`), which brings its own limits.

    Request bodies and results are files in the folder `data` (default: next to a SQLite database file,
    `<name>-jobs`). Jobs that a previous server left there are taken up again at start-up.
    `app.state.keys` is the KeyStore and `app.state.host` the Host (models, workers, jobs).
    """
    redact.install()
    keys = KeyStore(database_url)
    hosting = models if isinstance(models, Hosting) else InProcess(models, limits or Limits())
    host = Host(hosting, Store(database_url, data))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(host.close)

    app = FastAPI(title="nnglass", version=__version__, lifespan=lifespan)
    app.state.keys, app.state.host = keys, host

    def key_of(token: Optional[str]) -> KeyInfo:
        """The caller's key: 401 without one, 403 for an unknown or revoked one."""
        if not token:
            raise HTTPException(401, f"missing API key: send it in the {API_KEY_HEADER} header "
                                     "(client: nnglass.CONFIG.set_default_api_key(key))")
        key = keys.check(token)
        if key is None:
            raise HTTPException(403, "unknown API key")
        if not key.active:
            raise HTTPException(403, f"this API key ({key.name!r}) was revoked")
        return key

    def caller(x_api_key: Optional[str] = Header(None)) -> KeyInfo:
        return key_of(x_api_key)

    def job_of(job_id: str, key: KeyInfo) -> JobRecord:
        record = host.jobs.find(job_id, key.id)
        if record is None:
            raise HTTPException(404, f"no job {job_id!r} for this key (unknown, or expired: this server keeps a "
                                     f"job {host.limits.result_ttl_s:g} s after it ends)")
        return record

    @app.post("/jobs", response_model=SubmitResponse)
    async def submit(request: Request, key: KeyInfo = Depends(caller)) -> SubmitResponse:
        """Queue a request (the JSON of `nnglass.remote.serialize.request`)."""
        body = await _body(request, host.limits.max_request_bytes)
        return await run_in_threadpool(host.submit, body, key.id)

    @app.get("/jobs/{job_id}/status", response_model=list[StatusMessage])
    async def poll(job_id: str, since: int = Query(0, ge=0), wait: float = Query(10.0, ge=0, le=60),
                   key: KeyInfo = Depends(caller)) -> list[StatusMessage]:
        """The job's statuses after the first `since`, waiting up to `wait` seconds for a new one."""
        return await job_of(job_id, key).statuses_after(since, wait)

    @app.websocket("/jobs/{job_id}/ws")
    async def follow(websocket: WebSocket, job_id: str) -> None:
        """Push every status of the job, from the first, and close after COMPLETED or ERROR."""
        try:
            key = await run_in_threadpool(key_of, websocket.headers.get(API_KEY_HEADER))
            record = job_of(job_id, key)
        except HTTPException as error:
            await websocket.close(code=1008, reason=str(error.detail)[:120])
            return
        await websocket.accept()
        seen = 0
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                for message in await record.statuses_after(seen, None):
                    await websocket.send_text(message.model_dump_json())
                    seen += 1
                    if message.status.final:
                        await websocket.close()
                        return

    @app.get("/jobs/{job_id}/result")
    def result(job_id: str, key: KeyInfo = Depends(caller)) -> Response:
        """The saved values of a completed job (JSON, tensors as safetensors); handed out once."""
        record = job_of(job_id, key)
        body = host.jobs.take_result(record)
        if body is None:
            if record.downloaded:
                raise HTTPException(410, f"the result of job {job_id!r} was downloaded already (a result is "
                                         "handed out once)")
            raise HTTPException(409, f"job {job_id!r} has no result: "
                                     + ("it has not finished" if record.ended is None else "it ended with an error"))
        return Response(body, media_type="application/json")

    @app.get("/status", response_model=ServerStatus)
    def status() -> ServerStatus:
        """The hosted models: name, architecture, parameter count, queue length."""
        return host.status()

    @app.get("/", response_class=HTMLResponse)
    def status_page() -> str:
        """The status page."""
        return page.render(host.status())

    return app


async def _body(request: Request, limit: int) -> bytes:
    """The request body; 413 past `limit` bytes (read to the end all the same, so the client sees the answer)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise HTTPException(413, f"the request is {size:,} bytes; this server accepts at most {limit:,}")
    return b"".join(chunks)
