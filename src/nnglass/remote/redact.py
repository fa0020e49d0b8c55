"""Redact: API keys never reach a log line (websockets logs every request header at DEBUG level)."""
from __future__ import annotations

import logging
import re

__all__ = ["Redactor", "install"]

_SECRETS = re.compile(r"(?i)(x-api-key\W+)\S+|nng_[A-Za-z0-9_\-]+")
# loggers of the libraries that log request headers (a filter applies only to its own logger's records)
_LOGGERS = ("websockets.client", "websockets.server", "uvicorn.error", "uvicorn.access", "httpx", "httpcore")


class Redactor(logging.Filter):
    """Rewrites a record's message with every API key and X-API-Key header value replaced."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRETS.sub(lambda m: (m.group(1) or "nng_") + "<redacted>", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def install() -> None:
    """Put the redactor on the loggers that see request headers (once)."""
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, Redactor) for f in logger.filters):
            logger.addFilter(Redactor())
