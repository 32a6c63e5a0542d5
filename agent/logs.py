"""Logging as JSON lines or text, with every known secret removed from what is written.

Records are written to stderr by a daemon thread: a slow or blocked stderr (a full pipe) must never
stall the event loop that probes, nor hold the process at exit. When the writer falls that far
behind, records are dropped, and the writer says so itself, once when dropping starts and once,
with the count, when it has caught up. :func:`close_logging` gives the writer a bounded time to
write what is queued and says how many lines it abandoned.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

from agent.config.secrets import Redactor

__all__ = ["close_logging", "configure_logging"]

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_QUEUE_SIZE = 10_000
_EXIT_WAIT = 2.0  # seconds the writer gets at a normal interpreter exit


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
                **{
                    k: v if isinstance(v, str | int | float | bool | None) else str(v)
                    for k, v in extra.items()
                },
            }
            # Redacted before encoding: JSON escapes a secret's quotes, backslashes and non-ASCII
            # characters, and the escaped spelling would no longer match the secret.
            return json.dumps(self._redact.deep(doc))
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%H:%M:%S.%f")[:-3]
        line = f"{stamp} {record.levelname:<7} {record.name}: {message}"
        if "traceback" in extra:
            line += "\n" + extra["traceback"]
        return self._redact(line)


class _QueueHandler(logging.Handler):
    """Hands records to the writer thread; drops (and counts) them when it has fallen behind."""

    def __init__(self, records: queue.Queue[logging.LogRecord | None]) -> None:
        super().__init__()
        self.records = records
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        # Formatting happens in the writer thread; only make the record safe to hand over.
        try:
            record.msg, record.args = record.getMessage(), None
        except Exception:
            self.handleError(record)
            return
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        try:
            self.records.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer(threading.Thread):
    """Writes queued records to the stream until it reads the end marker (``None``), and says when
    ``handler`` starts dropping records and how many it dropped once the writer has caught up."""

    def __init__(
        self,
        records: queue.Queue[logging.LogRecord | None],
        stream: TextIO,
        fmt: logging.Formatter,
        handler: _QueueHandler,
    ) -> None:
        super().__init__(name="vantage-log-writer", daemon=True)
        self.records, self.stream, self.formatter, self.handler = records, stream, fmt, handler
        self.reported = 0  # records dropped before the current episode, already reported
        self.dropping = False

    def run(self) -> None:
        while (record := self.records.get()) is not None:
            self._write(record)
            self._report_drops()

    def _write(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.formatter.format(record) + "\n")
            if self.records.empty():
                self.stream.flush()
        except Exception:  # a closed or broken stderr loses lines, never the writer
            return

    def _report_drops(self) -> None:
        # Written here, not queued: while records are dropped the queue has no room for the notice.
        dropped = self.handler.dropped - self.reported
        if dropped and not self.dropping:
            self.dropping = True
            self._write(
                _notice(f"log lines are being dropped: more than {self.records.maxsize} wait for stderr")
            )
        if self.dropping and self.records.empty():
            self.dropping, self.reported = False, self.reported + dropped
            self._write(
                _notice(f"{dropped} log lines were dropped while stderr was behind; it has caught up")
            )


def _notice(message: str) -> logging.LogRecord:
    """A record of the log's own, made in the writer thread."""
    return logging.makeLogRecord(
        {"name": "vantage.logs", "levelno": logging.WARNING, "levelname": "WARNING", "msg": message}
    )


_handler: _QueueHandler | None = None
_writer: _Writer | None = None


def configure_logging(level: str, fmt: str, redactor: Redactor) -> None:
    """Send all logs to stderr in ``fmt`` (``json`` or ``text``), redacted.

    At most 10,000 records wait for the writer; beyond that they are dropped, and the log says so.
    """
    global _handler, _writer
    close_logging(1.0)
    if _writer is None and _handler is None:
        # The writer is a daemon thread, which interpreter exit would stop with lines still queued
        # (`vantage once` prints its table and returns): give it a bounded time to write them.
        atexit.register(close_logging, _EXIT_WAIT)
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(maxsize=_QUEUE_SIZE)
    _handler = _QueueHandler(records)
    _writer = _Writer(records, sys.stderr, _Formatter(redactor, fmt == "json"), _handler)
    _writer.start()
    root = logging.getLogger()
    root.handlers[:] = [_handler]
    root.setLevel(level.upper())
    # aiohttp's access log would log every probe of /metrics; keep it to warnings.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def close_logging(timeout: float) -> int:
    """Let the writer write what is queued for at most ``timeout`` seconds; the lines left unwritten.

    Never blocks longer than ``timeout``, however stuck stderr is: the writer is a daemon thread
    that the process leaves behind if it must.
    """
    global _writer
    writer = _writer
    if writer is None:
        return 0
    _writer = None
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        try:
            writer.records.put(None, timeout=max(0.0, deadline - time.monotonic()))
            break
        except queue.Full:
            if time.monotonic() >= deadline:
                return writer.records.qsize()
    writer.join(max(0.0, deadline - time.monotonic()))
    return writer.records.qsize() if writer.is_alive() else 0
