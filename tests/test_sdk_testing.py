"""agent.sdk.testing: a probe tested on its own, with the agent's loading, context and timeout.

Built-in probes (tcp against a local line server, http against a local aiohttp app) and small probes
defined here (module level, as an entry point needs) show what the tester does and refuses."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from aiohttp import web
from anyio.abc import SocketStream, TaskStatus
from anyio.streams.buffered import BufferedByteReceiveStream

from agent.sdk import (
    Check,
    InboundRequest,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
)
from agent.sdk.testing import (
    ConfigError,
    FakeClock,
    PluginError,
    ProbeTester,
    RecordingTracer,
    undeclared_metrics,
)
from plugins.heartbeat import HeartbeatProbe
from plugins.http import HttpProbe
from plugins.tcp import TcpProbe

from .helpers import serve

pytestmark = pytest.mark.anyio

TOKEN = "tok-4f1e2d3c-very-secret"


# ---------------------------------------------------------------- a line server on loopback


async def line_server(banner: bytes | None, *, task_status: TaskStatus[int]) -> None:
    """Greets with ``banner`` (or says nothing), then answers each line with ``ERR unknown <line>``."""

    async def handle(stream: SocketStream) -> None:
        async with stream:
            if banner is None:  # says nothing, ever
                await anyio.sleep_forever()
                return
            await stream.send(banner)
            reader = BufferedByteReceiveStream(stream)
            try:
                while line := await reader.receive_until(b"\r\n", 4096):
                    await stream.send(b"ERR unknown " + line + b"\r\n")
            except (anyio.IncompleteRead, anyio.BrokenResourceError):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener:
        task_status.started(listener.extra(anyio.abc.SocketAttribute.local_port))
        await listener.serve(handle)


@asynccontextmanager
async def running(banner: bytes | None) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        yield await tg.start(line_server, banner)
        tg.cancel_scope.cancel()


def tcp(port: int, **fields: Any) -> dict[str, Any]:
    return {"name": "line", "target": f"127.0.0.1:{port}", **fields}


# ---------------------------------------------------------------- built-in probes


async def test_a_builtin_probe_runs_once_with_the_agents_defaults() -> None:
    async with running(b"220 ready\r\n") as port, ProbeTester(TcpProbe) as tester:
        result = await tester.run(tcp(port, settings={"dialogue": [{"expect": "^220 "}]}))
        last = tester.last
    assert result.success, result.message
    assert set(result.phases) == {"resolve", "connect", "dialogue"}
    assert result.duration is not None and result.duration >= result.phases["connect"]
    assert last is not None
    # The check was loaded the way the agent loads a check file: type and defaults filled in.
    assert (last.check.type, last.check.interval, last.check.timeout) == ("tcp", 60.0, 10.0)
    assert last.context.check is last.check and last.context.region == "local"


async def test_settings_are_validated_by_the_probes_model() -> None:
    async with ProbeTester(TcpProbe) as tester:
        with pytest.raises(ConfigError, match=r"field 'settings.dialogue\[0\]': .*one of 'send', 'expect'"):
            await tester.run(tcp(1, settings={"dialogue": [{}]}))
        with pytest.raises(ConfigError, match=r"unknown field 'settings.tls_verify'"):
            await tester.run(tcp(1, settings={"tls_verify": False}))
        with pytest.raises(ConfigError, match=r"field 'timeout': the timeout \(2s\) must be below"):
            await tester.run(tcp(1, interval="2s", timeout="2s"))
        with pytest.raises(ConfigError, match=r"unknown probe type 'http'; available: tcp"):
            await tester.run(tcp(1, type="http"))
    assert tester.last is None


async def test_secrets_are_resolved_from_environ_and_redacted() -> None:
    dialogue = [{"expect": "^220 "}, {"send": "AUTH ${LINE_TOKEN}\r\n"}, {"expect": "^OK"}]
    environ = {"LINE_TOKEN": TOKEN, "VANTAGE_REGION": "eu-west-1"}
    async with running(b"220 ready\r\n") as port, ProbeTester(TcpProbe, environ=environ) as tester:
        result = await tester.run(tcp(port, interval="1s", timeout="300ms", settings={"dialogue": dialogue}))
        last = tester.last
    # The server quoted the token back (and went on waiting): the message says so without showing it.
    assert (result.reason, result.message) == (
        Reason.TIMEOUT,
        "no result within the timeout of 300ms (turn 3: waiting for a line matching '^OK' "
        "(1 line read, the last 'ERR unknown AUTH <redacted>'))",
    )
    assert last is not None and last.context.region == "eu-west-1"
    assert last.context.redact(f"x {TOKEN} y") == "x <redacted> y"
    with pytest.raises(ConfigError, match="LINE_TOKEN is not set"):
        async with ProbeTester(TcpProbe) as bare:
            await bare.run(tcp(port, settings={"dialogue": dialogue}))


async def test_the_checks_timeout_cuts_the_run_and_says_where() -> None:
    async with running(None) as port, ProbeTester(TcpProbe) as tester:
        check = tcp(port, interval="1s", timeout="150ms", settings={"dialogue": [{"expect": "^220 "}]})
        result = await tester.run(check)
    assert (result.reason, result.message) == (
        Reason.TIMEOUT,
        "no result within the timeout of 150ms "
        "(turn 1: waiting for a line matching '^220 ' (nothing read yet))",
    )


async def test_the_http_client_factory_times_traces_and_records_requests() -> None:
    seen: list[str | None] = []

    async def ok(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    async with serve(app) as port, ProbeTester(HttpProbe) as tester:
        result = await tester.run({"name": "api", "target": f"http://127.0.0.1:{port}/"})
        (request,) = tester.requests
        (span,) = tester.spans
        last = tester.last
    assert result.success, result.message
    assert {"connect", "processing"} <= set(result.phases)
    assert (request.method, request.status, request.port) == ("GET", 200, port)
    assert (span.name, span.client, span.ended) == ("GET", True, True)
    assert span.attributes["http.response.status_code"] == 200
    assert last is not None
    assert seen == [f"00-{last.tracer.trace_id}-{span.span_id:016x}-01"]


async def test_a_round_trip_probe_reads_the_inbox_on_the_fake_clock() -> None:
    clock = FakeClock()
    check = {
        "name": "nightly",
        "target": "nightly job",
        "settings": {"period": "1h", "token": "${JOB_TOKEN}"},
    }
    async with ProbeTester(HeartbeatProbe, clock=clock, environ={"JOB_TOKEN": TOKEN}) as tester:
        waiting = await tester.run(check)
        ping = InboundRequest(
            "heartbeat",
            "nightly",
            "GET",
            {},
            {"status": "ok"},
            b"",
            "127.0.0.1",
            clock.time(),
            clock.monotonic(),
        )
        tester.inbox.deliver(ping)
        clock.advance(600)
        fresh = await tester.run(check)
        clock.advance(3600)
        stale = await tester.run(check)
    assert waiting.success and waiting.attributes.get("vantage.heartbeat.first_period") is True
    assert fresh.success, fresh.message
    assert fresh.values["probe.heartbeat.age"] == 600.0
    assert (stale.reason, stale.values["probe.heartbeat.age"]) == (Reason.STALE, 4200.0)


# ---------------------------------------------------------------- probes made for these tests


class Empty(ProbeSettings):
    secret: str = ""


class StepProbe(Probe[Empty]):
    """Opens steps inside steps, fails one, and reports through a traceparent what it sent."""

    name = "steps"
    Settings = Empty

    async def run(self, check: Check, settings: Empty, ctx: ProbeContext) -> ProbeResult:
        headers: dict[str, str] = {}
        with ctx.step("login") as login:
            login.set_attribute("user", f"bob:{settings.secret}")
            with ctx.step("token") as token:
                token.inject(headers)
                token.add_event("refreshed", {"key": settings.secret})
        try:
            with ctx.step("fetch"):
                raise LookupError(f"no record for {settings.secret}")
        except LookupError:
            pass
        other = ctx.tracer.start_span("direct", client=True, start_time=5.0)
        other.end(6.0)
        return ProbeResult(success=True, attributes={"traceparent": headers["traceparent"]})


async def test_spans_and_steps_are_recorded_as_plain_data() -> None:
    async with ProbeTester(StepProbe, environ={"STEP_SECRET": TOKEN}) as tester:
        result = await tester.run({"name": "s", "target": "x", "settings": {"secret": "${STEP_SECRET}"}})
        login, token, fetch, direct = tester.spans
        steps = tester.steps
        last = tester.last
    assert steps == [login, token, fetch]
    assert [(s.name, s.step, s.parent_id) for s in steps] == [
        ("login", "login", None),
        ("token", "token", login.span_id),
        ("fetch", "fetch", None),
    ]
    assert login.attributes["user"] == "bob:<redacted>"
    assert [(e.name, e.attributes) for e in token.events] == [("refreshed", {"key": "<redacted>"})]
    assert (fetch.error_type, fetch.error_message) == ("LookupError", "no record for <redacted>")
    assert login.error_type is None and all(s.ended for s in steps)
    assert (direct.client, direct.parent_id, direct.start_time, direct.end_time) == (True, None, 5.0, 6.0)
    assert last is not None
    assert result.attributes["traceparent"] == f"00-{last.tracer.trace_id}-{token.span_id:016x}-01"
    assert TOKEN not in repr(tester.spans)


def test_a_tracer_refuses_a_span_it_did_not_start() -> None:
    mine, other = RecordingTracer(), RecordingTracer()
    span = other.start_span("elsewhere")
    with pytest.raises(TypeError), mine.use_span(span):
        pass


class Sleepy(ProbeSettings):
    wait: float = 30.0


class SleepyProbe(Probe[Sleepy]):
    """Waits on the context's clock, as a polling probe does."""

    name = "sleepy"
    Settings = Sleepy

    async def run(self, check: Check, settings: Sleepy, ctx: ProbeContext) -> ProbeResult:
        await ctx.clock.sleep(settings.wait)
        return ProbeResult(success=True, attributes={"woke": ctx.clock.time()})


async def test_a_fake_clock_moves_what_the_probe_reads_sleeps_on_and_its_deadline() -> None:
    clock = FakeClock(monotonic=50.0, wall=1_800_000_000.0)
    async with ProbeTester(SleepyProbe, clock=clock) as tester:
        quick = await tester.run({"name": "s", "target": "x", "interval": "60s", "settings": {"wait": 8}})
        assert (clock.monotonic(), clock.time()) == (58.0, 1_800_000_008.0)
        # 30 seconds of sleep against a 10s timeout: cut at the deadline, on the fake clock.
        slow = await tester.run({"name": "s", "target": "x", "interval": "60s", "settings": {"wait": 30}})
    assert quick.success, quick.message
    assert (quick.duration, quick.attributes["woke"]) == (8.0, 1_800_000_008.0)
    assert (slow.reason, slow.duration, clock.monotonic()) == (Reason.TIMEOUT, 10.0, 68.0)
    assert slow.message == "no result within the timeout of 10s (starting)"
    clock.set_wall(1_700_000_000.0)
    assert (clock.time(), clock.monotonic()) == (1_700_000_000.0, 68.0)
    with pytest.raises(ValueError):
        clock.advance(-1)


async def test_a_fake_clock_cancels_a_scope_when_the_test_moves_it_past_the_deadline() -> None:
    clock = FakeClock()
    reached: list[str] = []

    async def blocked() -> None:
        with clock.move_on_after(5) as scope:
            reached.append("waiting")
            await anyio.sleep_forever()  # the network, say: it does not move the clock
        reached.append(f"cut: {scope.cancelled_caught}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(blocked)
        await anyio.wait_all_tasks_blocked()
        clock.advance(4.9)
        await anyio.wait_all_tasks_blocked()
        assert reached == ["waiting"]
        clock.advance(0.1)
    assert reached == ["waiting", "cut: True"]


async def test_a_fake_clock_calls_its_timers_when_a_sleep_or_the_test_reaches_them() -> None:
    # Clock.call_later, the scheduler's deadline for a run: called once, never from inside
    # call_later, not at all once cancelled, and a sleep that would pass a timer stops at it.
    clock = FakeClock(monotonic=100.0)
    called: list[tuple[str, float]] = []
    clock.call_later(5, lambda: called.append(("first", clock.monotonic())))
    late = clock.call_later(7, lambda: called.append(("late", clock.monotonic())))
    cancelled = clock.call_later(6, lambda: called.append(("cancelled", clock.monotonic())))
    clock.call_later(0, lambda: called.append(("now", clock.monotonic())))
    assert called == []
    cancelled.cancel()
    await clock.sleep(30)  # stops at the first live timer, which is due at once
    assert called == [("now", 100.0)] and clock.monotonic() == 100.0
    await clock.sleep(30)
    assert called == [("now", 100.0), ("first", 105.0)] and clock.monotonic() == 105.0
    clock.advance(10)
    assert called[2:] == [("late", 115.0)]
    late.cancel()  # already called: nothing happens
    clock.advance(10)
    assert len(called) == 3


class CrashProbe(Probe[Empty]):
    name = "crash"
    Settings = Empty

    async def run(self, check: Check, settings: Empty, ctx: ProbeContext) -> ProbeResult:
        raise RuntimeError("a bug in the probe")


class UndeclaredProbe(Probe[Empty]):
    name = "undeclared"
    Settings = Empty
    metrics = (MetricSpec.gauge("probe.declared", "", "declared"),)

    async def run(self, check: Check, settings: Empty, ctx: ProbeContext) -> ProbeResult:
        return ProbeResult(success=True, values={"probe.declared": 1, "probe.forgotten": 2}, phases={"a": 1})


class Lax(ProbeSettings):
    model_config = {**ProbeSettings.model_config, "extra": "ignore"}


class LaxProbe(Probe[Lax]):
    name = "lax"
    Settings = Lax

    async def run(self, check: Check, settings: Lax, ctx: ProbeContext) -> ProbeResult:
        return ProbeResult(success=True)


class WrongReturnProbe(Probe[Empty]):
    name = "wrong_return"
    Settings = Empty

    async def run(self, check: Check, settings: Empty, ctx: ProbeContext) -> ProbeResult:
        return "yes"  # type: ignore[return-value]


async def test_a_crash_fails_the_test_with_its_traceback() -> None:
    async with ProbeTester(CrashProbe) as tester:
        with pytest.raises(RuntimeError, match="a bug in the probe"):
            await tester.run({"name": "c", "target": "x"})


async def test_broken_contracts_are_plugin_errors() -> None:
    async with ProbeTester(UndeclaredProbe) as tester:
        with pytest.raises(
            PluginError,
            match=r"undeclared metrics: phases \(the probe has no phase_metric\), probe.forgotten",
        ):
            await tester.run({"name": "u", "target": "x"})
        assert tester.last is not None  # what it returned can still be read
        assert undeclared_metrics(tester.probe, tester.last.result) == [
            "phases (the probe has no phase_metric)",
            "probe.forgotten",
        ]
    async with ProbeTester(LaxProbe) as tester:
        with pytest.raises(ConfigError, match="must forbid unknown fields"):
            await tester.run({"name": "l", "target": "x"})
    async with ProbeTester(WrongReturnProbe) as tester:
        with pytest.raises(PluginError, match="run\\(\\) returned str, not a ProbeResult"):
            await tester.run({"name": "m", "target": "x"})

    class Local(CrashProbe):
        name = "local"

    with pytest.raises(PluginError, match="define the probe class at module level"):
        ProbeTester(Local)


async def test_a_probe_is_loaded_from_its_entry_point() -> None:
    async with running(b"220 ready\r\n") as port:
        async with ProbeTester.from_entry_point("tcp", "plugins.tcp:TcpProbe") as tester:
            result = await tester.run(tcp(port))
        assert result.success, result.message
        with pytest.raises(PluginError, match="says its name is 'tcp'"):
            ProbeTester.from_entry_point("line", "plugins.tcp:TcpProbe")
