"""The ``statuspage`` probe: is it the vendor or us? What the vendor's own status page declares.

It reads a vendor's public Atlassian Statuspage API, ``{target}/api/v2/summary.json``, one request
per run: the page's overall indicator, every component with its status (group members, and group
containers when asked), the unresolved incidents and the scheduled maintenances. The summary holds
what ``/api/v2/incidents/unresolved.json`` returns (the incidents still investigating, identified or
monitoring) and what ``components.json`` and ``status.json`` return, read at the same instant, so
the other endpoints are not asked: one request, one consistent view, a vendor's CDN asked once.

    - name: github-says
      type: statuspage
      target: https://www.githubstatus.com
      interval: 1m
      labels: {vendor: github}      # the label of the vendor's other checks
      settings:
        components: ["API Requests", "Webhooks", "Git *"]
        fail_on: partial_outage

The run fails with ``vendor_outage`` when a watched component's status is ``fail_on`` or worse
(``under_maintenance`` < ``degraded_performance`` < ``partial_outage`` < ``major_outage``), its
message naming the components and the incident that concerns them. A page that cannot be read
(HTML, JSON of another shape, a body over the cap) fails with ``protocol``; a configured name the
page does not have fails with ``assertion``, saying which names it lacks and what comes close.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from agent.sdk import (
    AttributeValue,
    Check,
    Event,
    HttpFailure,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Redactor,
    Sample,
    TLSOptions,
    clip,
)

from ._toolkit.net import check_proxy_url
from ._toolkit.verdict import judge, validate_http_url

__all__ = ["STATUSES", "StatuspageProbe", "StatuspageSettings"]

SUMMARY_PATH = "/api/v2/summary.json"
MAX_BODY = 4 << 20
"""A summary of a page with hundreds of components is well under a megabyte."""
MAX_COMPONENTS = 200
"""Components exported as ``probe_vendor_status`` series, per check: the first in the page's order."""
MAX_EVENTS = 20
"""Incidents and maintenances recorded as span events, per run."""
MAX_NAME = 120
"""Characters of a component's name kept in its label, and of an incident's name in a message."""

STATUSES = {
    "operational": 0,
    "under_maintenance": 1,
    "degraded_performance": 2,
    "partial_outage": 3,
    "major_outage": 4,
}
"""A component's status as ``probe_vendor_status`` exports it: the higher, the worse."""
INDICATORS = {"none": 0, "minor": 1, "major": 2, "critical": 3}
"""The page's indicator as ``probe_vendor_indicator`` exports it (``maintenance``: see ``_indicator``)."""
# A maintenance in progress; "scheduled" is still to come and "completed" is over.
_MAINTENANCE_ACTIVE = frozenset({"in_progress", "verifying"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
"""Characters folded out of the vendor's words: a name is a label value and part of a log line."""
_WORDS = {
    "under_maintenance": "maintenance",
    "degraded_performance": "degraded performance",
    "partial_outage": "a partial outage",
    "major_outage": "a major outage",
}

FailOn = Literal["under_maintenance", "degraded_performance", "partial_outage", "major_outage"]


class StatuspageSettings(ProbeSettings):
    """Settings of a ``statuspage`` check."""

    components: tuple[str, ...] = ()
    """The components to watch, by name or glob (``EU / *`` for a group's members); empty: all."""
    groups: bool = False
    """Also watch and export the group containers themselves, not only their members."""
    fail_on: FailOn = "partial_outage"
    """The least severe status of a watched component that fails the check."""
    ignore_maintenance: bool = False
    """A component in one of the vendor's maintenances in progress does not fail the check, whatever
    its status (some vendors mark planned downtime as an outage)."""
    tls: TLSOptions = Field(default_factory=TLSOptions)
    proxy_url: str | None = None
    """An ``http://`` or ``https://`` proxy for the request; credentials in it are secrets."""

    @field_validator("components")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name.strip() for name in value):
            raise ValueError("a component's name cannot be empty")
        if len(set(value)) != len(value):
            raise ValueError("a component is named twice")
        return value

    @field_validator("proxy_url")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        return check_proxy_url(value)


class _Component(NamedTuple):  # a tuple: a page may list thousands
    id: str
    name: str
    status: str
    group: bool
    group_id: str | None
    group_name: str | None

    @property
    def qualified(self) -> str:
        """``Group / Name`` for a group's member, the bare name otherwise."""
        return f"{self.group_name} / {self.name}" if self.group_name else self.name


@dataclass(frozen=True, slots=True)
class _Notice:
    """An unresolved incident or a scheduled maintenance."""

    name: str
    status: str
    impact: str
    components: frozenset[str]
    """The ids of the components it concerns (empty when the page does not say)."""
    link: str
    """Its page on the status page (``shortlink``), or ""."""


@dataclass(frozen=True, slots=True)
class _Summary:
    indicator: str
    description: str
    page: str
    components: tuple[_Component, ...]
    incidents: tuple[_Notice, ...]
    maintenances: tuple[_Notice, ...]


class _Unreadable(Exception):
    """The response is not a Statuspage summary."""


class StatuspageProbe(Probe[StatuspageSettings]):
    """Reads a vendor's Atlassian Statuspage summary: component status, incidents, maintenances."""

    name = "statuspage"
    Settings = StatuspageSettings
    metrics = (
        MetricSpec.gauge(
            "probe.vendor.status",
            "",
            "The vendor's own status of a component: 0 operational, 1 under_maintenance, "
            "2 degraded_performance, 3 partial_outage, 4 major_outage",
            "component",
            snapshot=True,
        ),
        MetricSpec.gauge(
            "probe.vendor.incidents", "{incident}", "The vendor's unresolved incidents", snapshot=True
        ),
        MetricSpec.gauge(
            "probe.vendor.indicator",
            "",
            "The status page's overall indicator: 0 none, 1 minor, 2 major, 3 critical",
            snapshot=True,
        ),
    )

    def validate_target(self, target: str) -> None:
        validate_http_url(target)
        parts = urlsplit(target)
        if "/api/v2" in parts.path or parts.query or parts.fragment:
            raise ValueError(
                f"{target!r}: the target is the status page's base URL (https://status.example.com); "
                f"the probe reads {SUMMARY_PATH} under it"
            )

    async def run(self, check: Check, settings: StatuspageSettings, ctx: ProbeContext) -> ProbeResult:
        url = check.target.rstrip("/") + SUMMARY_PATH
        ctx.stage = f"reading {SUMMARY_PATH}"
        async with ctx.http(settings.tls, proxy_url=settings.proxy_url) as client:
            try:
                exchange = await client.request(
                    "GET", url, headers={"Accept": "application/json"}, max_body=MAX_BODY
                )
            except HttpFailure as exc:
                return ProbeResult.failure(exc.reason, exc.message)
        verdict = judge(exchange, ctx, None)
        if verdict.reason is not None:
            hint = " (is the target an Atlassian Statuspage page?)" if exchange.status == 404 else ""
            return ProbeResult.failure(
                verdict.reason, verdict.message + hint, retry_after=verdict.retry_after
            )
        ctx.stage = "reading the summary"
        try:
            summary = _read(
                exchange.body, exchange.truncated, exchange.headers.get("Content-Type", ""), ctx.redact
            )
        except _Unreadable as exc:
            return ProbeResult.failure(Reason.PROTOCOL, f"{SUMMARY_PATH}: {exc}")
        return _judge(summary, settings, ctx)


# ---------------------------------------------------------------- reading the summary


def _read(body: bytes, truncated: bool, content_type: str, redact: Redactor) -> _Summary:
    """The summary in ``body``; ``_Unreadable`` says what is wrong with it (the vendor's words it
    quotes redacted, as everywhere)."""
    if truncated:
        raise _Unreadable(f"the response is over {MAX_BODY >> 20} MiB, more than a summary ever is")
    if "html" in content_type.lower() or body[:512].lstrip().startswith(b"<"):
        raise _Unreadable("the response is HTML, not JSON: is the target an Atlassian Statuspage page?")
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise _Unreadable(f"the response is not JSON ({exc or 'nested too deeply'})") from None
    if not isinstance(document, dict):
        raise _Unreadable(f"the response is a JSON {_kind(document)}, not a summary object")
    status = document.get("status")
    if not isinstance(status, dict) or not isinstance(status.get("indicator"), str):
        raise _Unreadable("the summary has no status.indicator")
    indicator = status["indicator"]
    if indicator not in INDICATORS and indicator != "maintenance":
        raise _Unreadable(f"status.indicator is {clip(indicator, 40, redact)!r}, not one Statuspage uses")
    raw_components = document.get("components")
    if not isinstance(raw_components, list):
        raise _Unreadable("the summary has no components list")
    components = _components(raw_components, redact)
    page = document.get("page")
    return _Summary(
        indicator=indicator,
        description=_text(status.get("description")),
        page=_text(page.get("name")) if isinstance(page, dict) else "",
        components=components,
        incidents=_notices(document.get("incidents"), "incidents"),
        maintenances=_notices(document.get("scheduled_maintenances"), "scheduled_maintenances"),
    )


def _components(raw: list[Any], redact: Redactor) -> tuple[_Component, ...]:
    groups: dict[str, str] = {}
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _Unreadable(f"components[{index}] is a JSON {_kind(item)}, not an object")
        if item.get("group") is True and isinstance(item.get("id"), str):
            groups[item["id"]] = _text(item.get("name"))
    found = []
    for index, item in enumerate(raw):
        name, status = item.get("name"), item.get("status")
        if not _text(name):
            raise _Unreadable(f"components[{index}] has no name")
        if not isinstance(status, str) or status not in STATUSES:
            shown = clip(status, 40, redact) if isinstance(status, str) else _kind(status)
            raise _Unreadable(
                f"component {clip(name, MAX_NAME, redact)!r} has the status {shown!r}, "
                f"not one of {', '.join(STATUSES)}"
            )
        group_id = item.get("group_id")
        found.append(
            _Component(
                id=_text(item.get("id")),
                name=_text(name),
                status=status,
                group=item.get("group") is True,
                group_id=group_id if isinstance(group_id, str) and group_id in groups else None,
                group_name=groups.get(group_id) if isinstance(group_id, str) else None,
            )
        )
    return tuple(found)  # in the page's order, which the exported series keep


def _notices(raw: Any, where: str) -> tuple[_Notice, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _Unreadable(f"{where} is a JSON {_kind(raw)}, not a list")
    notices = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _Unreadable(f"{where}[{index}] has no name")
        affected = item.get("components")
        ids = frozenset(
            c["id"]
            for c in (affected if isinstance(affected, list) else ())
            if isinstance(c, dict) and isinstance(c.get("id"), str)
        )
        link = _text(item.get("shortlink"))
        notices.append(
            _Notice(
                _text(item["name"]),
                _text(item.get("status")),
                _text(item.get("impact")),
                ids,
                link if link.startswith(("https://", "http://")) else "",
            )
        )
    return tuple(notices)


def _text(value: Any) -> str:
    """A string the vendor wrote, with its control characters (newlines, ANSI escapes) folded."""
    return _CONTROL.sub(" ", value).strip() if isinstance(value, str) else ""


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


# ---------------------------------------------------------------- judging it


def _judge(summary: _Summary, settings: StatuspageSettings, ctx: ProbeContext) -> ProbeResult:
    labels = _labels(summary.components, ctx.redact)
    chosen, missing = _watched(summary.components, settings)
    watched = [summary.components[index] for index in chosen]
    values: dict[str, float] = {
        "probe.vendor.incidents": float(len(summary.incidents)),
        "probe.vendor.indicator": float(_indicator(summary)),
    }
    samples = tuple(
        Sample(
            "probe.vendor.status",
            float(STATUSES[component.status]),
            {"component": labels[index]},
        )
        for index, component in zip(chosen[:MAX_COMPONENTS], watched, strict=False)
    )
    attributes: dict[str, AttributeValue] = {
        "vantage.vendor.indicator": summary.indicator,
        "vantage.vendor.components": len(watched),
    }
    if summary.page:
        attributes["vantage.vendor.page"] = clip(summary.page, MAX_NAME, ctx.redact)
    if summary.description:
        attributes["vantage.vendor.description"] = clip(summary.description, MAX_NAME, ctx.redact)
    if len(watched) > MAX_COMPONENTS:
        attributes["vantage.vendor.components_not_exported"] = len(watched) - MAX_COMPONENTS
    read = ProbeResult(
        success=True, values=values, samples=samples, attributes=attributes, events=_events(summary, ctx)
    )

    if missing:
        message = _missing_message(missing, summary.components, ctx.redact)
        return replace(read, success=False, reason=Reason.ASSERTION, message=message)
    in_maintenance = (
        frozenset().union(*(m.components for m in summary.maintenances if m.status in _MAINTENANCE_ACTIVE))
        if settings.ignore_maintenance
        else frozenset()
    )
    threshold = STATUSES[settings.fail_on]
    failing = [
        index
        for index in chosen
        if STATUSES[summary.components[index].status] >= threshold
        and summary.components[index].id not in in_maintenance
    ]
    if failing:
        message = _outage_message(failing, labels, summary, ctx)
        return replace(read, success=False, reason=Reason.VENDOR_OUTAGE, message=message)
    return read


def _labels(components: tuple[_Component, ...], redact: Redactor) -> list[str]:
    """Each component's label, in the page's order: its name, or ``Group / Name`` when two
    components share the name, redacted and cut to ``MAX_NAME``. A label still shared (two members
    of a group with the same name, names alike in their first characters) is followed by its
    occurrence in the page, `` (2)``, `` (3)``: two components one series would be a duplicate in
    the exposition, or one component's outage hidden by the other's status."""
    counts: dict[str, int] = {}
    for component in components:
        counts[component.name] = counts.get(component.name, 0) + 1
    labels = []
    seen: dict[str, int] = {}
    for component in components:
        name = component.qualified if counts[component.name] > 1 else component.name
        label = clip(name, MAX_NAME, redact)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return labels


def _watched(components: tuple[_Component, ...], settings: StatuspageSettings) -> tuple[list[int], list[str]]:
    """The components the settings watch (their indices, in the page's order), and the names that
    match none."""
    candidates = [index for index, c in enumerate(components) if settings.groups or not c.group]
    if not settings.components:
        return candidates, []
    members: dict[str, list[int]] = {}
    for index, component in enumerate(components):
        if component.group_id is not None and not component.group:
            members.setdefault(component.group_id, []).append(index)
    # A pattern matches a component's name or its ``Group / Name`` (which its label is one of).
    names = [(c.name.casefold(), c.qualified.casefold() if c.group_name else "") for c in components]
    chosen: set[int] = set()
    missing = []
    for pattern in settings.components:
        wanted = re.compile(fnmatch.translate(pattern.casefold()))
        matched = False
        for index, component in enumerate(components):
            name, qualified = names[index]
            if not (wanted.match(name) or (qualified and wanted.match(qualified))):
                continue
            matched = True
            if component.group:
                # A group named stands for its members (and for itself with ``groups``).
                chosen.update(members.get(component.id, ()))
                if not settings.groups:
                    continue
            chosen.add(index)
        if not matched:
            missing.append(pattern)
    return sorted(chosen), missing


def _missing_message(missing: list[str], components: tuple[_Component, ...], redact: Redactor) -> str:
    bare = sorted({c.name for c in components})
    # Suggestions from the first 2,000 names: a page that large makes difflib slow, not wiser.
    folded = {n.casefold(): n for n in (*bare, *(c.qualified for c in components if c.group_name))}
    pool = list(folded)[:2000]
    parts = []
    for pattern in missing[:5]:
        shown = clip(pattern, MAX_NAME, redact)
        close = difflib.get_close_matches(pattern.casefold(), pool, n=1, cutoff=0.6)
        if close:
            parts.append(f"{shown!r} (did you mean {clip(folded[close[0]], MAX_NAME, redact)!r}?)")
        else:
            parts.append(repr(shown))
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    noun = "component" if len(missing) == 1 else "components"
    return f"the status page has no {noun} named {', '.join(parts)}{more}; it has {_listing(bare, redact)}"


def _listing(names: list[str], redact: Redactor, limit: int = 8) -> str:
    shown = ", ".join(clip(name, 60, redact) for name in names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


def _outage_message(failing: list[int], labels: list[str], summary: _Summary, ctx: ProbeContext) -> str:
    by_status: dict[str, list[str]] = {}
    for index in sorted(failing, key=lambda i: -STATUSES[summary.components[i].status]):
        by_status.setdefault(summary.components[index].status, []).append(labels[index])
    parts = []
    for status, names in by_status.items():
        shown = ", ".join(names[:3])
        if len(names) > 3:
            shown += f" and {len(names) - 3} more"
        parts.append(f"{_WORDS[status]} of {shown}")
    message = "the vendor declares " + " and ".join(parts)
    ids = {summary.components[index].id for index in failing}
    incident = _worst(i for i in summary.incidents if i.components & ids)
    active = [m for m in summary.maintenances if m.status in _MAINTENANCE_ACTIVE and m.components & ids]
    if incident is None and active:
        return message + f" during its maintenance {clip(active[0].name, MAX_NAME, ctx.redact)!r}"
    # Else an incident that does not say which components it concerns may be the cause; one that
    # names others is not quoted as if it were.
    incident = incident or _worst(i for i in summary.incidents if not i.components)
    if incident is not None:
        message += f": {clip(incident.name, MAX_NAME, ctx.redact)!r}"
        if len(summary.incidents) > 1:
            message += f" (and {len(summary.incidents) - 1} more unresolved)"
    elif summary.incidents:
        count = len(summary.incidents)
        message += f" ({count} unresolved incident{'s' if count > 1 else ''} elsewhere)"
    return message


def _worst(incidents: Iterable[_Notice]) -> _Notice | None:
    """The incident of the highest impact (the first of them), or None."""
    return max(incidents, key=lambda i: INDICATORS.get(i.impact, 0), default=None)


def _indicator(summary: _Summary) -> int:
    """The indicator as a number; ``maintenance`` says nothing of incidents, so the worst impact of
    the unresolved ones stands in for it (0 when there is none)."""
    if summary.indicator in INDICATORS:
        return INDICATORS[summary.indicator]
    return max((INDICATORS.get(i.impact, 0) for i in summary.incidents), default=0)


def _events(summary: _Summary, ctx: ProbeContext) -> tuple[Event, ...]:
    events: list[Event] = []
    for kind, notices in (
        ("vendor_incident", summary.incidents),
        ("vendor_maintenance", summary.maintenances),
    ):
        for notice in notices:
            if len(events) >= MAX_EVENTS:
                break
            attributes: dict[str, AttributeValue] = {
                "vantage.vendor.name": clip(notice.name, MAX_NAME, ctx.redact),
                "vantage.vendor.status": clip(notice.status, 40, ctx.redact),
                "vantage.vendor.impact": clip(notice.impact, 40, ctx.redact),
            }
            if notice.link:
                attributes["vantage.vendor.url"] = clip(notice.link, 200, ctx.redact)
            events.append(Event(kind, attributes))
    return tuple(events)
