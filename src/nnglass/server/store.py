"""Store: jobs, their statuses and result locations in SQL (SQLite by default); request bodies and results as files.

The SQL is SQLAlchemy Core only (no dialect's own SQL), so PostgreSQL works as SQLite does. Files live in the
data folder: `requests/<job id>.json` until the job ends, `results/<job id>.json` until downloaded or expired.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import (BigInteger, Boolean, Column, Float, Integer, MetaData, String, Table, Text, create_engine,
                        delete, event, insert, select, update)
from sqlalchemy.engine import make_url

from ..remote.schema import JobStatus, StatusMessage
from .keys import database_url

__all__ = ["Store", "StoredJob", "default_data_folder"]

_metadata = MetaData()
_jobs = Table(
    "jobs", _metadata,
    Column("seq", Integer, primary_key=True),                # the order jobs were submitted in
    Column("id", String(36), nullable=False, unique=True),
    Column("owner", Integer, nullable=False, index=True),    # the API key that submitted it
    Column("model", String(500), nullable=False),            # the queue it waits in
    Column("models", Text, nullable=False),                  # JSON list: every model its traces run on
    Column("status", String(16), nullable=False),            # the latest status other than LOG
    Column("ended", Float, nullable=True),                   # epoch seconds of its COMPLETED or ERROR
    Column("request", String(300), nullable=True),           # its request body's file, until it ends
    Column("result", String(300), nullable=True),            # its result's file, until downloaded or expired
    Column("result_bytes", BigInteger, nullable=True),
    Column("downloaded", Boolean, nullable=False),
)
_statuses = Table(
    "job_statuses", _metadata,
    Column("job", String(36), primary_key=True),
    Column("number", Integer, primary_key=True, autoincrement=False),  # its place among the job's statuses, from 0
    Column("message", Text, nullable=False),                 # the StatusMessage as JSON
)


@dataclass
class StoredJob:
    """One job as the store keeps it."""

    id: str
    owner: int
    model: str
    models: set[str]
    statuses: list[StatusMessage]
    ended: Optional[float]
    result_bytes: Optional[int]
    downloaded: bool


def _quick_commits(connection: Any, _: Any) -> None:
    """SQLite: a write-ahead log, synced at checkpoints rather than at every commit (each status is a commit, and a
    job may log a thousand lines); a power cut may lose the last statuses, and never leaves a broken database."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def default_data_folder(url: str) -> Path:
    """Where request bodies and results go by default: next to a SQLite file (`<name>-jobs`), else a temp folder."""
    parsed = make_url(database_url(url))
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database)
        return path.with_name(path.stem + "-jobs")
    return Path(tempfile.mkdtemp(prefix="nnglass-jobs-"))


class Store:
    """The job tables in the database at `url` and the files in `folder`."""

    def __init__(self, url: str, folder: Optional[os.PathLike] = None) -> None:
        self.engine = create_engine(database_url(url))
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _quick_commits)
        _metadata.create_all(self.engine)
        self.folder = Path(folder) if folder is not None else default_data_folder(url)
        for part in ("requests", "results"):
            (self.folder / part).mkdir(parents=True, exist_ok=True)

    def add(self, job_id: str, owner: int, model: str, models: set[str], body: bytes) -> None:
        """Keep a new job and its request body."""
        name = f"requests/{job_id}.json"
        self._write(name, body)
        with self.engine.begin() as db:
            db.execute(insert(_jobs).values(id=job_id, owner=owner, model=model, models=json.dumps(sorted(models)),
                                            status=JobStatus.RECEIVED.value, request=name, downloaded=False))

    def post(self, number: int, message: StatusMessage, ended: Optional[float]) -> None:
        """Keep a job's status number `number`; a final one also drops its request body."""
        job_id = message.job_id
        with self.engine.begin() as db:
            db.execute(insert(_statuses).values(job=job_id, number=number, message=message.model_dump_json()))
            if message.status is not JobStatus.LOG:
                changes = {"status": message.status.value}
                if ended is not None:
                    changes.update(ended=ended, request=None)
                db.execute(update(_jobs).where(_jobs.c.id == job_id).values(**changes))
        if ended is not None:
            self._remove(f"requests/{job_id}.json")

    def put_result(self, job_id: str, result: bytes) -> None:
        """Keep a job's result (before its COMPLETED status is posted)."""
        name = f"results/{job_id}.json"
        self._write(name, result)
        with self.engine.begin() as db:
            db.execute(update(_jobs).where(_jobs.c.id == job_id).values(result=name, result_bytes=len(result)))

    def result(self, job_id: str) -> Optional[bytes]:
        """A job's result, None if there is none (not finished, failed, downloaded or expired)."""
        try:
            return (self.folder / f"results/{job_id}.json").read_bytes()
        except FileNotFoundError:
            return None

    def request(self, job_id: str) -> Optional[bytes]:
        """A waiting job's request body."""
        try:
            return (self.folder / f"requests/{job_id}.json").read_bytes()
        except FileNotFoundError:
            return None

    def downloaded(self, job_id: str) -> None:
        """Drop a job's result once it was downloaded (the job and its statuses stay until they expire)."""
        with self.engine.begin() as db:
            db.execute(update(_jobs).where(_jobs.c.id == job_id).values(result=None, downloaded=True))
        self._remove(f"results/{job_id}.json")

    def drop(self, job_ids: list[str]) -> None:
        """Forget these jobs: their rows, statuses and files."""
        if not job_ids:
            return
        with self.engine.begin() as db:
            db.execute(delete(_statuses).where(_statuses.c.job.in_(job_ids)))
            db.execute(delete(_jobs).where(_jobs.c.id.in_(job_ids)))
        for job_id in job_ids:
            self._remove(f"results/{job_id}.json")
            self._remove(f"requests/{job_id}.json")

    def jobs(self) -> list[StoredJob]:
        """Every job kept, in the order they were submitted, with their statuses."""
        with self.engine.connect() as db:
            rows = db.execute(select(_jobs).order_by(_jobs.c.seq)).all()
            messages: dict[str, list[StatusMessage]] = {}
            for job_id, text in db.execute(select(_statuses.c.job, _statuses.c.message)
                                           .order_by(_statuses.c.job, _statuses.c.number)):
                messages.setdefault(job_id, []).append(StatusMessage.model_validate_json(text))
        return [StoredJob(row.id, row.owner, row.model, set(json.loads(row.models)), messages.get(row.id, []),
                          row.ended, row.result_bytes, row.downloaded) for row in rows]

    # -- files ------------------------------------------------------------------------------------------
    def _write(self, name: str, data: bytes) -> None:
        """Write a file whole or not at all (a crash mid-write leaves no half file under its name)."""
        path = self.folder / name
        partial = path.with_suffix(".partial")
        partial.write_bytes(data)
        os.replace(partial, path)

    def _remove(self, name: str) -> None:
        (self.folder / name).unlink(missing_ok=True)
