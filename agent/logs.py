"""Logging as JSON lines or text, with every known secret removed from what is written."""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import queue
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
        elif record.exc_text:
            extra["traceback"] = record.exc_text
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


class _DroppingQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread; drops (and counts) them when it has fallen behind."""

    dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            type(self).dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # Formatting happens in the writer thread; only make the record safe to hand over.
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: logging.handlers.QueueListener | None = None


def configure_logging(level: str, fmt: str, redactor: Redactor) -> None:
    """Send all logs to stderr in ``fmt`` (``json`` or ``text``), redacted.

    Records are written by a thread: a slow or blocked stderr (a full pipe) must never stall the
    event loop that probes. At most 10,000 records wait; beyond that they are dropped.
    """
    global _listener
    if _listener is not None:
        _listener.stop()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(_Formatter(redactor, fmt == "json"))
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=10_000)
    _listener = logging.handlers.QueueListener(records, writer)
    _listener.start()
    atexit.register(_listener.stop)
    root = logging.getLogger()
    root.handlers[:] = [_DroppingQueueHandler(records)]
    root.setLevel(level.upper())
    # aiohttp's access log would log every probe of /metrics; keep it to warnings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
