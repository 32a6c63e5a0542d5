"""``vantage once``: run the selected checks once, judge them, report, and exit with a status that a
CI pipeline can trust.

A gate must not pass by accident, so:

- an empty selection is an error of its own (exit 4), never "0 passed, 0 failed": no check in the
  file, ``--check`` or ``--label`` matching none, or every match running in another region or shard;
  a ``--check`` pattern that matches no check at all is one too (a typo in a pipeline);
- round trips are judged as ``vantage run`` judges them: the inbound endpoints are served, so an
  active webhook check waits for its delivery; a passive check (a passive webhook, a heartbeat),
  which one run cannot judge, is reported "not judged" (exit 3) unless ``--wait-passive`` gives it
  the time to receive a delivery, after which no delivery is a failure;
- ``${hook_url}`` without ``VANTAGE_PUBLIC_URL`` is a configuration error (exit 2) before anything
  runs, not a failed assertion afterwards.

Exit statuses (:class:`Exit`): 0 every selected check ran and passed; 1 a check failed; 2 the
configuration or the command line is wrong; 3 nothing failed but some check was not judged; 4 no
check was selected. A failure outranks "not judged".

The report is the table on standard output (messages whole), or ``--json``, and ``--junit PATH``
writes JUnit XML (one test case per check and region). Log lines go to standard error, all of them
before the report; while the checks run, a progress line goes to standard error (redrawn on a
terminal, where log lines are held until the end; a plain line every few seconds otherwise).
``-v`` adds, per check, the HTTP requests and responses (headers and bodies redacted), each
assertion, the probe's log lines and the waterfall of the run's spans, as blackbox_exporter's
``debug=true`` does.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import json
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TextIO
from xml.etree import ElementTree as ET

import anyio

from agent import __version__
from agent.config.checks import CheckEntry
from agent.config.secrets import Redactor, sensitive_header
from agent.errors import ConfigError
from agent.net.http import HttpClient, HttpClientFactory
from agent.schedule.sharding import select
from agent.sdk.assertions import clip
from agent.sdk.durations import format_duration
from agent.sdk.http import HttpExchange, HttpFailure, TLSOptions
from agent.sdk.probe import Delivery, ProbeResult, Reason, visible
from agent.sdk.urls import redact_url
from agent.telemetry.capture import ReadableSpan, SpanCollector

if TYPE_CHECKING:
    from agent.app import Agent
    from agent.config.settings import Config
    from agent.sdk.probe import ProbeContext

__all__ = [
    "Exit",
    "Options",
    "Outcome",
    "Verdict",
    "hook_url_problems",
    "passive",
    "run",
    "select_checks",
    "write_junit",
]

HOOK_URL = "${hook_url}"
_BODY_SHOWN = 1024  # characters of a body -v shows
_PROGRESS_EVERY = 5.0  # seconds between progress lines when standard error is not a terminal
_BAR = 40


class Exit(enum.IntEnum):
    """The exit statuses of ``vantage once``, documented in docs/ci.md and ``vantage once --help``."""

    PASSED = 0
    """Every selected check ran and passed."""
    FAILED = 1
    """At least one check failed."""
    CONFIG = 2
    """The configuration or the command line is wrong; nothing ran."""
    NOT_JUDGED = 3
    """Nothing failed, but at least one check could not be judged by one run (a passive check)."""
    NOTHING_SELECTED = 4
    """No check was selected: the gate would judge nothing."""


class Verdict(enum.StrEnum):
    """What ``once`` makes of a check's run."""

    PASSED = "passed"
    FAILED = "failed"
    NOT_JUDGED = "not_judged"


@dataclass(frozen=True, slots=True)
class Options:
    """The command line of ``vantage once``, parsed."""

    checks: tuple[str, ...] = ()
    """``--check`` glob patterns (a check is selected when its name matches one)."""
    labels: tuple[tuple[str, str], ...] = ()
    """``--label key=value`` (every one must match; the value may be a glob)."""
    json: bool = False
    junit: str | None = None
    verbose: bool = False
    wait_passive: float | None = None
    """``--wait-passive``: how long passive checks may wait for a delivery."""


# --- selection -------------------------------------------------------------------------------


def select_checks(config: Config, options: Options) -> tuple[list[CheckEntry], str | None]:
    """The checks ``once`` runs, or none and why, in the user's words.

    ``--check`` and ``--label`` select from the whole file; of those, the checks of this region,
    shard and worker are run (as ``vantage run`` would run them here)."""
    entries = config.entries
    settings = config.settings
    source = config.source
    if not entries:
        return [], f"{source} holds no check"
    chosen = entries
    steps: list[str] = [f"{_count(len(entries), 'check')} in {source}"]
    if options.checks:
        unmatched = [p for p in options.checks if not any(_matches(p, e.check.name) for e in entries)]
        if unmatched:
            names = ", ".join(repr(p) for p in unmatched)
            return [], (
                f"--check {names} matches no check in {source} "
                f"(names: {_some(sorted(e.check.name for e in entries))})"
            )
        chosen = [e for e in chosen if any(_matches(p, e.check.name) for p in options.checks)]
        steps.append(f"{len(chosen)} match --check")
    if options.labels:
        chosen = [e for e in chosen if all(_label_matches(e, k, v) for k, v in options.labels)]
        wanted = " ".join(f"{k}={v}" for k, v in options.labels)
        steps.append(f"{len(chosen)} match --label {wanted}" if chosen else f"none matches --label {wanted}")
        if not chosen:
            return [], "; ".join(steps)
    mine = select(chosen, settings.region, config.shard, config.worker)
    if not mine:
        regions = sorted({r for e in chosen for r in (e.check.regions or ())})
        where = f"region {settings.region} (VANTAGE_REGION)"
        if config.shard.count > 1:
            where += f", shard {config.shard.index}/{config.shard.count} (VANTAGE_SHARD)"
        elsewhere = f"; they run in {', '.join(regions)}" if regions else ""
        steps.append(f"none of them runs in {where}{elsewhere}")
        return [], "; ".join(steps)
    return mine, None


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern)


def _label_matches(entry: CheckEntry, key: str, value: str) -> bool:
    found = entry.check.labels.get(key)
    return found is not None and fnmatch.fnmatchcase(found, value)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _some(names: Sequence[str], shown: int = 8) -> str:
    more = f", … ({len(names) - shown} more)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def hook_url_problems(entries: Iterable[CheckEntry], public_url: str | None, source: str) -> list[str]:
    """Where a check uses ``${hook_url}`` while ``VANTAGE_PUBLIC_URL`` is unset, one line each.

    ``${hook_url}`` is built from that URL when a run sends it to the vendor; without it every run
    would fail, so ``validate`` and ``once`` refuse the configuration instead."""
    if public_url:
        return []
    problems = []
    for entry in entries:
        for path in _template_paths(entry.check.settings, "settings"):
            problems.append(
                f"{source}: check {entry.check.name!r}, field '{path}': ${{hook_url}} needs "
                "VANTAGE_PUBLIC_URL, the address at which senders reach this agent's /hooks endpoint"
            )
    return problems


def _template_paths(value: Any, path: str) -> Iterable[str]:
    if isinstance(value, str):
        if HOOK_URL in value:
            yield path
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _template_paths(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _template_paths(item, f"{path}[{index}]")


def passive(entry: CheckEntry) -> bool:
    """Whether a check waits for requests it does not cause (a heartbeat, a passive webhook): one
    run of it says only whether something came while the agent was up."""
    return entry.probe.inbound is not None and getattr(entry.settings, "mode", "passive") != "active"


# --- what -v keeps ---------------------------------------------------------------------------


@dataclass(slots=True)
class Exchange:
    """One HTTP request a probe made, as -v shows it: redacted already."""

    method: str
    url: str
    request_headers: list[tuple[str, str]]
    request_body: str
    status: int | None = None
    http_version: str = ""
    response_headers: list[tuple[str, str]] = field(default_factory=list)
    response_body: str = ""
    body_size: int = 0
    truncated: bool = False
    redirects: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    duration: float = 0.0
    tls: str = ""
    error: str = ""

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class Received:
    """One request to a check's inbound endpoint (a webhook delivery, a ping), as -v shows it."""

    method: str
    remote: str
    headers: list[tuple[str, str]]
    query: list[tuple[str, str]]
    body: str
    body_size: int
    problem: str | None
    """Why the check rejected it (its signature, its token), or None."""

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Journal:
    """What -v shows of each check's run: its HTTP exchanges, spans and log lines, by check name."""

    def __init__(self, redact: Redactor) -> None:
        self.redact = redact
        self.exchanges: dict[str, list[Exchange]] = {}
        self.spans: dict[int, list[ReadableSpan]] = {}
        """Ended spans by trace id; a run is one trace."""
        self.runs: dict[str, int] = {}
        """The trace id of each check's run."""
        self.logs: dict[str, list[str]] = {}
        self.received: dict[str, list[Received]] = {}
        self._lock = threading.Lock()

    def note_deliveries(self, name: str, deliveries: Iterable[Delivery]) -> None:
        """Keep what reached a check's inbound endpoint during the run."""
        self.received[name] = [
            Received(
                method=d.request.method,
                remote=d.request.remote,
                headers=[self.header(k, v) for k, v in d.request.headers.items()],
                query=[self.header(k, v) for k, v in d.request.query.items()],
                body=self.text(d.request.body),
                body_size=len(d.request.body),
                problem=visible(self.redact(d.problem)) if d.problem is not None else None,
            )
            for d in deliveries
        ]

    def header(self, name: str, value: str) -> tuple[str, str]:
        """A header as -v shows it: a credential's value withheld by its name, every other value
        with the agent's secrets redacted."""
        shown = "<redacted>" if sensitive_header(name) else clip(value, 500, self.redact)
        return visible(name), visible(shown)

    def learn(self, headers: Mapping[str, str]) -> None:
        """Take the values of credential headers a check sends as secrets: one written in the
        check file itself (not through ``${...}``) is unknown to the redactor, and a vendor may
        echo it back in a body or header that -v shows."""
        for name, value in headers.items():
            if not sensitive_header(name):
                continue
            self.redact.add(value, ephemeral=True)
            scheme = re.match(r"^[A-Za-z][\w-]*\s+(\S.*)$", value)  # Bearer <token>, Basic <pair>
            if scheme:
                self.redact.add(scheme.group(1), ephemeral=True)
            for cookie in value.split(";"):
                self.redact.add(cookie.partition("=")[2].strip(), ephemeral=True)

    def text(self, data: bytes | str | None) -> str:
        if not data:
            return ""
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return visible(clip(text, _BODY_SHOWN, self.redact))


class _Spans:
    """Keeps every span of every run for the waterfall (the light spans, built for extra processors)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def __call__(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        with self._journal._lock:
            self._journal.spans.setdefault(context.trace_id, []).append(span)
            if span.parent is None and span.attributes is not None:
                name = span.attributes.get("vantage.check.name")
                if isinstance(name, str):
                    self._journal.runs[name] = context.trace_id


class _CheckLogs(logging.Handler):
    """Keeps the log lines that name a check (the probe's own through ``ctx.log``, the recorder's)."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(logging.DEBUG)
        self._journal = journal

    def emit(self, record: logging.LogRecord) -> None:
        name = getattr(record, "check", None)
        if not isinstance(name, str):
            return
        try:
            line = f"{record.levelname.lower()} {record.name}: {record.getMessage()}"
        except Exception:
            return
        with self._journal._lock:
            self._journal.logs.setdefault(name, []).append(visible(self._journal.redact(line)))


class RecordingFactory(HttpClientFactory):
    """The agent's HTTP client factory, whose clients note each exchange in the journal."""

    def __init__(self, journal: Journal, *, user_agent: str) -> None:
        super().__init__(user_agent=user_agent)
        self.journal = journal

    def client(
        self,
        ctx: ProbeContext,
        *,
        tls: TLSOptions | None,
        fresh: bool,
        ip_family: str,
        proxy_url: str | None = None,
    ) -> HttpClient:
        inner = super().client(ctx, tls=tls, fresh=fresh, ip_family=ip_family, proxy_url=proxy_url)
        return _RecordingClient(inner, self.journal, ctx.check.name)  # type: ignore[return-value]


class _RecordingClient:
    """An HTTP client that passes each request on and keeps what -v shows of it."""

    def __init__(self, inner: HttpClient, journal: Journal, check: str) -> None:
        self._inner, self._journal, self._check = inner, journal, check

    async def __aenter__(self) -> _RecordingClient:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    async def request(self, method: str, url: str, **kwargs: Any) -> HttpExchange:
        journal = self._journal
        headers: Mapping[str, str] = kwargs.get("headers") or {}
        journal.learn(headers)
        params = kwargs.get("params")
        shown_url = url
        if params:
            # The query as sent, its values dropped as in spans (redact_url).
            from yarl import URL

            try:
                shown_url = str(
                    URL(url).update_query(
                        [(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])]
                    )
                )
            except (ValueError, TypeError):
                pass
        record = Exchange(
            method=method.upper(),
            url=visible(redact_url(shown_url, journal.redact)),
            request_headers=[journal.header(k, v) for k, v in headers.items()],
            request_body=journal.text(kwargs.get("data")),
        )
        with journal._lock:
            journal.exchanges.setdefault(self._check, []).append(record)
        try:
            exchange = await self._inner.request(method, url, **kwargs)
        except HttpFailure as failure:
            record.error = f"{failure.reason.value}: {clip(failure.message, 500, journal.redact)}"
            record.phases = {k: v for k, v in failure.phases.items() if v}
            if failure.response is not None:
                self._note(record, failure.response)
            raise
        self._note(record, exchange)
        return exchange

    def _note(self, record: Exchange, exchange: HttpExchange) -> None:
        journal = self._journal
        record.status = exchange.status
        record.http_version = exchange.http_version
        record.response_headers = [journal.header(k, v) for k, v in exchange.headers.items()]
        record.response_body = journal.text(exchange.body)
        record.body_size = len(exchange.body)
        record.truncated = exchange.truncated
        record.redirects = exchange.redirects
        record.phases = dict(exchange.phases)
        record.duration = exchange.duration
        if exchange.tls is not None:
            record.tls = f"{exchange.tls.version} {exchange.tls.cipher}".strip()
        if exchange.redirects:
            record.url = visible(redact_url(str(exchange.url), journal.redact))


# --- judging ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    """A check's run as ``once`` reports it."""

    entry: CheckEntry
    region: str
    verdict: Verdict
    result: ProbeResult | None
    reason: str = ""
    message: str = ""
    attempts: int = 0
    """Attempts of the run: 1, or more when a failed attempt was re-tested (the check's ``retries``)."""

    @property
    def name(self) -> str:
        return self.entry.check.name

    @property
    def duration(self) -> float:
        return (self.result.duration or 0.0) if self.result is not None else 0.0


def _outcome(agent: Agent, entry: CheckEntry, options: Options, waited: bool) -> Outcome:
    outcome = _judged(agent, entry, options, waited)
    state = agent.recorder.states.get(entry.check.name)
    outcome.attempts = state.attempts if state is not None else 0
    return outcome


def _judged(agent: Agent, entry: CheckEntry, options: Options, waited: bool) -> Outcome:
    redact = agent.config.redactor
    region = agent.config.settings.region
    state = agent.recorder.states.get(entry.check.name)
    result = state.last if state is not None else None
    if result is None:
        return Outcome(
            entry,
            region,
            Verdict.NOT_JUDGED,
            None,
            "",
            "no result: the run was discarded (the agent's event loop was starved) or cut short",
        )
    message = redact(result.message)
    reason = result.reason.value if result.reason is not None else ""
    if not result.success:
        return Outcome(entry, region, Verdict.FAILED, result, reason, message)
    if passive(entry) and not _delivered(agent, entry.check.name):
        kind = "ping" if entry.probe.inbound == "heartbeat" else "delivery"
        if waited:
            missing = Reason.STALE if entry.probe.inbound == "heartbeat" else Reason.NOT_DELIVERED
            rejected = _rejected(agent, entry.check.name)
            why = (
                f"; {_count(len(rejected), 'request')} rejected, the last: {redact(rejected[-1])}"
                if rejected
                else ""
            )
            return Outcome(
                entry,
                region,
                Verdict.FAILED,
                result,
                missing.value,
                f"no valid {kind} within {format_duration(options.wait_passive or 0)} (--wait-passive){why}",
            )
        return Outcome(
            entry,
            region,
            Verdict.NOT_JUDGED,
            result,
            "",
            f"passive check: no {kind} reached this run, and one run cannot tell whether one is due; "
            "--wait-passive DURATION waits for one",
        )
    return Outcome(entry, region, Verdict.PASSED, result, "", message)


def _delivered(agent: Agent, name: str) -> bool:
    return any(d.problem is None for d in agent.inbox.after(name, 0))


def _rejected(agent: Agent, name: str) -> list[str]:
    return [d.problem for d in agent.inbox.after(name, 0) if d.problem is not None]


async def _wait_for_deliveries(agent: Agent, names: Sequence[str], seconds: float) -> None:
    """Return when every check in ``names`` has a valid delivery, or after ``seconds``."""

    async def one(name: str) -> None:
        while not _delivered(agent, name):
            await agent.inbox.wait(name, agent.inbox.sequence(name))

    with anyio.move_on_after(seconds):
        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(one, name)


class Progress:
    """The progress line on standard error while checks run: redrawn in place on a terminal, a
    plain line every few seconds otherwise (CI logs), and nothing for a run shorter than that."""

    def __init__(self, stream: TextIO, agent: Agent, started: float) -> None:
        self._stream, self._agent, self._started = stream, agent, started
        self.tty = _isatty(stream)
        self.stage = "running"
        self._drawn = False

    def line(self) -> str:
        states = self._agent.recorder.states
        pending = [name for name, state in states.items() if state.last is None]
        done = len(states) - len(pending)
        elapsed = format_duration(round(time.monotonic() - self._started))
        waiting = f"; waiting for {_some(pending, 3)}" if pending else ""
        return f"vantage once: {done}/{len(states)} checks done{waiting} ({self.stage}, {elapsed})"

    async def run(self) -> None:
        every = 0.5 if self.tty else _PROGRESS_EVERY
        while True:
            await anyio.sleep(every)
            self.show()

    def show(self) -> None:
        try:
            if self.tty:
                width = _terminal_width(self._stream)
                self._stream.write("\r\x1b[K" + self.line()[: width - 1])
                self._drawn = True
            else:
                self._stream.write(self.line() + "\n")
            self._stream.flush()
        except (OSError, ValueError):
            pass

    def clear(self) -> None:
        if self._drawn:
            try:
                self._stream.write("\r\x1b[K")
                self._stream.flush()
            except (OSError, ValueError):
                pass


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _terminal_width(stream: TextIO) -> int:
    import os

    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 100


class _HeldLogs(logging.Handler):
    """Holds log records while the progress line is drawn on a terminal, and hands them to the
    real handlers at the end (beyond ``capacity`` held, at once: memory stays bounded)."""

    def __init__(self, targets: list[logging.Handler], capacity: int = 10_000) -> None:
        super().__init__()
        self._targets, self._capacity = targets, capacity
        self._held: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self._held) < self._capacity:
            self._held.append(record)
        else:
            self._pass(record)

    def _pass(self, record: logging.LogRecord) -> None:
        for target in self._targets:
            if record.levelno >= target.level:
                target.handle(record)

    def hand_over(self) -> None:
        """Pass the held records on (not ``release``: that is ``logging.Handler``'s lock)."""
        held, self._held = self._held, []
        for record in held:
            self._pass(record)


# --- the command -----------------------------------------------------------------------------


def run(
    config: Config,
    environ: Mapping[str, str],
    options: Options,
    *,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``vantage once``: select, run, judge, report; the exit status (:class:`Exit`)."""
    out = out or sys.stdout
    err = err or sys.stderr
    started_wall, started = time.time(), time.monotonic()
    selected, nothing = select_checks(config, options)
    if not selected:
        message = f"vantage once: no check selected: {nothing}"
        _report_nothing(config, options, message, out, err)
        return Exit.NOTHING_SELECTED
    problems = hook_url_problems(selected, config.settings.public_url, config.source)
    if problems:
        raise ConfigError("\n".join(problems))

    from agent.app import _backend, build_agent

    journal = Journal(config.redactor) if options.verbose else None
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    extra: dict[str, Any] = {}
    if journal is not None:
        extra = {
            "span_processors": [SpanCollector(_Spans(journal))],
            "http": RecordingFactory(journal, user_agent=f"Vantage/{__version__}"),
        }
    # Only the selection: the inbound endpoints then take requests for these checks alone.
    agent = build_agent(
        dataclasses.replace(config, entries=selected), environ, set_global_providers=True, **extra
    )
    progress = Progress(err, agent, started)
    held = _HeldLogs(handlers) if progress.tty else None
    capture = _CheckLogs(journal) if journal is not None else None
    _hook_logs(root, handlers, held, capture)
    try:
        waited = anyio.run(_judge, agent, options, progress, err, **_backend())
    finally:
        progress.clear()
        _unhook_logs(root, handlers, held, capture, level)
    outcomes = [_outcome(agent, entry, options, waited) for entry in agent.entries]
    if journal is not None:
        for entry in agent.entries:
            if entry.probe.inbound is not None:
                journal.note_deliveries(entry.check.name, agent.inbox.after(entry.check.name, 0))
    status = exit_status(outcomes)
    _flush_logs()
    took = time.monotonic() - started
    if options.json:
        document = report_json(outcomes, config, status, took, journal)
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        if journal is not None:
            for outcome in outcomes:
                out.write(debug_text(outcome, journal) + "\n")
        out.write(table(outcomes))
        out.write("\n" + summary(outcomes, took) + "\n")
    out.flush()
    if options.junit:
        write_junit(options.junit, outcomes, started_wall, took, config.redactor, journal=journal)
    return status


async def _judge(agent: Agent, options: Options, progress: Progress, err: TextIO) -> bool:
    """Run the checks once: the active ones first, then, after the wait ``--wait-passive`` asks
    for, the passive ones. Whether passive checks were waited for."""
    from agent.app import flush_telemetry

    settings = agent.config.settings
    later = [e.check.name for e in agent.entries if passive(e)]
    now = [e.check.name for e in agent.entries if not passive(e)]
    waited = False
    try:
        async with anyio.create_task_group() as tg:
            if any(entry.probe.inbound is not None for entry in agent.entries):
                port = await tg.start(agent.server.serve)
                inbound_port = agent.server.inbound_port or port
                where = f" (senders use {settings.public_url})" if settings.public_url else ""
                _say(err, f"vantage once: serving /hooks and /heartbeat on port {inbound_port}{where}")
            tg.start_soon(progress.run)
            if now:
                await agent.scheduler.run_once(set(now))
            if later and options.wait_passive:
                progress.stage = f"waiting up to {format_duration(options.wait_passive)} for deliveries"
                await _wait_for_deliveries(agent, later, options.wait_passive)
                waited = True
            if later:
                progress.stage = "running"
                await agent.scheduler.run_once(set(later))
            tg.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await agent.http.aclose()
            await flush_telemetry(agent.telemetry, settings.shutdown_timeout, shutdown=True)
    return waited


def _say(stream: TextIO, line: str) -> None:
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _hook_logs(
    root: logging.Logger,
    handlers: list[logging.Handler],
    held: _HeldLogs | None,
    capture: _CheckLogs | None,
) -> None:
    if held is not None:
        root.handlers[:] = [held]
    if capture is not None:
        # -v keeps the probes' debug lines for the report; standard error keeps its level.
        level = root.level
        for handler in handlers:
            if handler.level < level:
                handler.setLevel(level)
        if held is not None:
            held.setLevel(level)
        root.addHandler(capture)
        root.setLevel(logging.DEBUG)


def _unhook_logs(
    root: logging.Logger,
    handlers: list[logging.Handler],
    held: _HeldLogs | None,
    capture: _CheckLogs | None,
    level: int,
) -> None:
    root.handlers[:] = handlers
    root.setLevel(level)
    if held is not None:
        held.hand_over()


def _flush_logs() -> None:
    """Every log line written before the report, so that the two never interleave."""
    from agent.logs import close_logging

    close_logging(2.0)
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def exit_status(outcomes: Sequence[Outcome]) -> Exit:
    """A failure outranks "not judged", which outranks a pass; nothing at all is its own status."""
    if not outcomes:
        return Exit.NOTHING_SELECTED
    verdicts = {outcome.verdict for outcome in outcomes}
    if Verdict.FAILED in verdicts:
        return Exit.FAILED
    if Verdict.NOT_JUDGED in verdicts:
        return Exit.NOT_JUDGED
    return Exit.PASSED


def _report_nothing(config: Config, options: Options, message: str, out: TextIO, err: TextIO) -> None:
    _flush_logs()
    _say(err, message)
    if options.json:
        document = {
            "version": __version__,
            "region": config.settings.region,
            "exit_status": int(Exit.NOTHING_SELECTED),
            "error": message.removeprefix("vantage once: "),
            "summary": {"passed": 0, "failed": 0, "not_judged": 0, "total": 0},
            "results": [],
        }
        out.write(json.dumps(document, indent=2) + "\n")
    if options.junit:
        # A report with the error in it: a CI that reads the file shows why the gate failed,
        # instead of an empty (green) suite.
        suites = ET.Element("testsuites", name="vantage once", tests="1", failures="0", errors="1")
        suite = ET.SubElement(
            suites, "testsuite", name="vantage once", tests="1", failures="0", errors="1", skipped="0"
        )
        suite.set("time", "0")
        case = ET.SubElement(suite, "testcase", name="selection", classname="vantage.once", time="0")
        error = ET.SubElement(case, "error", type="nothing_selected", message=message)
        error.text = message
        _write_xml(options.junit, suites)


# --- reports ---------------------------------------------------------------------------------

_RESULT_WORDS = {Verdict.PASSED: "ok", Verdict.FAILED: "FAIL", Verdict.NOT_JUDGED: "NOT JUDGED"}


def table(outcomes: Sequence[Outcome]) -> str:
    """The table: one row per check (all of one region, which the summary names), messages
    whole (the last column is not padded); an ATTEMPTS column when a check was re-tested."""
    retested = any(outcome.attempts > 1 for outcome in outcomes)
    rows: list[tuple[str, ...]] = [("CHECK", "TYPE", "RESULT", "REASON", "DURATION", "MESSAGE")]
    if retested:
        rows[0] = ("CHECK", "TYPE", "RESULT", "ATTEMPTS", "REASON", "DURATION", "MESSAGE")
    for outcome in outcomes:
        attempts = (str(outcome.attempts) if outcome.attempts else "",) if retested else ()
        rows.append(
            (
                outcome.name,
                outcome.entry.check.type,
                _RESULT_WORDS[outcome.verdict],
                *attempts,
                outcome.reason,
                f"{outcome.duration * 1000:.0f}ms" if outcome.result is not None else "",
                outcome.message,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        lines.append((cells + "  " + row[-1]).rstrip())
    return "\n".join(lines) + "\n"


def _tally(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return {
        "passed": sum(o.verdict is Verdict.PASSED for o in outcomes),
        "failed": sum(o.verdict is Verdict.FAILED for o in outcomes),
        "not_judged": sum(o.verdict is Verdict.NOT_JUDGED for o in outcomes),
        "total": len(outcomes),
    }


def summary(outcomes: Sequence[Outcome], took: float) -> str:
    tally = _tally(outcomes)
    text = f"{tally['passed']} passed, {tally['failed']} failed"
    if tally["not_judged"]:
        text += f", {tally['not_judged']} not judged"
    region = f" in region {outcomes[0].region}" if outcomes else ""
    return f"{text}{region} ({format_duration(took)})"


def _assertions(result: ProbeResult | None, redact: Redactor) -> list[dict[str, Any]]:
    if result is None:
        return []
    return [
        {
            "assertion": redact(a.assertion),
            "passed": a.passed,
            "actual": redact(a.actual),
            "message": redact(a.message),
        }
        for a in result.assertions
    ]


def _steps(result: ProbeResult | None, redact: Redactor) -> list[dict[str, Any]]:
    if result is None:
        return []
    return [
        {
            "name": s.name,
            "success": s.success,
            "duration": round(s.duration, 6),
            "reason": s.reason.value if s.reason else None,
            "message": redact(s.message),
        }
        for s in result.steps
    ]


def report_json(
    outcomes: Sequence[Outcome], config: Config, status: Exit, took: float, journal: Journal | None
) -> dict[str, Any]:
    """The ``--json`` document: a summary and one object per check and region."""
    redact = config.redactor
    results = []
    for outcome in outcomes:
        result = outcome.result
        check = outcome.entry.check
        item: dict[str, Any] = {
            "check": check.name,
            "type": check.type,
            "region": outcome.region,
            "target": redact_url(check.target, redact),
            "labels": redact.deep(check.labels),
            "result": outcome.verdict.value,
            "reason": outcome.reason or None,
            "message": outcome.message,
            "duration": round(outcome.duration, 6),
            "attempts": outcome.attempts,
            "phases": {k: round(v, 6) for k, v in (result.phases if result else {}).items()},
            "assertions": _assertions(result, redact),
            "steps": _steps(result, redact),
        }
        if journal is not None:
            trace_id = journal.runs.get(check.name)
            item["trace_id"] = f"{trace_id:032x}" if trace_id else None
            item["exchanges"] = [e.as_json() for e in journal.exchanges.get(check.name, [])]
            item["spans"] = [_span_json(s) for s in _ordered(journal, check.name)]
            item["log"] = journal.logs.get(check.name, [])
            item["received"] = [r.as_json() for r in journal.received.get(check.name, [])]
        results.append(item)
    return {
        "version": __version__,
        "region": config.settings.region,
        "exit_status": int(status),
        "duration": round(took, 3),
        "summary": _tally(outcomes),
        "results": results,
    }


def _ordered(journal: Journal, name: str) -> list[ReadableSpan]:
    trace_id = journal.runs.get(name)
    if trace_id is None:
        return []
    return sorted(journal.spans.get(trace_id, []), key=lambda s: (s.start_time or 0, s.end_time or 0))


def _span_json(span: ReadableSpan) -> dict[str, Any]:
    return {
        "name": span.name,
        "start": (span.start_time or 0) / 1e9,
        "duration": ((span.end_time or 0) - (span.start_time or 0)) / 1e9,
        "status": span.status.status_code.name.lower(),
        "attributes": {
            k: v if isinstance(v, str | int | float | bool) else str(v)
            for k, v in (span.attributes or {}).items()
        },
    }


# --- -v --------------------------------------------------------------------------------------


def debug_text(outcome: Outcome, journal: Journal) -> str:
    """One check's run as -v shows it: requests and responses, assertions, steps, log lines and
    the waterfall of its spans."""
    check = outcome.entry.check
    redact = journal.redact
    result = outcome.result
    head = f"{_RESULT_WORDS[outcome.verdict]}{' ' + outcome.reason if outcome.reason else ''}"
    took = f" in {format_duration(outcome.duration)}" if result is not None else ""
    if outcome.attempts > 1:  # failed attempts re-tested (the check's retries)
        took += f", attempt {outcome.attempts}"
    lines = [f"=== {check.name} ({check.type}, region {outcome.region}): {head}{took}"]
    lines.append(f"target: {redact_url(check.target, redact)}")
    trace_id = journal.runs.get(check.name)
    if trace_id:
        lines.append(f"trace id: {trace_id:032x}")
    if outcome.message:
        lines.append(f"message: {outcome.message}")
    for index, exchange in enumerate(journal.exchanges.get(check.name, []), 1):
        lines.append(f"--- request {index}")
        lines.append(f"> {exchange.method} {exchange.url}")
        lines.extend(f"> {k}: {v}" for k, v in exchange.request_headers)
        if exchange.request_body:
            lines.append(f"> (body) {exchange.request_body}")
        if exchange.status is not None:
            redirects = f", after {_count(exchange.redirects, 'redirect')}" if exchange.redirects else ""
            tls = f", {exchange.tls}" if exchange.tls else ""
            lines.append(
                f"< HTTP/{exchange.http_version} {exchange.status} "
                f"({format_duration(exchange.duration)}{tls}{redirects})"
            )
            lines.extend(f"< {k}: {v}" for k, v in exchange.response_headers)
            cut = " (cut at the probe's max_body)" if exchange.truncated else ""
            if exchange.body_size:
                lines.append(f"< (body, {_count(exchange.body_size, 'byte')}{cut}) {exchange.response_body}")
            else:
                lines.append("< (no body)")
        if exchange.error:
            lines.append(f"! {exchange.error}")
        if exchange.phases:
            lines.append(
                "  phases: " + ", ".join(f"{k} {format_duration(v)}" for k, v in exchange.phases.items())
            )
    if outcome.entry.probe.inbound is not None:
        received = journal.received.get(check.name, [])
        lines.append(f"--- received at /{outcome.entry.probe.inbound}/{check.name}: {len(received)}")
        for index, request in enumerate(received, 1):
            verdict = f"rejected: {request.problem}" if request.problem is not None else "accepted"
            lines.append(f"<< {index}. {request.method} from {request.remote} ({verdict})")
            lines.extend(f"<< {k}: {v}" for k, v in request.headers)
            if request.query:
                lines.append("<< (query) " + "&".join(f"{k}={v}" for k, v in request.query))
            if request.body_size:
                lines.append(f"<< (body, {_count(request.body_size, 'byte')}) {request.body}")
    if result is not None and result.assertions:
        lines.append("--- assertions")
        for a in result.assertions:
            mark = "pass" if a.passed else "FAIL"
            actual = f"; actual: {redact(a.actual)}" if a.actual else ""
            # The message, where it says more than the assertion and the actual value do.
            told = a.message and not a.passed and (not a.actual or a.actual not in a.message)
            message = f"; {redact(a.message)}" if told else ""
            lines.append(f"  {mark}  expected: {redact(a.assertion)}{actual}{message}")
    if result is not None and result.steps:
        lines.append("--- steps")
        for s in result.steps:
            mark = "ok" if s.success else f"FAIL {s.reason.value if s.reason else ''}".rstrip()
            message = f": {redact(s.message)}" if s.message else ""
            lines.append(f"  {s.name}: {mark} in {format_duration(s.duration)}{message}")
    if result is not None and result.phases:
        lines.append("--- phases")
        lines.extend(_phase_bars(result.phases))
    spans = _ordered(journal, check.name)
    if spans:
        lines.append("--- waterfall")
        lines.extend(_waterfall(spans))
    logs = journal.logs.get(check.name, [])
    if logs:
        lines.append("--- log")
        lines.extend(f"  {line}" for line in logs)
    return "\n".join(lines) + "\n"


def _phase_bars(phases: Mapping[str, float]) -> list[str]:
    total = sum(phases.values()) or 1.0
    width = max(len(k) for k in phases)
    lines, start = [], 0.0
    for name, seconds in phases.items():
        left = round(start / total * _BAR)
        length = max(1 if seconds > 0 else 0, round(seconds / total * _BAR))
        bar = (" " * left + "#" * length).ljust(_BAR)[:_BAR]
        lines.append(f"  {name.ljust(width)} |{bar}| {format_duration(seconds)}")
        start += seconds
    return lines


def _waterfall(spans: Sequence[ReadableSpan]) -> list[str]:
    """Each span as a bar on the run's time line, indented under its parent."""
    first = min(s.start_time or 0 for s in spans)
    last = max(s.end_time or 0 for s in spans)
    total = max(last - first, 1)
    parents = {s.context.span_id: s.parent.span_id if s.parent else None for s in spans if s.context}

    def depth(span: ReadableSpan) -> int:
        level, parent = 0, span.parent.span_id if span.parent else None
        while parent is not None and level < 16:
            level, parent = level + 1, parents.get(parent)
        return level

    labels = [("  " * depth(s)) + s.name for s in spans]
    width = min(max(len(label) for label in labels), 40)
    lines = []
    for span, label in zip(spans, labels, strict=True):
        start, end = (span.start_time or 0) - first, (span.end_time or 0) - first
        left = min(_BAR - 1, round(start / total * _BAR))
        length = max(1, round((end - start) / total * _BAR))
        bar = (" " * left + "=" * length).ljust(_BAR)[:_BAR]
        failed = " ERROR" if span.status.status_code.name == "ERROR" else ""
        offset = format_duration(start / 1e9)
        lines.append(
            f"  {label[:width].ljust(width)} |{bar}| +{offset} {format_duration((end - start) / 1e9)}{failed}"
        )
        phases = {
            k.removeprefix("vantage.http.phase."): v
            for k, v in (span.attributes or {}).items()
            if k.startswith("vantage.http.phase.") and isinstance(v, int | float) and v
        }
        if phases:
            lines.append(
                "  "
                + " " * width
                + "   "
                + ", ".join(f"{k} {format_duration(float(v))}" for k, v in phases.items())
            )
    return lines


# --- JUnit -----------------------------------------------------------------------------------


def write_junit(
    path: str,
    outcomes: Sequence[Outcome],
    started: float,
    took: float,
    redact: Callable[[str], str],
    *,
    journal: Journal | None = None,
) -> None:
    """JUnit XML as GitHub Actions reporters, GitLab and Jenkins read it: one ``testsuite`` (this
    region), one ``testcase`` per check (``classname`` ``vantage.<region>.<type>``); a failure
    carries the reason as its ``type`` and the message; a check not judged is ``skipped``."""
    tally = _tally(outcomes)
    region = outcomes[0].region if outcomes else ""
    attributes = {
        "tests": str(tally["total"]),
        "failures": str(tally["failed"]),
        "errors": "0",
        "skipped": str(tally["not_judged"]),
        "time": f"{took:.3f}",
    }
    suites = ET.Element("testsuites", {"name": "vantage once", **attributes})
    suite = ET.SubElement(
        suites,
        "testsuite",
        {
            "name": f"vantage once (region {region})",
            "timestamp": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "hostname": socket.gethostname(),
            **attributes,
        },
    )
    for outcome in outcomes:
        check = outcome.entry.check
        case = ET.SubElement(
            suite,
            "testcase",
            name=f"{check.name} [{outcome.region}]",
            classname=f"vantage.{outcome.region}.{check.type}",
            time=f"{outcome.duration:.3f}",
        )
        details = _details(outcome, redact)
        if outcome.verdict is Verdict.FAILED:
            failure = ET.SubElement(
                case, "failure", type=outcome.reason or "failed", message=_xml_text(outcome.message)
            )
            failure.text = _xml_text(details)
        elif outcome.verdict is Verdict.NOT_JUDGED:
            ET.SubElement(case, "skipped", message=_xml_text(f"not judged: {outcome.message}"))
        if journal is not None:
            out = ET.SubElement(case, "system-out")
            out.text = _xml_text(debug_text(outcome, journal))
    _write_xml(path, suites)


def _details(outcome: Outcome, clean: Callable[[str], str]) -> str:
    """The body of a failure: its message, the failed assertions and steps."""
    lines = [f"{outcome.reason}: {outcome.message}"]
    result = outcome.result
    if result is not None:
        for a in result.assertions:
            if not a.passed:
                lines.append(
                    f"assertion failed: {clean(a.assertion)}; actual: {clean(a.actual)}; {clean(a.message)}"
                )
        for s in result.steps:
            if not s.success:
                lines.append(f"step {s.name}: {s.reason.value if s.reason else ''} {clean(s.message)}")
    return "\n".join(lines)


_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Text XML 1.0 can hold (messages have their control characters escaped already)."""
    return _XML_ILLEGAL.sub("\ufffd", text)


def _write_xml(path: str, root: ET.Element) -> None:
    ET.indent(root)
    try:
        ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    except OSError as exc:
        raise ConfigError(f"--junit: cannot write {path}: {exc.strerror}") from None
