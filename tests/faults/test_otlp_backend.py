"""A hostile OTLP backend cannot hurt the agent.

The backend below (plain sockets on loopback, so that it can break HTTP itself) refuses, hangs,
answers a 503 storm and then recovers, answers bytes that are not HTTP, answers 200 with a 256 MiB
body (streamed from one small buffer, never built), or trickles its answer a byte every half
second. Before this suite the agent read that body whole (1.2 GB of RSS for 1 GiB), a trickled
answer stalled its exports for good with nothing counted, ``/readyz`` said only "export failed", and
the SDK logged two lines per export per signal.

The first tests drive the agent's HTTP session for the exporters directly, one request per fault.
The others run ``vantage run`` as a user would (four agents at once, one per module fixture, so the
module stays short), each signal pointed at one hostile backend, and assert what the user is
promised: the check keeps its schedule and its result, ``/readyz`` names the cause of the failure
and since when, memory stays bounded, spans dropped by the full queue are counted, and the log has
one line per state change rather than one per export.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from agent.sdk.probe import MetricKind, MetricSpec
from agent.telemetry.providers import BoundedSession, ExportOutcome, build_resource, build_telemetry

from ..helpers import AgentProcess, Received, free_port, thread_server, wait_until

BODY = 256 << 20  # what the "huge" backend offers
RSS_BOUND_KB = 200_000  # an idle agent peaks near 80 MB; one that read the body would pass 260 MB
TRICKLED = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nX-Pad: " + b"p" * 120 + b"\r\n\r\n"
GARBAGE = b"\x00\x15\x03 SSH-2.0-this-is-not-http \xff\xfe\r\n\r\n"
SIGNALS = ("traces", "metrics")
SDK_NOISE = re.compile(r"Transient error|Failed to export|Shutdown in progress")


# ---------------------------------------------------------------- the hostile backend


class Backend:
    """An OTLP/HTTP backend on loopback that behaves as ``behaviour`` says (it may be changed live):

    ``hang`` reads the request and never answers; ``trickle`` sends a 200 answer a byte per 0.5 s;
    ``trickle-body`` sends its headers at once and its body a byte per 0.5 s; ``garbage`` answers
    bytes that are not HTTP; ``huge`` answers 200 with a body of BODY bytes and no length;
    ``huge-announced`` announces that length first; ``redirect`` is ``huge`` with a 307 (which
    ``requests`` would read whole to release the connection); ``503`` answers 503 (keeping the connection);
    ``close`` closes without answering; ``ok`` decodes the request and answers 200.
    """

    def __init__(self, behaviour: str, ssl_context: ssl.SSLContext | None = None) -> None:
        self.behaviour = behaviour
        self.requests: Counter[str] = Counter()
        self.connections = 0
        self.largest_send = 0  # the most body bytes a "huge" answer got out before the client quit
        self.received = Received()
        self._ssl = ssl_context
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def __enter__(self) -> Backend:
        self._threads[0].start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._threads[0].join(5)
        self._listener.close()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads[1:]:
            thread.join(5)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._open.add(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self._ssl.wrap_socket(raw, server_side=True) if self._ssl is not None else raw
            with conn:
                while not self._stop.is_set() and self._answer(conn):
                    pass
        except OSError:  # the client gave up (as it should) or the handshake failed
            pass
        finally:
            with self._lock:
                self._open.discard(raw)

    def _answer(self, conn: socket.socket) -> bool:
        """Read one request and answer it; False once the connection is done."""
        request = read_request(conn)
        if request is None:
            return False
        path, body = request
        with self._lock:
            self.requests[path] += 1
        behaviour = self.behaviour
        if behaviour == "hang":
            while conn.recv(65536):
                pass
            return False
        if behaviour in ("trickle", "trickle-body"):
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" if behaviour == "trickle-body" else b""
            conn.sendall(head)
            for byte in TRICKLED if not head else b"\x00" * 100:
                if self._stop.wait(0.5):
                    return False
                conn.sendall(bytes([byte]))
            return False
        if behaviour == "garbage":
            conn.sendall(GARBAGE)
            return False
        if behaviour == "close":
            return False
        if behaviour in ("huge", "huge-announced", "redirect"):
            length = f"Content-Length: {BODY}\r\n" if behaviour == "huge-announced" else ""
            status = "307 Temporary Redirect\r\nLocation: /elsewhere" if behaviour == "redirect" else "200 OK"
            conn.sendall(f"HTTP/1.1 {status}\r\nConnection: close\r\n{length}\r\n".encode())
            chunk, sent = memoryview(bytes(1 << 20)), 0
            try:
                while sent < BODY:
                    conn.sendall(chunk)
                    sent += len(chunk)
            finally:
                with self._lock:
                    self.largest_send = max(self.largest_send, sent)
            return False
        if behaviour == "503":
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            return True
        with self.received.lock:
            if path.endswith("/v1/traces"):
                self.received.traces.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
            else:
                self.received.metrics.append(metrics_service_pb2.ExportMetricsServiceRequest.FromString(body))
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")
        return True


def read_request(conn: socket.socket) -> tuple[str, bytes] | None:
    """One HTTP request with a Content-Length body (what the OTLP exporters send), or None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk or len(data) > 1 << 20:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        (int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0
    )
    while len(body) < length:
        chunk = conn.recv(min(65536, length - len(body)))
        if not chunk:
            return None
        body += chunk
    return lines[0].split(" ")[1], body


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# ---------------------------------------------------------------- the session, request by request


@pytest.mark.parametrize(
    ("behaviour", "cause"),
    [
        ("hang", "timeout"),
        ("trickle", "timeout"),
        ("trickle-body", "timeout"),
        ("garbage", "garbage"),
        ("close", "protocol"),
        ("huge", "oversized"),
        ("huge-announced", "oversized"),
        ("redirect", "oversized"),
        ("503", "http 503"),
    ],
)
def test_the_session_ends_each_hostile_answer_with_its_cause(behaviour: str, cause: str) -> None:
    with Backend(behaviour) as backend, BoundedSession() as session:
        try:
            response = session.post(f"{backend.url}/v1/traces", data=b"\x0a\x00", timeout=1.0)
        except requests.RequestException:
            response = None
        outcome = session.take_outcome()
    assert outcome is not None and outcome.cause == cause, outcome
    assert (response is not None) == (cause == "http 503")
    # The answer was left unread: a few MiB at most were in flight in the sockets' buffers.
    assert backend.largest_send < 32 << 20


def test_the_session_names_refused_and_tls_failures(ca: trustme.CA) -> None:
    with BoundedSession() as session:
        with pytest.raises(requests.ConnectionError):
            session.post(f"{closed_port_url()}/v1/traces", data=b"", timeout=1.0)
        outcome = session.take_outcome()
        assert outcome is not None and outcome.cause == "refused"

        # A certificate that the system's CAs do not vouch for.
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        with Backend("ok", ssl_context=context) as backend:
            with pytest.raises(requests.exceptions.SSLError):
                session.post(f"{backend.url}/v1/traces", data=b"", timeout=1.0)
        outcome = session.take_outcome()
        assert outcome is not None and outcome.cause == "tls" and "certificate" in outcome.detail


def test_a_retry_that_runs_out_of_time_does_not_hide_the_answer_before_it() -> None:
    """The SDK may retry a 503 with almost none of the export's budget left: the export failed
    because of the 503, not because of that last attempt's timeout."""
    with Backend("503") as storm, Backend("hang") as hung, BoundedSession() as session:
        assert session.post(f"{storm.url}/v1/traces", data=b"", timeout=1.0).status_code == 503
        with pytest.raises(requests.Timeout):
            session.post(f"{hung.url}/v1/traces", data=b"", timeout=0.05)
        with pytest.raises(requests.Timeout):
            session.post(f"{hung.url}/v1/traces", data=b"", timeout=0.0)
        assert session.take_outcome() == ExportOutcome("http 503", "HTTP 503 Service Unavailable")
        with pytest.raises(requests.Timeout):
            session.post(f"{hung.url}/v1/traces", data=b"", timeout=0.05)
        outcome = session.take_outcome()
    assert outcome is not None and outcome.cause == "timeout"


def test_the_session_keeps_connections_and_answers_when_all_is_well() -> None:
    request = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    with Backend("ok") as backend, BoundedSession() as session:
        for _ in range(3):
            response = session.post(f"{backend.url}/v1/traces", data=request, timeout=1.0)
            assert response.status_code == 200 and response.content == b""
            assert session.take_outcome() == ExportOutcome()
    assert backend.requests["/v1/traces"] == 3
    assert backend.connections == 1  # one kept-alive connection, as the SDK's own session does


def test_exports_through_the_sdk_count_causes_and_log_state_changes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK's exporters, built by build_telemetry, send through the session: /readyz's numbers
    and the log's state changes come from real failed exports, and the SDK's own lines are gone."""
    with Backend("503") as backend:
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
            "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5",
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        }
        for name, value in environ.items():
            monkeypatch.setenv(name, value)  # the SDK's exporters read os.environ
        telemetry = build_telemetry(environ, build_resource(environ, region="local", version="0"))
        tracer = telemetry.tracer_provider.get_tracer("test")
        counter = telemetry.tables.declare(MetricSpec("test.things", MetricKind.COUNTER, "", "Things"))

        def export_once() -> None:
            tracer.start_span("probe").end()
            counter.add(None, None, {}, 1)
            telemetry.flush(5)

        try:
            with caplog.at_level("INFO"):
                for _ in range(3):
                    export_once()
                health = telemetry.health()
                backend.behaviour = "ok"
                export_once()
                recovered = telemetry.health()
        finally:
            telemetry.shutdown(2)
    assert health["failed"] == {"traces": 3, "metrics": 3}
    for signal in SIGNALS:
        assert health["last_error"][signal]["cause"] == "http 503"
        assert health["failing"][signal]["failed_exports"] == 3
        assert health["failing"][signal]["endpoint"] == f"{backend.url}/v1/{signal}"
    assert recovered["failing"] == {} and recovered["exported"] == {"traces": 1, "metrics": 1}
    assert backend.received.spans() and backend.received.points("test.things")
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if SDK_NOISE.search(m)]
    ours = [r.getMessage() for r in caplog.records if r.name == "vantage.telemetry"]
    assert sorted(ours) == sorted(
        [
            *(f"{s} export to {backend.url}/v1/{s} failing: http 503" for s in SIGNALS),
            *(f"{s} export to {backend.url}/v1/{s} recovered after 3 failed exports" for s in SIGNALS),
        ]
    )


# ---------------------------------------------------------------- the agent against them


@dataclass
class Scenario:
    agent: AgentProcess
    urls: dict[str, str]  # signal -> the endpoint it exports to
    backends: dict[str, Backend]


@pytest.fixture(scope="module")
def fleet() -> Iterator[dict[str, Scenario]]:
    """Four agents at once, each signal of each pointed at one hostile backend."""

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ok", ok)
    plan = {
        "refused+garbage": (None, "garbage", {}),
        # A queue of 8 spans that a hung backend drains 2 at a time: spans are dropped.
        "hang+trickle": (
            "hang",
            "trickle",
            {"OTEL_BSP_MAX_QUEUE_SIZE": "8", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2"},
        ),
        "huge": ("huge", "huge", {}),
        "storm": ("503", "503", {}),
    }
    with thread_server(app) as target, contextlib.ExitStack() as stack:
        scenarios = {}
        for name, (traces, metrics, extra) in plan.items():
            backends: dict[str, Backend] = {}
            urls: dict[str, str] = {}
            for signal, behaviour in (("traces", traces), ("metrics", metrics)):
                if behaviour is None:
                    urls[signal] = f"{closed_port_url()}/v1/{signal}"
                    continue
                shared = next((b for b in backends.values() if b.behaviour == behaviour), None)
                backend = shared or stack.enter_context(Backend(behaviour))
                backends[signal] = backend
                urls[signal] = f"{backend.url}/v1/{signal}"
            agent = AgentProcess(
                [
                    {
                        "name": "local",
                        "type": "http",
                        "target": f"http://127.0.0.1:{target}/ok",
                        "interval": "500ms",
                        "timeout": "400ms",
                    }
                ],
                {
                    "OTEL_TRACES_EXPORTER": "otlp",
                    "OTEL_METRICS_EXPORTER": "prometheus,otlp",
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": urls["traces"],
                    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": urls["metrics"],
                    "OTEL_EXPORTER_OTLP_TIMEOUT": "1",
                    "OTEL_BSP_SCHEDULE_DELAY": "100",
                    "OTEL_METRIC_EXPORT_INTERVAL": "300",
                    "VANTAGE_LOG_RUNS": "false",
                    "VANTAGE_SHUTDOWN_TIMEOUT": "2s",
                    **extra,
                },
            )
            stack.callback(agent.kill)
            scenarios[name] = Scenario(agent, urls, backends)
        yield scenarios


def get(agent: AgentProcess, path: str) -> str | None:
    if agent.proc.poll() is not None:
        agent.kill()
        raise AssertionError(f"the agent exited with {agent.proc.returncode}:\n{agent.output}")
    try:
        with urllib.request.urlopen(agent.url(path), timeout=5) as response:
            text: str = response.read().decode()
            return text
    except OSError:
        return None


def telemetry(agent: AgentProcess) -> dict[str, Any] | None:
    body = get(agent, "/readyz")
    return None if body is None else dict(json.loads(body)["telemetry"])


def samples(agent: AgentProcess, family: str) -> dict[frozenset[tuple[str, str]], float]:
    """A family's samples by their labels, but ``region``: every series the agent writes, its own
    included, carries its region."""
    text = get(agent, "/metrics") or ""
    return {
        frozenset((k, v) for k, v in s.labels.items() if k != "region"): s.value
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for s in metric.samples
        if s.name.endswith("_total")
    }


def runs(agent: AgentProcess, result: str) -> float:
    return sum(v for labels, v in samples(agent, "probe_runs").items() if ("result", result) in labels)


def wait_for_failing(scenario: Scenario, signal: str, cause: str, at_least: int = 3) -> dict[str, Any]:
    """Wait until ``signal`` failed ``at_least`` exports in a row; check what /readyz says of it."""

    def failing() -> dict[str, Any] | None:
        state = telemetry(scenario.agent)
        if state is None or state["failing"].get(signal, {}).get("failed_exports", 0) < at_least:
            return None
        return state

    state: dict[str, Any] = wait_until(failing, timeout=30, interval=0.1)
    now = time.time()
    assert state["failing"][signal]["cause"] == cause, state
    assert state["failing"][signal]["endpoint"] == scenario.urls[signal]
    assert now - 60 < state["failing"][signal]["since"] <= now
    assert state["last_error"][signal]["cause"] == cause
    # /metrics may serve a rendering made up to a moment ago (agent/telemetry/exposition.py: FRESH).
    wait_until(
        lambda: (
            samples(scenario.agent, "vantage_export_failures").get(frozenset({("signal", signal)}), 0)
            >= at_least
        ),
        timeout=5,
        interval=0.1,
    )
    return state


def assert_keeps_probing(agent: AgentProcess) -> None:
    """The check keeps running, and export trouble is not a failed check."""
    before = runs(agent, "success")
    wait_until(lambda: runs(agent, "success") >= before + 3, timeout=20, interval=0.1)
    assert runs(agent, "failure") == 0


def assert_one_line_per_change(output: str, scenario: Scenario, changes: dict[str, list[str]]) -> None:
    """The log tells each state change of each signal once, in order, and nothing per export."""
    assert not SDK_NOISE.search(output), output
    for signal, expected in changes.items():
        prefix = f"{signal} export to {scenario.urls[signal]} "
        lines = [line for line in output.splitlines() if prefix in line]
        said = [re.sub(r".*" + re.escape(prefix) + r"([^\"]*).*", r"\1", line) for line in lines]
        assert said == expected, output


def finish(agent: AgentProcess) -> str:
    agent.kill()  # exit timing is the shutdown suite's business
    return agent.output


@pytest.mark.slow
def test_refused_and_garbage_answers_are_named_and_logged_once(fleet: dict[str, Scenario]) -> None:
    scenario = fleet["refused+garbage"]
    wait_for_failing(scenario, "traces", "refused")
    wait_for_failing(scenario, "metrics", "garbage")
    assert_keeps_probing(scenario.agent)
    output = finish(scenario.agent)
    assert_one_line_per_change(
        output, scenario, {"traces": ["failing: refused"], "metrics": ["failing: garbage"]}
    )


def test_a_hung_or_trickling_backend_times_out_each_export_and_spans_are_dropped(
    fleet: dict[str, Scenario],
) -> None:
    scenario = fleet["hang+trickle"]
    # A trickled answer (a byte every 0.5 s, a 1 s timeout) stalled the exports for minutes before.
    wait_for_failing(scenario, "metrics", "timeout")
    state = wait_for_failing(scenario, "traces", "timeout")
    assert_keeps_probing(scenario.agent)
    wait_until(lambda: samples(scenario.agent, "vantage_spans_dropped")[frozenset()] > 0, timeout=20)
    assert (telemetry(scenario.agent) or state)["dropped"]["traces"] > 0
    assert scenario.backends["metrics"].requests["/v1/metrics"] >= 3
    output = finish(scenario.agent)
    assert_one_line_per_change(
        output, scenario, {"traces": ["failing: timeout"], "metrics": ["failing: timeout"]}
    )


@pytest.mark.slow
def test_a_flood_of_an_answer_is_cut_off_and_memory_stays_bounded(fleet: dict[str, Scenario]) -> None:
    scenario = fleet["huge"]
    for signal in SIGNALS:
        wait_for_failing(scenario, signal, "oversized")
    assert_keeps_probing(scenario.agent)
    status = Path(f"/proc/{scenario.agent.proc.pid}/status").read_text()
    peak_kb = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1))  # type: ignore[union-attr]
    assert peak_kb < RSS_BOUND_KB, status
    # Each answer was abandoned after 64 KiB; only the sockets' buffers took more of it.
    backend = scenario.backends["traces"]
    assert backend.requests["/v1/traces"] >= 3 and backend.largest_send < 32 << 20
    output = finish(scenario.agent)
    assert_one_line_per_change(output, scenario, {s: ["failing: oversized"] for s in SIGNALS})


@pytest.mark.slow
def test_a_503_storm_is_logged_once_and_its_recovery_too(fleet: dict[str, Scenario]) -> None:
    scenario = fleet["storm"]
    backend = scenario.backends["traces"]
    for signal in SIGNALS:
        wait_for_failing(scenario, signal, "http 503", at_least=2)
    backend.behaviour = "ok"

    def recovered() -> dict[str, Any] | None:
        state = telemetry(scenario.agent)
        if state is None or state["failing"] or min(state["exported"].get(s, 0) for s in SIGNALS) < 2:
            return None
        return state

    state = wait_until(recovered, timeout=30, interval=0.1)
    assert {state["last_error"][s]["cause"] for s in SIGNALS} == {"http 503"}
    assert_keeps_probing(scenario.agent)
    assert any(span.name == "check local" for _, span in backend.received.spans())
    assert backend.received.points("probe.success")
    failed = state["failed"]
    output = finish(scenario.agent)
    assert_one_line_per_change(
        output,
        scenario,
        {s: ["failing: http 503", f"recovered after {failed[s]} failed exports"] for s in SIGNALS},
    )
