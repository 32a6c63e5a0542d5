"""Spans handed to a callback as they end: how ``vantage once -v`` draws a run's waterfall.

Outside ``agent.telemetry`` only the composition root imports OpenTelemetry; a command that wants
the spans of its runs takes them from here.
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

__all__ = ["ReadableSpan", "SpanCollector"]


class SpanCollector(SpanProcessor):
    """A span processor that passes each ended span to ``on_end``."""

    def __init__(self, on_end: Callable[[ReadableSpan], None]) -> None:
        self._on_end = on_end

    def on_end(self, span: ReadableSpan) -> None:
        self._on_end(span)
