"""The composition root: builds the agent's parts from its configuration and runs them.

This is the only module that sets OpenTelemetry's global providers.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn

import anyio
from anyio.abc import TaskStatus
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor

from agent import __version__
from agent.config.checks import CheckEntry
from agent.config.maintenance import Open, Schedule
from agent.config.settings import Config
from agent.logs import close_logging
from agent.net.http import HttpClientFactory
from agent.process.handover import inherited_socket
from agent.reload import Reloader
from agent.schedule.scheduler import Scheduler
from agent.schedule.sharding import select
from agent.sdk.durations import format_duration, plural
from agent.sdk.probe import Clock, ProbeContext, SystemClock
from agent.server.inbound import Inbound, Route, inbound_checks, peer_route
from agent.server.inbox import Inbox
from agent.server.pages import local_pages
from agent.server.status import Server
from agent.state import ProbeStates
from agent.telemetry.maintenance import MaintenanceGauge
from agent.telemetry.providers import Telemetry, build_resource, build_telemetry
from agent.telemetry.recorder import Recorder, Run

__all__ = ["Agent", "InboundTable", "Shutdown", "build_agent", "run_agent", "serve"]

log = logging.getLogger("vantage")
_checks_log = logging.getLogger("vantage.checks")  # the recorder's: state changes, runs


@dataclass
class InboundTable:
    """What the inbound endpoints know: the checks of the region that take inbound requests,
    and which of them this process runs. A reload updates both in place (agent/reload.py)."""

    checks: dict[str, CheckEntry] = field(default_factory=dict)
    mine: set[str] = field(default_factory=set)
    served: bool = False
    """Whether this process serves ``/hooks`` and ``/heartbeat`` (decided at start-up)."""


@dataclass
class Agent:
    config: Config
    entries: list[CheckEntry]
    telemetry: Telemetry
    recorder: Recorder
    scheduler: Scheduler
    server: Server
    http: HttpClientFactory
    inbox: Inbox
    states: ProbeStates
    """Each check's probe state; a check removed from the configuration is dropped from it."""
    inbound: InboundTable = field(default_factory=InboundTable)
    reloader: Reloader | None = None
    maintenance: Schedule = field(default_factory=Schedule)
    """The maintenance windows of the checks this process runs; a reload replaces them."""
    maintenance_gauge: MaintenanceGauge | None = None

    def forget(self, name: str) -> None:
        """Drop everything the agent holds for a check that is no longer configured: its probe's
        state, its last result and series, its inbound deliveries (a reload, agent/reload.py,
        calls it once the check is out of the scheduler)."""
        self.states.drop(name)
        self.recorder.forget(name)
        self.inbox.drop(name)


def build_agent(
    config: Config,
    environ: Mapping[str, str],
    *,
    clock: Clock | None = None,
    resolve: Mapping[str, str] | None = None,
    set_global_providers: bool = False,
    span_processors: Sequence[SpanProcessor] = (),
    defer_exporters: bool = False,
    http: HttpClientFactory | None = None,
) -> Agent:
    """Wire the parts together; nothing runs yet.

    ``resolve`` maps names to addresses for the HTTP client (tests: names for TLS on loopback);
    with it, any other name fails as a DNS failure without a query. ``defer_exporters``: the
    OTLP/HTTP exporters are built when they first export (see :func:`build_telemetry`). ``http``
    replaces the HTTP client factory (``vantage once -v`` passes one that keeps each exchange for
    its report)."""
    settings = config.settings
    clock = clock or SystemClock()
    resource = build_resource(environ, region=settings.region, version=__version__, worker=config.worker)
    telemetry = build_telemetry(
        environ,
        resource,
        span_processors,
        redactor=config.redactor,
        trace_success_ratio=settings.trace_success_ratio,
        defer_exporters=defer_exporters,
    )
    if set_global_providers:
        trace.set_tracer_provider(telemetry.tracer_provider)
    recorder = Recorder(
        tables=telemetry.tables,
        spans=telemetry.spans,
        redactor=config.redactor,
        region=settings.region,
        clock=clock,
        log_runs=settings.log_runs,
        export_stats=telemetry.stats,
    )
    entries = select(config.entries, settings.region, config.shard, config.worker)
    recorder.register(entries)
    maintenance = Schedule(entries)
    gauge = MaintenanceGauge(telemetry.tables, maintenance, clock)
    gauge.register(entries)
    http = http or HttpClientFactory(user_agent=f"Vantage/{__version__}", resolve=resolve)
    check_log = logging.getLogger("vantage.probe")
    inbox = Inbox()
    # Per-check state lives here, not in the probes (one instance per type serves every check);
    # only the checks this replica runs keep any (a reload retain()s its new set the same way).
    states = ProbeStates()
    states.retain(entry.check.name for entry in entries)
    started, started_monotonic = clock.time(), clock.monotonic()

    def context(entry: CheckEntry, run: Run) -> ProbeContext:
        return ProbeContext(
            check=entry.check,
            region=settings.region,
            clock=clock,
            log=logging.LoggerAdapter(check_log, {"check": entry.check.name}),
            secrets=config.resolver,
            redact=config.redactor,
            tracer=run.tracer,
            http=http,
            state=states.of(entry.check.name),
            state_dir=settings.state_dir,
            inbox=inbox,
            public_url=settings.public_url,
            started=started,
            started_monotonic=started_monotonic,
        )

    scheduler = Scheduler(
        entries,
        recorder=recorder,
        context=context,
        clock=clock,
        region=settings.region,
        concurrency=settings.concurrency,
    )
    table = InboundTable(mine={entry.check.name for entry in entries})

    async def reload(cause: str) -> Mapping[str, Any]:
        assert agent.reloader is not None
        return (await agent.reloader.reload(cause)).as_json()

    server = Server(
        host=settings.host,
        port=settings.port,
        recorder=recorder,
        telemetry=telemetry,
        redactor=config.redactor,
        api_token=settings.api_token.get_secret_value() if settings.api_token else None,
        scheduler_alive=lambda: (scheduler.running, clock.monotonic() - scheduler.heartbeat),
        version=__version__,
        inbound=_inbound(config, table, inbox, recorder, clock),
        inbound_port=settings.inbound_port,
        max_body=int(settings.inbound_max_body),
        maintenance=partial(_in_maintenance, maintenance, clock),
        # A worker serves on the socket its supervisor bound for it (agent/process/handover.py).
        sock=inherited_socket(environ),
        pages=local_pages(
            recorder,
            config.redactor,
            token=settings.api_token.get_secret_value() if settings.api_token else None,
            region=settings.region,
            group_by=settings.status_group_by,
            trace_template=settings.trace_url_template,
            runs=settings.status_runs,
            state_dir=settings.state_dir,
            maintenance=partial(_in_maintenance, maintenance, clock),
            upcoming=partial(_next_maintenance, maintenance, clock),
        ),
        reload=reload,
    )
    agent = Agent(config, entries, telemetry, recorder, scheduler, server, http, inbox, states, table)
    agent.maintenance, agent.maintenance_gauge = maintenance, gauge
    agent.reloader = Reloader(agent, environ, clock=clock)
    return agent


def _in_maintenance(schedule: Schedule, clock: Clock, name: str) -> Open | None:
    """The maintenance window open for check ``name`` now, for the status API and pages."""
    return schedule.open(name, clock.time())


def _next_maintenance(schedule: Schedule, clock: Clock, name: str) -> Open | None:
    """The next maintenance window of check ``name``, for its page."""
    return schedule.next(name, clock.time())


def _inbound(
    config: Config, table: InboundTable, inbox: Inbox, recorder: Recorder, clock: Clock
) -> Inbound | None:
    """The inbound endpoints, when a check of this region takes inbound requests; they read
    ``table``, which a reload updates."""
    settings = config.settings
    table.checks.update(inbound_checks(config.entries, settings.region))
    if not table.checks:
        return None
    table.served = True
    mine = table.mine
    shard = config.shard

    def locate(entry: CheckEntry) -> Route | None:
        name = entry.check.name
        if name in mine:
            return None
        if config.worker.count == 1 and shard.count > 1:
            return peer_route(settings.peer_url, name, shard.count)
        return Route("")  # a worker: its supervisor routes requests to the right one

    return Inbound(
        entries=table.checks,
        locate=locate,
        inbox=inbox,
        clock=clock,
        rate=settings.inbound_rate,
        trusted=settings.trusted_networks(),
        count=recorder.inbound,
    )


async def flush_telemetry(telemetry: Telemetry, budget: float, *, shutdown: bool) -> None:
    """Flush (and optionally shut down) the exporters in a thread, abandoning them at ``budget``."""
    work = telemetry.shutdown if shutdown else telemetry.flush
    with anyio.move_on_after(budget) as scope:
        await anyio.to_thread.run_sync(work, budget, abandon_on_cancel=True)
    if scope.cancelled_caught:
        log.warning("telemetry was not flushed within %s; unsent data is dropped", format_duration(budget))


class Shutdown:
    """The shutdown budget: from the first SIGTERM or SIGINT, the whole process has
    ``VANTAGE_SHUTDOWN_TIMEOUT`` to stop.

    The steps share it in order (drain runs in flight, flush telemetry, write the last log lines),
    each with what the ones before left. Whatever still holds the process at the deadline (an
    exporter waiting on a backend that hangs, a log writer blocked on a full stderr pipe, a probe
    that ignores cancellation) is abandoned: a watchdog thread writes one line saying what, and
    ends the process with status 0, so that the orchestrator never has to kill it.
    """

    _LOG_RESERVE = 0.1  # the share of the budget kept for the last log lines

    def __init__(self, budget: float, *, exit: Callable[[int], Any] = os._exit) -> None:
        self.budget = budget
        self.deadline: float | None = None
        self.stage = "starting"
        self._exit = exit
        self._watchdog: threading.Thread | None = None

    def begin(self) -> None:
        """Start the clock (the first signal); idempotent."""
        if self.deadline is not None:
            return
        self.deadline = time.monotonic() + self.budget
        self._watchdog = threading.Thread(target=self._watch, name="vantage-shutdown", daemon=True)
        self._watchdog.start()

    def left(self, *, reserve: bool = True) -> float:
        """Seconds left of the budget (the whole budget before it started), less the log reserve."""
        kept = self.budget * self._LOG_RESERVE if reserve else 0.0
        if self.deadline is None:
            return self.budget - kept
        return max(0.0, self.deadline - time.monotonic() - kept)

    def finish(self, status: int = 0) -> None:
        """End the process: the last log lines within what is left, then exit without running
        interpreter teardown (the SDK's atexit hooks would export again, and thread joins wait)."""
        self.stage = "writing the last log lines"
        unwritten = close_logging(self.left(reserve=False) if self.deadline is not None else 1.0)
        _flush_stdout()
        if unwritten:
            _emergency(f"vantage: {unwritten} log lines were not written (stderr is blocked)")
        self._exit(status)

    def _watch(self) -> None:
        assert self.deadline is not None
        time.sleep(max(0.0, self.deadline - time.monotonic()))
        _emergency(
            f"vantage: the shutdown budget of {format_duration(self.budget)} is spent; "
            f"exiting now, abandoning: {self.stage}"
        )
        self._exit(0)


def _emergency(line: str) -> None:
    """Write one line to stderr without ever blocking (stderr may be a full pipe)."""
    try:
        os.set_blocking(2, False)
        os.write(2, (line + "\n").encode())
    except OSError:
        pass


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass


async def serve(
    agent: Agent,
    *,
    handle_signals: bool = True,
    shutdown: Shutdown | None = None,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server and the scheduler until SIGTERM/SIGINT (or cancellation), then shut down:
    stop ticking, drain runs in flight, flush telemetry, all within ``VANTAGE_SHUTDOWN_TIMEOUT``.

    SIGHUP reloads the checks, as ``POST /-/reload`` and a change of the checks file do
    (agent/reload.py).
    """
    shutdown = shutdown or Shutdown(agent.config.settings.shutdown_timeout, exit=_no_exit)
    try:
        async with anyio.create_task_group() as tg:
            port = await tg.start(agent.server.serve)
            log.info(
                "vantage %s listening on port %d; %s in region %s (shard %d/%d)",
                __version__,
                port,
                plural(len(agent.entries), "check"),
                agent.config.settings.region,
                agent.config.shard.index,
                agent.config.shard.count,
            )
            reloader = agent.reloader
            if reloader is not None:
                reloader.export()
            if agent.maintenance_gauge is not None:
                _checks_log.addFilter(agent.maintenance_gauge.note)
            if handle_signals:
                hangup = partial(tg.start_soon, reloader.reload, "SIGHUP") if reloader else None
                tg.start_soon(_watch_signals, agent.scheduler, shutdown, hangup)
            if reloader is not None and reloader.watching:
                tg.start_soon(reloader.watch)
            task_status.started(port)
            shutdown.stage = "running"
            await agent.scheduler.run(drain_timeout=shutdown.left() / 2)
            exporters = {*agent.telemetry.trace_exporters, *agent.telemetry.metric_exporters} - {"prometheus"}
            shutdown.stage = f"flushing telemetry ({', '.join(sorted(exporters)) or 'nothing to send'})"
            await flush_telemetry(agent.telemetry, max(0.1, shutdown.left()), shutdown=True)
            log.info("vantage stopped")
            tg.cancel_scope.cancel()
    finally:
        if agent.maintenance_gauge is not None:
            _checks_log.removeFilter(agent.maintenance_gauge.note)
        with anyio.CancelScope(shield=True), anyio.move_on_after(1):
            await agent.http.aclose()


def _no_exit(status: int) -> None:
    """The exit of an agent run inside another program (tests): nothing to end."""


async def _watch_signals(
    scheduler: Scheduler, shutdown: Shutdown, hangup: Callable[[], object] | None = None
) -> None:
    # The receiver stays open until shutdown is done: a second signal (Ctrl-C reaches a worker
    # and its supervisor both) must not kill the process before it has flushed.
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                if hangup is not None and not scheduler.stopping:
                    log.info("received SIGHUP; reloading the checks")
                    hangup()
                continue
            if scheduler.stopping:
                log.info("received %s; already stopping", name)
                continue
            log.info("received %s; stopping within %s", name, format_duration(shutdown.budget))
            shutdown.begin()
            shutdown.stage = "draining the runs in flight"
            scheduler.stop()


def run_agent(config: Config, environ: Mapping[str, str]) -> NoReturn:
    """``vantage run``: build the agent with global providers and run it on uvloop when available.

    The process ends here, within its shutdown budget (see :class:`Shutdown`)."""
    # The exporters are built when they first export: not before the first probe.
    agent = build_agent(config, environ, set_global_providers=True, defer_exporters=True)
    shutdown = Shutdown(config.settings.shutdown_timeout)
    # Everything built so far lives as long as the process: keep the cyclic collector from
    # walking it again and again (full collections were the agent's longest pauses). No
    # collection first: it found about 60 objects of garbage among 60,000 and cost 30-80 ms of
    # the start-up.
    gc.freeze()
    # Each run allocates a few hundred objects, nearly all freed by reference counting; at the
    # interpreter's default (a young collection every 700 allocations) the agent ran over a
    # thousand young collections a second at 1,000 probes/s. 20,000 cut the agent's CPU there by
    # about a tenth (docs/design-notes.md).
    gc.set_threshold(20_000, 10, 10)
    # Telemetry threads (rendering /metrics, encoding OTLP) share the interpreter lock with the
    # event loop; handing it back every millisecond rather than every five keeps probe starts
    # on time while they work.
    sys.setswitchinterval(0.001)
    anyio.run(partial(serve, agent, shutdown=shutdown), **_backend())
    shutdown.finish(0)
    raise AssertionError("unreachable")  # pragma: no cover - finish() ends the process


def _backend() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {"backend": "asyncio"}
    return {"backend": "asyncio", "backend_options": {"use_uvloop": True}}
