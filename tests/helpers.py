"""Test helpers: local servers on port 0, a fake clock, an OTLP receiver.

Tests give the HTTP client names without DNS by a map (``build_agent(..., resolve={"vendor.test":
"127.0.0.1"})``): libcurl answers them from it, and any other name fails as a DNS failure."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import grpc
import yaml
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from agent.config.settings import Config, load_config

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- configuration


def config_from(checks: list[dict[str, Any]] | dict[str, Any], **env: str) -> Config:
    """A Config from a check document and VANTAGE_* / other variables."""
    document = checks if isinstance(checks, dict) else {"checks": checks}
    environ = {"VANTAGE_CHECKS": yaml.safe_dump(document), "OTEL_TRACES_EXPORTER": "none", **env}
    return load_config(environ)


# ---------------------------------------------------------------- servers


@contextlib.asynccontextmanager
async def serve(app: web.Application, *, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Serve ``app`` on 127.0.0.1 with an ephemeral port; yields the port."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = int(runner.addresses[0][1])
    try:
        yield port
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()


# ---------------------------------------------------------------- fake clock


class _FakeTimer:
    """A timer of ``FakeClock.call_later``."""

    __slots__ = ("_timer",)

    def __init__(self, timer: list[Any]) -> None:
        self._timer = timer

    def cancel(self) -> None:
        self._timer[2] = None


class FakeClock:
    """A clock the test moves by hand: ``sleep`` waits, and ``move_on_after`` and ``call_later``
    fire, when the test has moved it far enough, so that tests drive timeouts as well as ticks."""

    def __init__(self, start: float = 1000.0, wall: float = 1_800_000_000.0) -> None:
        self.now = start
        self._wall = wall - start
        # (when, sequence, callback); a callback of None is a timer that was called off.
        self._timers: list[list[Any]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self._wall + self.now

    def _at(self, when: float, callback: Callable[[], object]) -> list[Any]:
        timer = [when, next(self._seq), callback]
        heapq.heappush(self._timers, timer)
        return timer

    async def sleep(self, seconds: float) -> None:
        event = anyio.Event()
        timer = self._at(self.now + seconds, event.set)
        try:
            await event.wait()
        finally:
            timer[2] = None  # cancelled while asleep: nothing left to wake

    @contextlib.contextmanager
    def move_on_after(self, seconds: float) -> Iterator[anyio.CancelScope]:
        """As ``anyio.move_on_after``, with the deadline on this clock."""
        scope = anyio.CancelScope()
        timer = self._at(self.now + seconds, scope.cancel)
        try:
            with scope:
                yield scope
        finally:
            timer[2] = None

    def call_later(self, seconds: float, callback: Callable[[], object]) -> _FakeTimer:
        """As ``loop.call_later``, on this clock: ``callback`` is called by ``advance``."""
        return _FakeTimer(self._at(self.now + seconds, callback))

    async def advance(self, seconds: float) -> None:
        """Move time forward, firing timers in order and letting every task settle in between."""
        target = self.now + seconds
        while True:
            await settle()
            while self._timers and self._timers[0][2] is None:
                heapq.heappop(self._timers)
            if not self._timers or self._timers[0][0] > target:
                break
            wake, _, callback = heapq.heappop(self._timers)
            self.now = max(self.now, wake)
            callback()
        self.now = target
        await settle()


_QUIET_TURNS = 3
"""Turns of the loop with every task waiting before ``settle`` believes it: what wakes a task may
be a plain callback still queued (a task's done callback, which wakes an anyio task group's host
a turn later), and only turning the loop runs it."""


async def settle() -> None:
    """Let every other task run until it waits on something (anyio's own helper polls every 100ms)."""
    this = asyncio.current_task()
    quiet = 0
    for _ in range(100_000):
        waiting = (
            task is this or (task._fut_waiter is not None and not task._fut_waiter.done())  # type: ignore[attr-defined]
            for task in asyncio.all_tasks()
        )
        quiet = quiet + 1 if all(waiting) else 0
        if quiet > _QUIET_TURNS:
            return
        await asyncio.sleep(0)
    raise RuntimeError("the tasks never settled")


# ---------------------------------------------------------------- OTLP receiver


@dataclass
class Received:
    """What the receiver decoded: export requests as official protobuf messages."""

    traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span with its resource attributes."""
        with self.lock:
            out = []
            for request in self.traces:
                for rs in request.resource_spans:
                    resource = attributes(rs.resource.attributes)
                    for ss in rs.scope_spans:
                        out.extend((resource, span) for span in ss.spans)
            return out

    def points(self, name: str) -> list[tuple[dict[str, Any], float]]:
        """Every data point of metric ``name``: (attributes, value or histogram count)."""
        with self.lock:
            out = []
            for request in self.metrics:
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            if metric.name != name:
                                continue
                            kind = metric.WhichOneof("data")
                            for point in getattr(metric, kind).data_points:
                                if kind == "histogram":
                                    value = float(point.count)
                                else:
                                    value = (
                                        point.as_double
                                        if point.HasField("as_double")
                                        else float(point.as_int)
                                    )
                                out.append((attributes(point.attributes), value))
            return out

    def metric_units(self) -> dict[str, str]:
        with self.lock:
            return {
                m.name: m.unit
                for request in self.metrics
                for rm in request.resource_metrics
                for sm in rm.scope_metrics
                for m in sm.metrics
            }


def attributes(kvs: Any) -> dict[str, Any]:
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


@contextlib.contextmanager
def otlp_http_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/HTTP (protobuf) receiver in a thread; yields its endpoint and what it received."""
    received = Received()

    async def traces(request: web.Request) -> web.Response:
        message = trace_service_pb2.ExportTraceServiceRequest.FromString(await request.read())
        with received.lock:
            received.traces.append(message)
        return web.Response(
            body=trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    async def metrics(request: web.Request) -> web.Response:
        message = metrics_service_pb2.ExportMetricsServiceRequest.FromString(await request.read())
        with received.lock:
            received.metrics.append(message)
        return web.Response(
            body=metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/v1/traces", traces)
    app.router.add_post("/v1/metrics", metrics)
    with thread_server(app) as port:
        yield f"http://127.0.0.1:{port}", received


@contextlib.contextmanager
def thread_server(app: web.Application, ssl_context: ssl.SSLContext | None = None) -> Iterator[int]:
    """Serve ``app`` from its own event loop in a thread, for tests that run the agent as a process."""
    ready: futures.Future[int] = futures.Future()
    stop = threading.Event()

    async def main() -> None:
        async with serve(app, ssl_context=ssl_context) as port:
            ready.set_result(port)
            await anyio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=anyio.run, args=(main,), daemon=True)
    thread.start()
    try:
        yield ready.result(timeout=10)
    finally:
        stop.set()
        thread.join(timeout=10)


@contextlib.contextmanager
def otlp_grpc_receiver() -> Iterator[tuple[str, Received]]:
    """An OTLP/gRPC receiver; yields its endpoint and what it received."""
    received = Received()

    class Traces(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            with received.lock:
                received.traces.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    class Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            with received.lock:
                received.metrics.append(request)
            return metrics_service_pb2.ExportMetricsServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Traces(), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(Metrics(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop(grace=None)


# ---------------------------------------------------------------- the agent as a process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AgentProcess:
    """``vantage run`` in a subprocess, with its stderr collected."""

    def __init__(self, checks: dict[str, Any] | list[dict[str, Any]], env: dict[str, str]) -> None:
        document = checks if isinstance(checks, dict) else {"checks": checks}
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "VANTAGE_CHECKS": yaml.safe_dump(document),
            "VANTAGE_PORT": str(self.port),
            "VANTAGE_HOST": "127.0.0.1",
            "VANTAGE_LOG_RUNS": "true",
            # Every run's trace is exported, as the tests of the export path expect; the sampling
            # of successful runs has its own tests (test_trace_sampling.py).
            "VANTAGE_TRACE_SUCCESS_RATIO": "1",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output = ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        self.output = out + err
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            out, err = self.proc.communicate()
            self.output = out + err


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test at ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def counter_values(agent: Any, family: str, label: str) -> dict[str, float]:
    """A counter's totals by one label, from the agent's /metrics rendering."""
    from prometheus_client.parser import text_string_to_metric_families

    text = agent.telemetry.render_prometheus().decode()
    return {
        sample.labels[label]: sample.value
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
