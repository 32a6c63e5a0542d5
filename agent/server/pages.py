"""The status page (``GET /``) and each check's debug view (``GET /checks/{name}``).

Both are HTML built here from plain strings, every text escaped (check names, labels, messages
and headers come from configuration and from vendors), with no script at all: the pages refresh
themselves with ``<meta http-equiv="refresh">``, draw their sparklines and waterfalls as inline
SVG, and are served with a Content-Security-Policy that allows no script, no outside resource
and no form (``default-src 'none'; style-src 'unsafe-inline'``). A trace link is built from
``VANTAGE_TRACE_URL_TEMPLATE``, which settings validation holds to http(s), and a trace id that
is 32 hex digits.

The same JSON is served at ``/api/status`` and ``/api/status/{name}``: a supervisor of worker
processes (agent/process/workers.py) builds its pages from its workers' JSON (``WorkersSource``),
a single agent from its recorder and history (``LocalSource``).

Read-only. With ``VANTAGE_API_TOKEN`` set, every page wants the token: as the API takes it (an
``Authorization: Bearer`` header or ``?token=``), or from a cookie. Opening ``/?token=...`` once in
a browser sets that cookie (HttpOnly, SameSite=Strict) and redirects to the page without the token
in its address.
"""

from __future__ import annotations

import hmac
import html
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import anyio
import anyio.lowlevel
from aiohttp import web

from agent import __version__
from agent.config.secrets import Redactor
from agent.server.history import FLUSH_EVERY, History, HistoryStore
from agent.server.status import InMaintenance, authorized
from agent.telemetry.recorder import CheckState, Recorder

__all__ = ["LocalSource", "Pages", "StatusSource", "WorkersSource", "local_pages"]

log = logging.getLogger("vantage.server")

COOKIE = "vantage_token"
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_REFRESH_INDEX, _REFRESH_CHECK = 10, 30


class StatusSource(Protocol):
    """Where the pages' data comes from: this process, or a supervisor's workers."""

    async def overview(self) -> tuple[list[dict[str, Any]], list[str]]:
        """Every check's summary, and problems to show (a worker that did not answer)."""

    async def check(self, name: str) -> dict[str, Any] | None:
        """One check's summary with its runs, or None when no such check runs here."""


def _check_json(
    state: CheckState, redact: Redactor, maintenance: InMaintenance | None = None
) -> dict[str, Any]:
    check, last = state.entry.check, state.last
    found = maintenance(check.name) if maintenance is not None else None
    return {
        "maintenance": None if found is None else redact.deep(found.as_json()),
        "name": check.name,
        "type": check.type,
        "target": state.target,
        "interval": check.interval,
        "labels": redact.deep(dict(check.labels)),
        "runs": state.runs,
        "failures": state.failures,
        "consecutive_failures": state.consecutive_failures,
        "last_change": state.last_change,
        "confirmed": state.confirmed,
        "confirmed_since": state.confirmed_since,
        "flapping": state.flapping,
        "state_changes_last_hour": state.changes_last_hour,
        "attempts": state.attempts,
        "failure_threshold": check.failure_threshold,
        "last": None
        if last is None
        else {
            "time": state.last_time,
            "success": last.success,
            "reason": last.reason.value if last.reason else None,
            "message": redact(last.message),
            "duration": last.duration,
        },
    }


class LocalSource:
    """This process's checks: the recorder's state and the history."""

    def __init__(
        self,
        recorder: Recorder,
        history: History,
        redact: Redactor,
        maintenance: InMaintenance | None = None,
        upcoming: InMaintenance | None = None,
    ) -> None:
        self._recorder, self._history, self._redact = recorder, history, redact
        self._maintenance, self._upcoming = maintenance, upcoming

    async def overview(self) -> tuple[list[dict[str, Any]], list[str]]:
        history, redact = self._history, self._redact
        checks = []
        for i, (name, state) in enumerate(list(self._recorder.states.items())):
            if i and i % 200 == 0:
                await anyio.lowlevel.checkpoint()  # thousands of checks: let the probes' runs in between
            checks.append({**_check_json(state, redact, self._maintenance), **history.summary(name)})
        return checks, []

    async def check(self, name: str) -> dict[str, Any] | None:
        state = self._recorder.states.get(name)
        if state is None:
            return None
        history = self._history
        summary = _check_json(state, self._redact, self._maintenance)
        upcoming = self._upcoming(name) if self._upcoming is not None else None
        summary["next_maintenance"] = None if upcoming is None else self._redact.deep(upcoming.as_json())
        return {**summary, **history.summary(name), **history.runs(name)}


Gather = Callable[[str], Awaitable[list[tuple[int, str]]]]


class WorkersSource:
    """A supervisor's workers' checks, from each worker's ``/api/status``."""

    def __init__(self, gather: Gather) -> None:
        self._gather = gather

    async def overview(self) -> tuple[list[dict[str, Any]], list[str]]:
        checks: list[dict[str, Any]] = []
        problems = []
        for index, (status, body) in enumerate(await self._gather("/api/status")):
            try:
                if status != 200:
                    raise ValueError(body[:200] or f"HTTP {status}")
                checks.extend(json.loads(body)["checks"])
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"worker {index} did not answer ({exc}); its checks are not shown")
        return checks, problems

    async def check(self, name: str) -> dict[str, Any] | None:
        problem = None
        for index, (status, body) in enumerate(await self._gather(f"/api/status/{quote(name, safe='')}")):
            if status == 200:
                try:
                    found = json.loads(body)
                except ValueError as exc:
                    problem = f"worker {index} did not answer with JSON ({exc})"
                    continue
                if isinstance(found, dict):
                    return found
                problem = f"worker {index} did not answer with a JSON object"
        if problem is not None:
            raise web.HTTPBadGateway(text=f"{problem}; the check cannot be shown\n")
        return None


class Pages:
    """The routes of the status page, its debug views and their JSON."""

    def __init__(
        self,
        source: StatusSource,
        *,
        token: str | None,
        title: str,
        group_by: str = "",
        trace_template: str | None = None,
        history: History | None = None,
        names: Callable[[], Iterable[str]] = tuple,
        now: Callable[[], float] | None = None,
    ) -> None:
        self._source, self._token, self._title = source, token, title
        self._group_by, self._trace = group_by, trace_template
        self._history, self._names = history, names
        self._now = now or time.time

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/checks/{name}", self.check_page)
        app.router.add_get("/api/status", self.status)
        app.router.add_get("/api/status/{name}", self.status_check)

    async def run(self) -> None:
        """Keep the history: read back what was saved (with ``VANTAGE_STATE_DIR``), then every
        ``FLUSH_EVERY`` seconds let go of the history of removed checks and write what is new (in a
        thread), and write once more when cancelled."""
        history = self._history
        if history is None:
            return
        store = history.store
        try:
            if store is not None:
                await self._read_back(history)
            while True:
                await anyio.sleep(FLUSH_EVERY)
                history.retain(self._names())
                batch = history.collect()
                if batch is not None:
                    await anyio.to_thread.run_sync(history.write, batch)
        finally:
            if store is not None:
                batch = history.collect()
                with anyio.CancelScope(shield=True), anyio.move_on_after(5.0):
                    if batch is not None:
                        await anyio.to_thread.run_sync(history.write, batch, abandon_on_cancel=True)
                    await anyio.to_thread.run_sync(store.close, abandon_on_cancel=True)

    async def _read_back(self, history: History) -> None:
        """Take in the saved history; whatever the file holds, a warning at worst (the file never
        stops the agent: the store checks its rows, this is the last guard)."""
        try:
            saved = await anyio.to_thread.run_sync(history.read_saved, list(self._names()))
            history.merge(saved)
        except (ValueError, TypeError, OverflowError, KeyError, AttributeError) as exc:
            log.warning("VANTAGE_STATE_DIR: the saved status history cannot be taken in (%s); ignored", exc)

    # Access --------------------------------------------------------------------------------

    def _allowed(self, request: web.Request) -> bool:
        token = self._token
        if token is None or authorized(request, token):
            return True
        cookie = request.cookies.get(COOKIE, "")
        return hmac.compare_digest(cookie.encode("utf-8", "surrogatepass"), token.encode())

    def _guard(self, request: web.Request, *, page: bool) -> None:
        """Raise unless the request may see the pages; a page opened with a right ``?token=``
        sets the cookie and goes to its address without it."""
        if not self._allowed(request):
            if page:
                raise web.HTTPUnauthorized(
                    text=_unauthorized(self._title), content_type="text/html", headers=_HEADERS
                )
            raise web.HTTPUnauthorized(text="a valid bearer token is required\n")
        if page and self._token is not None and "token" in request.query:
            query = {k: v for k, v in request.query.items() if k != "token"}
            target = request.rel_url.with_query(query)
            response = web.HTTPFound(str(target), headers=_HEADERS)
            response.set_cookie(
                COOKIE, self._token, httponly=True, samesite="Strict", path="/", secure=request.secure
            )
            raise response

    # Handlers ------------------------------------------------------------------------------

    async def status(self, request: web.Request) -> web.Response:
        """``/api/status``: every check's summary, as the status page shows it."""
        self._guard(request, page=False)
        checks, problems = await self._source.overview()
        text = await anyio.to_thread.run_sync(_dumps, {"checks": checks, "problems": problems})
        return web.Response(text=text, content_type="application/json")

    async def status_check(self, request: web.Request) -> web.Response:
        """``/api/status/{name}``: one check's summary and runs, as its debug view shows them."""
        self._guard(request, page=False)
        found = await self._source.check(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="no such check\n")
        return web.json_response(found, dumps=_dumps)

    async def index(self, request: web.Request) -> web.Response:
        """``/``: every check, grouped by ``VANTAGE_STATUS_GROUP_BY``."""
        self._guard(request, page=True)
        checks, problems = await self._source.overview()
        # Plain data by now: rendered in a thread, off the loop the probes time themselves on.
        body = await anyio.to_thread.run_sync(
            render_index, checks, problems, self._title, self._group_by, self._now()
        )
        return _html(body)

    async def check_page(self, request: web.Request) -> web.Response:
        """``/checks/{name}``: one check's runs, and one run in full (``?run=TRACE_ID``)."""
        self._guard(request, page=True)
        name = request.match_info["name"]
        found = await self._source.check(name)
        if found is None:
            body = _page(f"{self._title}: no such check", f"<p>No check named {e(name)} runs here.</p>", 0)
            return _html(body, status=404)
        return _html(render_check(found, request.query.get("run", ""), self._title, self._trace, self._now()))


def local_pages(
    recorder: Recorder,
    redact: Redactor,
    *,
    token: str | None,
    region: str,
    group_by: str = "",
    trace_template: str | None = None,
    runs: int = 50,
    state_dir: Any = None,
    maintenance: InMaintenance | None = None,
    upcoming: InMaintenance | None = None,
) -> Pages:
    """The pages of a single agent (or worker): a history fed by ``recorder``'s hook."""
    store = HistoryStore(state_dir) if state_dir is not None else None
    history = History(redact, runs=runs, store=store)
    recorder.on_result = history.record
    return Pages(
        LocalSource(recorder, history, redact, maintenance, upcoming),
        token=token,
        title=f"Vantage · {region}",
        group_by=group_by,
        trace_template=trace_template,
        history=history,
        names=lambda: list(recorder.states),
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


def _html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8", headers=_HEADERS)


# Rendering ---------------------------------------------------------------------------------


def e(value: object) -> str:
    """``value`` as HTML text or attribute value."""
    return html.escape(str(value), quote=True)


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds == 0:
        return "0"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms" if seconds >= 0.01 else f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _ago(when: float | None, now: float) -> str:
    if not when:
        return "never"
    age = max(0.0, now - when)
    for size, unit in ((86_400, "d"), (3600, "h"), (60, "min")):
        if age >= size:
            return f"{age // size:.0f} {unit} ago"
    return f"{age:.0f} s ago"


def _stamp(when: float | None) -> str:
    if not when:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def _uptime(share: float | None) -> str:
    if share is None:
        return "-"
    percent = share * 100
    return "100%" if percent == 100 else f"{math.floor(percent * 100) / 100:.2f}%"


def _state(check: Mapping[str, Any]) -> str:
    """The confirmed state (``pending``, ``up``, ``down``), or the last run's from a worker that
    does not say it."""
    confirmed = check.get("confirmed")
    if confirmed in ("pending", "up", "down"):
        return str(confirmed)
    last = check.get("last")
    if not last:
        return "pending"
    return "up" if last.get("success") else "down"


def _unconfirmed(check: Mapping[str, Any], state: str) -> str:
    """Beside the state: flapping, and failed runs not yet enough to call an up check down."""
    notes = ""
    if check.get("flapping"):
        notes += ' <span class="flapping">flapping</span>'
    failed, threshold = check.get("consecutive_failures"), check.get("failure_threshold")
    if state != "down" and isinstance(failed, int) and isinstance(threshold, int) and 0 < failed < threshold:
        notes += f' <span class="muted">{failed} of {threshold} failed</span>'
    return notes


def _trace_link(template: str | None, trace_id: object) -> str:
    if not isinstance(trace_id, str) or not _TRACE_ID.fullmatch(trace_id) or trace_id == "0" * 32:
        return ""
    if template is None:
        return f'<code class="trace">{e(trace_id)}</code>'
    href = template.replace("{trace_id}", trace_id)
    return (
        f'<a class="trace" href="{e(href)}" rel="noopener noreferrer" target="_blank">'
        f"<code>{e(trace_id)}</code></a>"
    )


def sparkline(recent: list[list[Any]], width: int = 160, height: int = 28) -> str:
    """The latency of the last runs as an inline SVG line; failed runs as red dots."""
    points = [(float(t), float(d), bool(ok)) for t, d, ok in recent if isinstance(d, int | float)]
    if not points:
        return '<span class="muted">no runs yet</span>'
    top = max(d for _, d, _ in points) or 1.0
    step = width / max(1, len(points) - 1)
    coords = [
        (
            round(i * step if len(points) > 1 else width / 2, 1),
            round(height - 2 - (d / top) * (height - 4), 1),
        )
        for i, (_, d, _) in enumerate(points)
    ]
    line = " ".join(f"{x},{y}" for x, y in coords)
    dots = "".join(
        f'<circle cx="{x}" cy="{y}" r="2.2" class="fail"/>'
        for (x, y), (_, _, ok) in zip(coords, points, strict=True)
        if not ok
    )
    low = min(d for _, d, _ in points)
    label = f"latency of the last {len(points)} runs: {_duration(low)} to {_duration(top)}"
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{e(label)}"><title>{e(label)}</title>'
        f'<polyline points="{line}" fill="none" stroke-width="1.5"/>{dots}</svg>'
    )


_PHASE_ORDER = ("resolve", "connect", "tls", "processing", "transfer")


def waterfall(phases: Mapping[str, Any], total: float | None = None, *, label_width: int = 96) -> str:
    """A run's phases one after another, as bars on a shared time axis (inline SVG)."""
    items = [(k, float(v)) for k, v in phases.items() if isinstance(v, int | float) and v >= 0]
    if not items:
        return '<p class="muted">This run recorded no phases.</p>'
    order = {name: i for i, name in enumerate(_PHASE_ORDER)}
    items.sort(key=lambda item: order.get(item[0], len(order)))
    span = max(sum(v for _, v in items), total or 0.0) or 1.0
    label_w, bar_w, row = label_width, 440, 24
    height = row * len(items) + 22
    rows, start = [], 0.0
    for i, (name, seconds) in enumerate(items):
        y = i * row + 4
        x = label_w + start / span * bar_w
        w = max(1.0, seconds / span * bar_w)
        rows.append(
            f'<g class="phase phase-{e(name)}"><text x="0" y="{y + 13}">{e(name)}</text>'
            f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="16" rx="2"/>'
            f'<text x="{label_w + bar_w + 8}" y="{y + 13}">{e(_duration(seconds))}</text>'
            f"<title>{e(name)}: {e(_duration(seconds))} from {e(_duration(start))}</title></g>"
        )
        start += seconds
    axis_y = row * len(items) + 8
    ticks = "".join(
        f'<text class="tick" x="{label_w + f * bar_w:.1f}" y="{axis_y + 12}">{e(_duration(span * f))}</text>'
        for f in (0.0, 0.5, 1.0)
    )
    return (
        f'<svg class="waterfall" width="{label_w + bar_w + 80}" height="{height}" role="img" '
        f'aria-label="phases of the run">'
        f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + bar_w}" y2="{axis_y}"/>'
        f"{''.join(rows)}{ticks}</svg>"
    )


def _group_key(check: Mapping[str, Any], group_by: str) -> str:
    if not group_by:
        return ""
    labels = check.get("labels") or {}
    value = labels.get(group_by) if isinstance(labels, dict) else None
    return str(value) if value not in (None, "") else ""


def render_index(
    checks: list[dict[str, Any]], problems: list[str], title: str, group_by: str, now: float
) -> str:
    """The status page."""
    states = [_state(c) for c in checks]
    counts = {s: states.count(s) for s in ("up", "down", "pending")}
    groups: dict[str, list[dict[str, Any]]] = {}
    for check in sorted(checks, key=lambda c: str(c.get("name", ""))):
        groups.setdefault(_group_key(check, group_by), []).append(check)
    sections = []
    for key in sorted(groups, key=lambda k: (k == "", k)):
        members = groups[key]
        down = sum(_state(c) == "down" for c in members)
        if group_by:
            heading = (
                f"{e(group_by)}: {e(key)}" if key else f'<span class="muted">no {e(group_by)} label</span>'
            )
        else:
            heading = "Checks"
        badge = (
            f'<span class="badge down">{down} down</span>' if down else '<span class="badge up">all up</span>'
        )
        rows = "".join(_index_row(check, now) for check in members)
        sections.append(
            f'<section class="group"><h2>{heading} {badge}</h2>'
            '<table class="checks"><thead><tr><th>state</th><th>check</th><th>type</th>'
            '<th title="the share of runs that passed">24 h</th><th>7 d</th><th>latency</th>'
            "<th>last run</th><th>last failure</th></tr></thead>"
            f"<tbody>{rows}</tbody></table></section>"
        )
    warnings = "".join(f'<p class="problem">{e(p)}</p>' for p in problems)
    if not checks:
        sections.append('<p class="muted">This agent runs no checks.</p>')
    summary = (
        f'<p class="summary">{len(checks)} checks: <span class="count-up">{counts["up"]} up</span>, '
        f'<span class="count-down">{counts["down"]} down</span>, {counts["pending"]} pending</p>'
    )
    resting = sum(1 for c in checks if isinstance(c.get("maintenance"), dict))
    if resting:
        summary += f'<p class="summary"><span class="maintenance">{resting} in maintenance</span></p>'
    body = f"<header><h1>{e(title)}</h1>{summary}</header>{warnings}{''.join(sections)}"
    return _page(title, body, _REFRESH_INDEX)


def _index_row(check: Mapping[str, Any], now: float) -> str:
    name = str(check.get("name", ""))
    state = _state(check)
    last = check.get("last") or {}
    failure = check.get("last_failure")
    if failure:
        failed = (
            f'<span class="reason">{e(failure.get("reason") or "")}</span> '
            f'<span class="message">{e(failure.get("message") or "")}</span> '
            f'<span class="muted">{e(_ago(failure.get("time"), now))}</span>'
        )
    else:
        failed = '<span class="muted">none</span>'
    last_run = (
        f"{e(_ago(last.get('time'), now))}<br><span class='muted'>{e(_duration(last.get('duration')))}</span>"
        if last
        else '<span class="muted">not yet</span>'
    )
    return (
        f'<tr class="check {state}" data-check="{e(name)}">'
        f'<td><span class="state {state}">{state}</span>{_unconfirmed(check, state)}</td>'
        f'<td><a href="/checks/{e(quote(name, safe=""))}">{e(name)}</a>'
        f'<div class="target">{e(check.get("target", ""))}</div>{_maintenance_badge(check)}</td>'
        f"<td>{e(check.get('type', ''))}</td>"
        f'<td class="num">{e(_uptime(check.get("uptime_24h")))}</td>'
        f'<td class="num">{e(_uptime(check.get("uptime_7d")))}</td>'
        f"<td>{sparkline(check.get('recent') or [])}</td>"
        f'<td class="num">{last_run}</td>'
        f'<td class="failure">{failed}</td></tr>'
    )


def render_check(check: Mapping[str, Any], run: str, title: str, trace: str | None, now: float) -> str:
    """A check's debug view: its runs, and the one asked for (or the last) in full."""
    name = str(check.get("name", ""))
    state = _state(check)
    # A worker's answer or an old file may hold anything: what is not an object is left out.
    details: list[dict[str, Any]] = [d for d in check.get("details") or [] if isinstance(d, dict)]
    selected = next((d for d in details if d.get("trace_id") == run), None)
    failure = check.get("last_failure_detail")
    if not isinstance(failure, dict):
        failure = None
    if selected is None and failure and failure.get("trace_id") == run:
        selected = failure
    if selected is None and details:
        selected = details[0]
    labels = check.get("labels") or {}
    label_text = " ".join(f'<span class="label">{e(k)}={e(v)}</span>' for k, v in sorted(labels.items()))
    facts = (
        f"<dl class='facts'><dt>uptime 24 h</dt><dd>{e(_uptime(check.get('uptime_24h')))}</dd>"
        f"<dt>uptime 7 d</dt><dd>{e(_uptime(check.get('uptime_7d')))}</dd>"
        f"<dt>runs</dt><dd>{e(check.get('runs', 0))}</dd>"
        f"<dt>failures</dt><dd>{e(check.get('failures', 0))}</dd>"
        f"<dt>failing in a row</dt><dd>{e(check.get('consecutive_failures', 0))}</dd>"
        f"<dt>state since</dt><dd>{e(_ago(check.get('confirmed_since', check.get('last_change')), now))}</dd>"
        f"<dt>state changes 1 h</dt><dd>{e(check.get('state_changes_last_hour', 0))}"
        f"{' <span class=flapping>flapping</span>' if check.get('flapping') else ''}</dd>"
        f"<dt>attempts, last run</dt><dd>{e(check.get('attempts', 0))}</dd>"
        f"<dt>latency</dt><dd>{sparkline(check.get('recent') or [], 240, 36)}</dd></dl>"
    )
    parts = [
        '<nav><a href="/">← all checks</a></nav>',
        f'<header><h1>{e(name)} <span class="state {state}">{state}</span></h1>'
        f'<p class="target">{e(check.get("type", ""))} · {e(check.get("target", ""))} · every '
        f"{e(_duration(check.get('interval')))} {label_text}</p></header>",
        _maintenance_note(check),
        facts,
    ]
    if failure:
        parts.append(
            '<section class="last-failure"><h2>Last failure</h2>'
            f'<p><span class="reason">{e(failure.get("reason") or "")}</span> '
            f'<span class="message">{e(failure.get("message") or "")}</span></p>'
            f'<p class="muted">{e(_stamp(failure.get("time")))} ({e(_ago(failure.get("time"), now))}) '
            f"{_run_link(name, failure)}</p></section>"
        )
    if selected is not None:
        try:
            parts.append(_render_run(selected, trace, now))
        except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
            parts.append(
                '<section class="run"><h2>Run</h2><p class="message">This run\'s details are not of the '
                f"shape the page shows ({e(exc)}); its JSON is at "
                f"/api/status/{e(quote(name, safe=''))}.</p></section>"
            )
    parts.append(_render_runs(name, check.get("last_runs") or [], details, failure, trace, now))
    return _page(f"{name} · {title}", "".join(parts), _REFRESH_CHECK)


def _maintenance_badge(check: Mapping[str, Any]) -> str:
    """A badge when a maintenance window of the check is open, with its name and end."""
    window = check.get("maintenance")
    if not isinstance(window, dict):
        return ""
    about = f"{window.get('name', '')} until {window.get('until', '')}"
    reason = window.get("reason")
    return (
        f'<span class="state maintenance" title="{e(reason or about)}">maintenance</span> '
        f'<span class="muted">{e(about)}</span>'
    )


def _maintenance_note(check: Mapping[str, Any]) -> str:
    """The open maintenance window on a check's page: name, reason, since and until when; else the
    next one, if the check has one to come."""
    window = check.get("maintenance")
    if not isinstance(window, dict):
        upcoming = check.get("next_maintenance")
        if not isinstance(upcoming, dict):
            return ""
        return (
            f'<p class="muted">next maintenance window: {e(upcoming.get("name", ""))}, '
            f"{e(upcoming.get('since', ''))} to {e(upcoming.get('until', ''))}</p>"
        )
    reason = f" · {e(window['reason'])}" if window.get("reason") else ""
    return (
        '<p class="in-maintenance"><span class="state maintenance">maintenance</span> '
        f"<strong>{e(window.get('name', ''))}</strong>{reason} · since {e(window.get('since', ''))}"
        f" · until {e(window.get('until', ''))}</p>"
    )


def _run_link(name: str, run: Mapping[str, Any]) -> str:
    trace_id = run.get("trace_id")
    if not isinstance(trace_id, str) or not _TRACE_ID.fullmatch(trace_id):
        return ""
    return f'<a href="/checks/{e(quote(name, safe=""))}?run={e(trace_id)}">show this run</a>'


def _render_run(run: Mapping[str, Any], trace: str | None, now: float) -> str:
    ok = bool(run.get("success"))
    link = _trace_link(trace, run.get("trace_id"))
    outcome = "passed" if ok else f"failed: {run.get('reason') or ''}"
    head = (
        f'<section class="run"><h2>Run at {e(_stamp(run.get("time")))} '
        f'<span class="state {"up" if ok else "down"}">{e(outcome)}</span></h2>'
        f"<p>{e(_duration(run.get('duration')))} · {e(_ago(run.get('time'), now))}"
        f"{' · trace ' + link if link else ''}"
        "</p>"
    )
    if run.get("message"):
        head += f'<p class="message">{e(run.get("message"))}</p>'
    heading = "Phases" if run.get("phases") or not run.get("requests") else "Requests, one after another"
    parts = [head, f"<h3>{heading}</h3>", _run_waterfall(run)]
    assertions = run.get("assertions") or []
    if assertions:
        parts.append("<h3>Assertions</h3>" + _assertions(assertions))
    steps = run.get("steps") or []
    if steps:
        parts.append('<h3>Steps</h3><ol class="steps">' + "".join(_step(s) for s in steps) + "</ol>")
    requests = run.get("requests") or []
    if requests:
        parts.append("<h3>Requests</h3>" + "".join(_request(r) for r in requests))
    attributes = run.get("attributes") or {}
    if attributes:
        rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in sorted(attributes.items()))
        parts.append(
            f"<details><summary>Attributes ({len(attributes)})</summary>"
            f'<table class="kv">{rows}</table></details>'
        )
    parts.append("</section>")
    return "".join(parts)


def _run_waterfall(run: Mapping[str, Any]) -> str:
    """The run's phases; for a run without (a flow), its requests one after another."""
    phases = run.get("phases") or {}
    if not phases:
        requests = [r for r in run.get("requests") or [] if isinstance(r, Mapping)]
        if requests:
            rows = {
                f"{i + 1}. {r.get('method', '')} {r.get('status') or r.get('error') or ''}": r.get("duration")
                for i, r in enumerate(requests)
            }
            return waterfall(rows, run.get("duration"), label_width=150)
    return waterfall(phases, run.get("duration"))


def _assertions(assertions: Iterable[Any]) -> str:
    rows = []
    for a in assertions:
        if not isinstance(a, Mapping):
            rows.append(f"<tr><td colspan=4>{e(a)}</td></tr>")
            continue
        passed = bool(a.get("passed"))
        rows.append(
            f'<tr class="{"pass" if passed else "fail"}"><td>{"✔ passed" if passed else "✘ failed"}</td>'
            f"<td><code>{e(a.get('assertion', ''))}</code></td><td><code>{e(a.get('actual', ''))}</code></td>"
            f"<td>{e(a.get('message', ''))}</td></tr>"
        )
    return (
        '<table class="assertions"><thead><tr><th></th><th>assertion</th><th>actual</th><th>message</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


_STEP_FIELDS = ("name", "success", "duration", "reason", "message")


def _step(step: Any) -> str:
    if not isinstance(step, Mapping):
        return f"<li>{e(step)}</li>"
    ok = bool(step.get("success"))
    status = step.get("status_code", step.get("status"))
    head = (
        f'<li class="step {"pass" if ok else "fail"}"><span class="state {"up" if ok else "down"}">'
        f"{'passed' if ok else 'failed'}</span> <strong>{e(step.get('name', ''))}</strong>"
        f"{' · <code>' + e(step['request']) + '</code>' if step.get('request') else ''}"
        f"{' → HTTP ' + e(status) if status not in (None, '') else ''} · {e(_duration(step.get('duration')))}"
    )
    if step.get("reason") or step.get("message"):
        head += f'<div class="message">{e(step.get("reason") or "")} {e(step.get("message") or "")}</div>'
    extra = []
    for key, value in step.items():
        if key in _STEP_FIELDS or key in ("status_code", "status", "request") or value in (None, "", [], {}):
            continue
        if key == "assertions" and isinstance(value, list):
            extra.append(_assertions(value))
        elif isinstance(value, Mapping):
            rows = "".join(f"<tr><th>{e(k)}</th><td><code>{e(v)}</code></td></tr>" for k, v in value.items())
            extra.append(f'<div class="sub">{e(key)}</div><table class="kv">{rows}</table>')
        elif isinstance(value, list) and all(isinstance(v, Mapping) for v in value) and key == "steps":
            extra.append('<ol class="steps">' + "".join(_step(v) for v in value) + "</ol>")
        elif isinstance(value, list) and not any(isinstance(v, Mapping | list) for v in value):
            # A list of names (a step's ``extracted``: the names only, the values may be secrets).
            names = ", ".join(f"<code>{e(v)}</code>" for v in value)
            extra.append(f'<div class="sub">{e(key)}: {names}</div>')
        else:
            extra.append(f'<div class="sub">{e(key)}: <code>{e(value)}</code></div>')
    return head + "".join(extra) + "</li>"


def _request(request: Any) -> str:
    if not isinstance(request, Mapping):
        return f"<p>{e(request)}</p>"
    status = request.get("status")
    outcome = f"HTTP {status}" if status is not None else (request.get("error") or "no response")
    headers = request.get("headers") or []
    rows = "".join(
        f"<tr><th>{e(pair[0])}</th><td>{e(pair[1])}</td></tr>"
        for pair in headers
        if isinstance(pair, list | tuple) and len(pair) == 2
    )
    table = (
        f"<details><summary>response headers ({len(headers)})</summary>"
        f'<table class="kv headers">{rows}</table></details>'
        if headers
        else ""
    )
    version = request.get("version")
    return (
        f'<div class="request"><code>{e(request.get("method", ""))} {e(request.get("url", ""))}</code> → '
        f"{e(outcome)}{' · HTTP/' + e(version) if version else ''} · {e(_duration(request.get('duration')))}"
        f"{table}</div>"
    )


def _render_runs(
    name: str,
    runs: list[Any],
    details: list[dict[str, Any]],
    failure: Mapping[str, Any] | None,
    trace: str | None,
    now: float,
) -> str:
    full = {d.get("trace_id") for d in details}
    if failure:
        full.add(failure.get("trace_id"))
    rows = []
    for run in runs:
        if not isinstance(run, Mapping):
            continue
        ok = bool(run.get("success"))
        link = _run_link(name, run) if run.get("trace_id") in full else ""
        rows.append(
            f'<tr class="{"pass" if ok else "fail"}"><td>{e(_stamp(run.get("time")))}</td>'
            f'<td><span class="state {"up" if ok else "down"}">{"passed" if ok else "failed"}</span></td>'
            f"<td>{e(run.get('reason') or '')}</td><td class='num'>{e(_duration(run.get('duration')))}</td>"
            f"<td>{_trace_link(trace, run.get('trace_id'))}</td><td>{link}</td></tr>"
        )
    if not rows:
        return '<section><h2>Last runs</h2><p class="muted">No runs yet.</p></section>'
    return (
        f'<section class="runs"><h2>Last runs ({len(rows)})</h2><table class="runs"><thead><tr><th>time</th>'
        "<th>result</th><th>reason</th><th>duration</th><th>trace</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


def _unauthorized(title: str) -> str:
    body = (
        f"<h1>{e(title)}</h1><p>This agent's status page needs its API token "
        "(<code>VANTAGE_API_TOKEN</code>). "
        "Open <code>/?token=YOUR_TOKEN</code> once: a cookie keeps it for this browser. Programs send "
        "<code>Authorization: Bearer YOUR_TOKEN</code>.</p>"
    )
    return _page(title, body, 0)


_CSS = """
:root{color-scheme:light dark;--bg:#fbfbfc;--fg:#1d2430;--muted:#6b7380;--line:#e3e6eb;--up:#1a8a4a;
--down:#c8302c;--pending:#8a8f98;--bar:#3b6fd8;--card:#fff;--maint:#8a5cc8}
@media (prefers-color-scheme:dark){:root{--bg:#15181d;--fg:#e3e6eb;--muted:#9aa1ab;--line:#2b3038;
--card:#1c2027;--bar:#6d96ef}}
*{box-sizing:border-box}body{margin:0 auto;max-width:1200px;padding:20px 28px;background:var(--bg);
color:var(--fg);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
h1{font-size:22px;margin:4px 0}h2{font-size:17px;margin:22px 0 8px}h3{font-size:14px;margin:16px 0 6px;
text-transform:uppercase;letter-spacing:.04em;color:var(--muted)}a{color:var(--bar)}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line)}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;font-size:12px;color:var(--muted)}td.num{font-variant-numeric:tabular-nums;white-space:nowrap}
.muted{color:var(--muted)}.flapping{color:#b26a00;font-weight:600;font-size:12px}.target{color:var(--muted);font-size:12px;word-break:break-all}
.state{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff;
background:var(--pending)}.state.up{background:var(--up)}.state.down{background:var(--down)}
.state.maintenance{background:var(--maint)}.maintenance{color:var(--maint)}
.badge{font-size:12px;font-weight:500;margin-left:8px}.badge.up,.count-up{color:var(--up)}
.badge.down,.count-down{color:var(--down)}.reason{font-weight:600;color:var(--down)}
.message{word-break:break-word}.failure{max-width:360px;font-size:13px}
.spark polyline{stroke:var(--bar)}.spark .fail{fill:var(--down)}
.waterfall text{font-size:12px;fill:var(--fg)}.waterfall .tick{fill:var(--muted);font-size:11px}
.waterfall line{stroke:var(--line)}.waterfall rect{fill:var(--bar)}
.phase-resolve rect{fill:#8e6bd8}.phase-connect rect{fill:#2f9e8f}.phase-tls rect{fill:#d88a2f}
.phase-processing rect{fill:#3b6fd8}.phase-transfer rect{fill:#5fae3a}
dl.facts{display:grid;grid-template-columns:repeat(7,auto);gap:2px 18px;margin:12px 0}
dl.facts dt{font-size:12px;color:var(--muted);grid-row:1}dl.facts dd{margin:0;font-weight:600;grid-row:2}
.label{font-size:12px;background:var(--line);border-radius:4px;padding:1px 6px;margin-left:4px}
.problem{background:#fdecea;color:#8a1f1b;padding:8px 12px;border-radius:6px}
section.run,section.last-failure{background:var(--card);border:1px solid var(--line);border-radius:8px;
padding:4px 16px 14px;margin-top:18px}tr.fail td:first-child{color:var(--down)}
table.assertions td:first-child{white-space:nowrap}
ol.steps{padding-left:22px}ol.steps li{margin:6px 0}.sub{font-size:12px;color:var(--muted);margin-top:4px}
.request{margin:6px 0}table.kv th{width:30%;font-family:ui-monospace,monospace;font-weight:400}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12.5px;word-break:break-all}
footer{margin-top:28px;font-size:12px;color:var(--muted)}
"""


def _page(title: str, body: str, refresh: int) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    every = f"refreshes every {refresh} s · " if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        # An icon of its own, so that the browser asks the agent for none.
        '<link rel="icon" href="data:,">'
        f"{meta}<title>{e(title)}</title><style>{_CSS}</style></head><body>{body}"
        f"<footer>Vantage {e(__version__)} · read-only · {every}"
        'JSON: <a href="/api/status">/api/status</a></footer></body></html>'
    )
