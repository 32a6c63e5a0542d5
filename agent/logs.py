"""Logging as JSON lines or text, with every known secret removed from what is written."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from .secrets import Redactor

__all__ = ["configure_logging"]

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class _Formatter(logging.Formatter):
    def __init__(self, redactor: Redactor, json_lines: bool) -> None:
        super().__init__()
        self._redact, self._json = redactor, json_lines

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        if record.exc_info:
            extra["traceback"] = self.formatException(record.exc_info)
        if self._json:
            doc: dict[str, Any] = {
                "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": message,
                **extra,
            }
            return self._redact(json.dumps(doc, default=str))
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"{stamp} {record.levelname:<7} {record.name}: {message}"
        if "traceback" in extra:
            line += "\n" + extra["traceback"]
        return self._redact(line)


def configure_logging(level: str, fmt: str, redactor: Redactor) -> None:
    """Send all logs to stderr in ``fmt`` (``json`` or ``text``), redacted."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(redactor, fmt == "json"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log would log every probe of /metrics; keep it to warnings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
