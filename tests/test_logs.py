"""The log writer: records dropped while stderr is behind are reported by the log itself."""

from __future__ import annotations

import io
import logging
import queue
import threading
import time

from agent.config.secrets import Redactor
from agent.logs import _Formatter, _QueueHandler, _Writer


class _HeldStream(io.StringIO):
    """A stderr that blocks every write until released, as a full pipe does."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()

    def write(self, text: str) -> int:
        assert self.released.wait(10), "the test never released the stream"
        return super().write(text)


def _wait_for_line(stream: io.StringIO, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in stream.getvalue():
        assert time.monotonic() < deadline, f"the writer never wrote {text!r}"
        time.sleep(0.01)


def test_dropping_is_logged_once_when_it_starts_and_once_with_the_count_when_it_stops() -> None:
    records: queue.Queue[logging.LogRecord | None] = queue.Queue(maxsize=2)
    handler = _QueueHandler(records)
    stream = _HeldStream()
    writer = _Writer(records, stream, _Formatter(Redactor(), json_lines=False), handler)
    writer.start()
    logger = logging.getLogger("vantage.test.logs")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for index in range(10):
            logger.warning("line %d", index)
        dropped = handler.dropped
        assert dropped >= 7  # two wait in the queue, at most one more is being written
        stream.released.set()
        _wait_for_line(stream, "log lines were dropped")
        logger.warning("after the writer caught up")
        records.put(None)
        writer.join(10)
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    started = [line for line in lines if "log lines are being dropped" in line]
    stopped = [line for line in lines if "log lines were dropped" in line]
    assert len(started) == 1 and "vantage.logs" in started[0], lines
    assert len(stopped) == 1 and f"{dropped} log lines were dropped" in stopped[0], lines
    assert lines.index(started[0]) < lines.index(stopped[0])
    assert lines[-1].endswith("after the writer caught up"), lines
    assert handler.dropped == dropped
