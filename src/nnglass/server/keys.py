"""Keys: API keys in SQL (SQLite by default), stored as SHA-256 digests; the token is shown only once."""
from __future__ import annotations

import datetime
import hashlib
import secrets
from dataclasses import dataclass
from typing import Optional

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, create_engine, insert, select, update

TOKEN_PREFIX = "nng_"

_metadata = MetaData()
_keys = Table(
    "api_keys", _metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(200), nullable=False, index=True),
    Column("digest", String(64), nullable=False, unique=True),
    Column("created", DateTime(timezone=True), nullable=False),
    Column("revoked", DateTime(timezone=True), nullable=True),
)


@dataclass(frozen=True)
class KeyInfo:
    """One API key as stored (never the token itself)."""

    id: int
    name: str
    created: datetime.datetime
    revoked: Optional[datetime.datetime]

    @property
    def active(self) -> bool:
        """Whether the key may still be used."""
        return self.revoked is None


def database_url(path_or_url: str) -> str:
    """A SQLAlchemy URL from a URL, or from a file path (a SQLite database)."""
    return path_or_url if "://" in path_or_url else f"sqlite:///{path_or_url}"


def digest(token: str) -> str:
    """The SHA-256 hex digest a token is stored and looked up by."""
    return hashlib.sha256(token.encode()).hexdigest()


class KeyStore:
    """Create, list, revoke and check API keys in the database at `url`."""

    def __init__(self, url: str = "sqlite:///nnglass.db") -> None:
        self.engine = create_engine(database_url(url))
        _metadata.create_all(self.engine)

    def create(self, name: str) -> tuple[KeyInfo, str]:
        """A new key for `name` and its token (the only time the token is available)."""
        name = name.strip()
        if not name:
            raise ValueError("a key needs a name")
        if any(key.name == name and key.active for key in self.keys()):
            raise ValueError(f"an active key named {name!r} exists already; revoke it first or pick another name")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.datetime.now(datetime.timezone.utc)
        with self.engine.begin() as db:
            row = db.execute(insert(_keys).values(name=name, digest=digest(token), created=now))
        key_id = row.inserted_primary_key[0]
        return KeyInfo(key_id, name, now, None), token

    def keys(self) -> list[KeyInfo]:
        """Every key, revoked ones included, oldest first."""
        with self.engine.connect() as db:
            rows = db.execute(select(_keys.c.id, _keys.c.name, _keys.c.created, _keys.c.revoked).order_by(_keys.c.id))
            return [KeyInfo(*row) for row in rows]

    def revoke(self, ref: str) -> KeyInfo:
        """Revoke the active key with this id or name; raises LookupError if there is none."""
        matches = [key for key in self.keys() if key.active and ref in (str(key.id), key.name)]
        if not matches:
            raise LookupError(f"no active key with id or name {ref!r}")
        by_id = [key for key in matches if str(key.id) == ref]
        key = (by_id or matches)[0]
        now = datetime.datetime.now(datetime.timezone.utc)
        with self.engine.begin() as db:
            db.execute(update(_keys).where(_keys.c.id == key.id).values(revoked=now))
        return KeyInfo(key.id, key.name, key.created, now)

    def check(self, token: str) -> Optional[KeyInfo]:
        """The key a token belongs to (revoked or not), or None for an unknown token."""
        with self.engine.connect() as db:
            row = db.execute(select(_keys.c.id, _keys.c.name, _keys.c.created, _keys.c.revoked)
                             .where(_keys.c.digest == digest(token))).first()
        return None if row is None else KeyInfo(*row)
