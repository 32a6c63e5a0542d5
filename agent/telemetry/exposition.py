"""``/metrics``: the metric tables written as Prometheus text (0.0.4) or OpenMetrics (1.0.0).

The page is what OpenTelemetry's Prometheus exporter wrote from the same instruments before the
agent kept its own tables (``PrometheusMetricReader`` into a ``prometheus_client`` registry, SDK
1.45, exporter 0.66b2, prometheus_client 0.26), byte for byte; ``tests/golden/exposition*.txt``
pin it. Its rules, as that exporter and ``prometheus_client`` have them:

* names: characters outside ``[a-zA-Z0-9:]`` become ``_``; the unit, mapped (``s`` → ``seconds``;
  an annotation in braces, ``{run}``, maps to nothing), is appended unless the name ends with it;
  a counter's family is written ``<name>_total`` in text, ``<name>`` with ``_total`` samples in
  OpenMetrics, which also writes ``# UNIT`` and ends with ``# EOF``;
* labels: attribute names sanitised the same way (``[^a-zA-Z0-9]`` → ``_``); every sample of a
  family has the union of its family's label names, sorted (a histogram's ``le`` among them), those
  a series lacks written empty; non-string values are written as JSON (``443``, ``true``);
* values: Go's float formatting (``1.0``, ``1.8e+09``, ``+Inf``);
* ``target_info`` (OpenMetrics: the info ``target``) carries the resource's attributes.

:class:`ExpositionCache` renders once per collection: a scrape gets the rendering that is in
progress or started less than ``FRESH`` seconds before, in its format and encoding; rendering (and gzip)
runs in a worker thread, handing the interpreter back between slices.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from agent.sdk.probe import MetricKind, MetricSpec
from agent.telemetry.tables import MetricTables, Table

__all__ = [
    "FRESH",
    "OPENMETRICS_TYPE",
    "TEXT_TYPE",
    "ExpositionCache",
    "Rendering",
    "family_name",
    "negotiate",
    "render",
]

TEXT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
FRESH = 0.5
"""Seconds from the start of a rendering during which it serves the scrapes that come (a Prometheus
pair scraping the agent at the same moment): a scrape during a rendering waits for it, one soon
after takes it; a rendering is never more than this much older than its scrape's start."""
_SLICE = 512  # series rendered between two hand-overs of the interpreter lock
_NUMBERS = 4096  # numbers' texts remembered from one family to the next, at most

_NAME = re.compile(r"[^a-zA-Z0-9:]+")
_LABEL = re.compile(r"[^a-zA-Z0-9]+")
_ANNOTATION = re.compile(r"{.*}")
_UNITS = {
    "d": "days",
    "h": "hours",
    "min": "minutes",
    "s": "seconds",
    "ms": "milliseconds",
    "us": "microseconds",
    "ns": "nanoseconds",
    "By": "bytes",
    "KiBy": "kibibytes",
    "MiBy": "mebibytes",
    "GiBy": "gibibytes",
    "TiBy": "tibibytes",
    "KBy": "kilobytes",
    "MBy": "megabytes",
    "GBy": "gigabytes",
    "TBy": "terabytes",
    "m": "meters",
    "V": "volts",
    "A": "amperes",
    "J": "joules",
    "W": "watts",
    "g": "grams",
    "Cel": "celsius",
    "Hz": "hertz",
    "1": "",
    "%": "percent",
}
_PER_UNITS = {"s": "second", "m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}


def _sanitize(name: str, pattern: re.Pattern[str]) -> str:
    if name and name[0].isdigit():
        name = "_" + name[1:]
    return pattern.sub("_", name)


def _unit(unit: str) -> str:
    unit = _ANNOTATION.sub("", unit)
    if unit in _UNITS:
        return _UNITS[unit]
    top, slash, bottom = unit.partition("/")
    if slash and _NAME.sub("_", bottom):
        bottom = _NAME.sub("_", bottom)
        top = _NAME.sub("_", top)
        top = _UNITS.get(top, top)
        bottom = _PER_UNITS.get(bottom, bottom)
        return f"{top}_per_{bottom}" if top else f"per_{bottom}"
    return _NAME.sub("_", unit).strip("_")


def family_name(spec: MetricSpec) -> tuple[str, str]:
    """The family's name (without a counter's ``_total``) and its unit, as the exporter named them."""
    name, unit = _sanitize(spec.name, _NAME), _unit(spec.unit)
    if spec.kind is MetricKind.COUNTER and name.endswith("_total"):
        name = name[:-6]
    if unit and not name.endswith("_" + unit):
        name += "_" + unit
    return name, unit


def _go(value: float) -> str:
    """A number as Go (and prometheus_client) writes it."""
    value = float(value)
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if value != value:
        return "NaN"
    text = repr(value)
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _count(n: int) -> str:
    return f"{n}.0" if n < 1_000_000 else _go(n)


def _label_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if "\\" in text or "\n" in text or '"' in text:
        text = text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return text


def _help(text: str, openmetrics: bool) -> str:
    text = text.replace("\\", r"\\").replace("\n", r"\n")
    return text.replace('"', r"\"") if openmetrics else text


def _labels(attrs: Mapping[str, Any]) -> str:
    pairs = sorted((_sanitize(k, _LABEL), _label_value(v)) for k, v in attrs.items())
    return ",".join(f'{k}="{v}"' for k, v in pairs)


@dataclass(frozen=True)
class _Layout:
    """A family's label names, sorted, each with the attribute it comes from; for a histogram,
    split where ``le`` goes."""

    before: tuple[tuple[str, str], ...]
    after: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, table: Table) -> _Layout:
        names: dict[str, str] = {}
        for key in sorted(table.keys):
            names[_sanitize(key, _LABEL)] = key  # the last of two names that sanitise alike wins
        ordered = tuple(sorted(names.items()))
        if table.kind is not MetricKind.HISTOGRAM:
            return cls(ordered, ())
        return cls(tuple(p for p in ordered if p[0] < "le"), tuple(p for p in ordered if p[0] > "le"))


class _Labels:
    """Label texts of one rendering.

    A family's samples are written with the same label names, so a series' label text depends on
    its family's layout as well as its attributes. Two memos kept through the rendering keep the
    work per series small: the text of an attributes object in a layout (the series of a check
    share their check's attributes, the same object, across families with the same layout), and
    each ``name="value"`` pair (a check's name, target and labels recur in every family). What
    serves one family only (a check's text cut around its phase) is let go of after it
    (:meth:`next_family`), and a family with a label of its own takes its check's pairs from the
    layout without it (made once for the families without one): the memory a rendering holds at
    once is the process's RSS.

    The attributes objects whose ids the memos use are kept alive in lists as long as the memos,
    so that no id is reused meanwhile."""

    def __init__(self) -> None:
        self.texts: dict[int, dict[int, str]] = {}
        """By layout (its id): by attributes object (its id), their text in it."""
        self._seen: list[Mapping[str, Any] | None] = []
        self._pairs: dict[tuple[str, str], str] = {}
        self._all: dict[tuple[int, int], list[str]] = {}
        self._own: dict[tuple[int, int], list[tuple[int, str]]] = {}
        self._around: dict[tuple[int, int, int], tuple[str, str]] = {}
        self._rest: dict[tuple[int, int], tuple[tuple[str, str], ...]] = {}
        self._layouts: dict[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]] = {}

    def layout(self, pairs: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        """The one object of the rendering for this layout: texts are remembered by its id."""
        return self._layouts.setdefault(pairs, pairs)

    def texts_in(self, layout: tuple[tuple[str, str], ...]) -> dict[int, str]:
        """The texts remembered in ``layout``, by the id of their attributes object."""
        texts = self.texts.get(id(layout))
        if texts is None:
            texts = self.texts[id(layout)] = {}
        return texts

    def remember(self, layout: tuple[tuple[str, str], ...], attrs: Mapping[str, Any], text: str) -> None:
        """Keep ``text`` as the text of ``attrs`` in ``layout`` for the rest of the rendering."""
        self.texts_in(layout)[id(attrs)] = text
        self._seen.append(attrs)

    def next_family(self) -> None:
        """Let go of what served the family just written."""
        self._around.clear()

    def text(
        self, layout: tuple[tuple[str, str], ...], attrs: Mapping[str, Any], extra: Mapping[str, Any] | None
    ) -> str:
        """The label text of ``attrs`` and ``extra`` (a series' own attributes on top of its
        check's) in ``layout`` (an object that :meth:`layout` gave)."""
        if extra is None:
            texts = self.texts_in(layout)
            text = texts.get(id(attrs))
            if text is None:
                text = ",".join(self.parts(layout, attrs))
                self.remember(layout, attrs, text)
            return text
        # The check's pairs, with the series' own in their places: a phase's text is its check's
        # with one pair changed. Not remembered: a check has one series of each extra.
        own = self._own.get((id(layout), id(extra)))
        if own is None:
            own = self._own[(id(layout), id(extra))] = [
                (i, pair) for i, pair in enumerate(self.parts(layout, extra)) if layout[i][1] in extra
            ]
        if len(own) == 1:
            # One pair of its own (a phase, a version): the check's text around that place is
            # cut once, and each of the check's series of the family is one concatenation.
            i, pair = own[0]
            around = self._around.get((id(layout), id(attrs), i))
            if around is None:
                # The check's pairs in the layout without that place: the one of the families
                # without a label of their own, whose pairs for the check are made already.
                rest = self._rest.get((id(layout), i))
                if rest is None:
                    rest = self._rest[(id(layout), i)] = self.layout(layout[:i] + layout[i + 1 :])
                parts = self.parts(rest, attrs)
                head, tail = ",".join(parts[:i]), ",".join(parts[i:])
                around = self._around[(id(layout), id(attrs), i)] = (
                    f"{head}," if head else "",
                    f",{tail}" if tail else "",
                )
            return f"{around[0]}{pair}{around[1]}"
        parts = self.parts(layout, attrs).copy()
        for i, pair in own:
            parts[i] = pair
        return ",".join(parts)

    def parts(self, layout: tuple[tuple[str, str], ...], attrs: Mapping[str, Any]) -> list[str]:
        """The ``name="value"`` pairs of ``attrs`` in ``layout``, empty for a name it lacks."""
        key = (id(layout), id(attrs))
        parts = self._all.get(key)
        if parts is not None:
            return parts
        pairs, get, parts = self._pairs, attrs.get, []
        for label, name in layout:
            value = get(name)
            if value is None:
                parts.append(f'{label}=""')
            elif value.__class__ is str:
                pair = pairs.get((label, value))
                if pair is None:
                    pair = pairs[(label, value)] = f'{label}="{_label_value(value)}"'
                parts.append(pair)
            else:  # numbers, booleans, sequences: rare, and 1, 1.0 and True are equal keys
                parts.append(f'{label}="{_label_value(value)}"')
        self._all[key] = parts
        self._seen.append(attrs)
        return parts


def render(tables: MetricTables, resource: Mapping[str, Any], *, openmetrics: bool = False) -> Iterator[str]:
    """The exposition of ``tables``, in pieces; ``resource`` is written as ``target_info``."""
    tables.refresh()
    info = _labels(resource)
    if openmetrics:
        yield f"# HELP target Target metadata\n# TYPE target info\ntarget_info{{{info}}} 1.0\n"
    else:
        yield f"# HELP target_info Target metadata\n# TYPE target_info gauge\ntarget_info{{{info}}} 1.0\n"
    labels: _Labels = _Labels()
    numbers: dict[float, str] = {}  # 0, 1 and 200 recur
    for table in tables.collected():
        yield from _family(table, labels, numbers, openmetrics)
        labels.next_family()
        if len(numbers) > _NUMBERS:
            numbers.clear()  # durations: each its own, unlike 0, 1 and 200
    if openmetrics:
        yield "# EOF\n"


def _family(table: Table, labels: _Labels, numbers: dict[float, str], openmetrics: bool) -> Iterator[str]:
    spec = table.spec
    name, unit = family_name(spec)
    sample = name
    if table.kind is MetricKind.COUNTER:
        sample = name + "_total"
        if not openmetrics:
            name = sample
    out = [f"# HELP {name} {_help(spec.description, openmetrics)}\n# TYPE {name} {spec.kind.value}\n"]
    if openmetrics and unit:
        out.append(f"# UNIT {name} {unit}\n")
    layout = _Layout.of(table)
    before = labels.layout(layout.before + layout.after)  # all of them: a histogram's le apart
    texts, text_of = labels.texts_in(before), labels.text
    if table.kind is MetricKind.HISTOGRAM:
        at, parts_of = len(layout.before), labels.parts
        les = [f'le="{bound}"' for bound in table.bounds] + ['le="+Inf"']
        bucket, count_name, sum_name = f"{sample}_bucket", f"{sample}_count", f"{sample}_sum"
        for i, point in enumerate(table.points(), 1):
            attrs = point.attrs
            parts = parts_of(before, attrs)  # histograms merge their attributes: no extra
            head, tail = ",".join(parts[:at]), ",".join(parts[at:])
            if id(attrs) not in texts:  # the check's text in the families of the same labels
                labels.remember(before, attrs, f"{head},{tail}" if head and tail else head or tail)
            opening = f"{bucket}{{{head}," if head else f"{bucket}{{"
            closing = f",{tail}}} " if tail else "} "
            plain = f"{{{head},{tail}}}" if head and tail else f"{{{head}{tail}}}" if head or tail else ""
            cumulative = list(accumulate(point.counts))
            total = cumulative[-1]
            if total < 1_000_000:
                out += [f"{opening}{le}{closing}{n}.0\n" for le, n in zip(les, cumulative, strict=True)]
            else:
                out += [f"{opening}{le}{closing}{_go(n)}\n" for le, n in zip(les, cumulative, strict=True)]
            out.append(f"{count_name}{plain} {_count(total)}\n{sum_name}{plain} {_go(point.sum)}\n")
            if i % _SLICE == 0:
                yield "".join(out)
                out.clear()
                time.sleep(0)  # hand the interpreter lock over (to the event loop)
    else:
        for i, (attrs, extra, value, _) in enumerate(table.samples(), 1):
            text = (texts.get(id(attrs)) if extra is None else None) or text_of(before, attrs, extra)
            number = numbers.get(value)
            if number is None:
                number = numbers[value] = _go(value)
            out.append(f"{sample}{{{text}}} {number}\n" if text else f"{sample} {number}\n")
            if i % _SLICE == 0:
                yield "".join(out)
                out.clear()
                time.sleep(0)
    yield "".join(out)


def negotiate(accept: str, accept_encoding: str) -> tuple[bool, bool]:
    """Whether a scrape asks for OpenMetrics, and whether it takes gzip.

    OpenMetrics when the Accept header names ``application/openmetrics-text`` (version 1.0.0, or no
    version) with a quality above 0 and at least that of ``text/plain``; gzip when
    ``Accept-Encoding`` names it (or ``*``) with a quality above 0."""
    openmetrics = text = 0.0
    for item in accept.split(","):
        media, params = _media(item)
        if media == "application/openmetrics-text" and params.get("version", "1.0.0") in ("1.0.0",):
            openmetrics = max(openmetrics, _quality(params))
        elif media in ("text/plain", "*/*", "text/*"):
            text = max(text, _quality(params))
    gzip = False
    for item in accept_encoding.split(","):
        coding, params = _media(item)
        if coding in ("gzip", "*") and _quality(params) > 0:
            gzip = True
    return openmetrics > 0 and openmetrics >= text, gzip


def _media(item: str) -> tuple[str, dict[str, str]]:
    media, *rest = item.split(";")
    params = {}
    for param in rest:
        key, _, value = param.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    return media.strip().lower(), params


def _quality(params: Mapping[str, str]) -> float:
    try:
        return float(params.get("q", "1"))
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class Rendering:
    """One rendering of the page, in one format and encoding."""

    body: bytes
    content_type: str
    gzipped: bool
    started: float


class ExpositionCache:
    """Renders ``/metrics`` at most once per ``fresh`` seconds per format and encoding;
    thread-safe.

    :meth:`get` blocks (call it in a worker thread): a caller that finds a rendering of its kind in
    progress waits for it; one that finds a rendering started less than ``fresh`` ago takes it. A gzipped
    rendering is compressed as it is written, slice by slice, so the whole plain page is never in
    memory; :meth:`expire` lets go of renderings older than ``fresh``."""

    def __init__(
        self,
        tables: MetricTables,
        resource: Mapping[str, Any],
        *,
        fresh: float = FRESH,
        clock: Any = time.monotonic,
    ) -> None:
        self._tables, self._resource = tables, dict(resource)
        self.fresh, self._clock = fresh, clock
        self._renderings: dict[tuple[bool, bool], Rendering] = {}
        self._busy = {(om, gz): threading.Lock() for om in (False, True) for gz in (False, True)}
        self.renders = 0
        """How many renderings were made."""

    def get(self, *, openmetrics: bool = False, gzip: bool = False) -> Rendering:
        """The page in the format and encoding asked for."""
        kind = (openmetrics, gzip)
        with self._busy[kind]:  # one rendering of a kind at a time; the callers meanwhile wait for it
            rendering = self._renderings.get(kind)
            if rendering is None or self._clock() - rendering.started > self.fresh:
                started = self._clock()
                pieces = render(self._tables, self._resource, openmetrics=openmetrics)
                body = _gzip(pieces) if gzip else _plain(pieces)
                rendering = Rendering(body, OPENMETRICS_TYPE if openmetrics else TEXT_TYPE, gzip, started)
                self._renderings[kind] = rendering
                self.renders += 1
            return rendering

    def expire(self) -> None:
        """Let go of the renderings older than ``fresh`` (their memory)."""
        now = self._clock()
        for kind, rendering in list(self._renderings.items()):
            if now - rendering.started > self.fresh:
                self._renderings.pop(kind, None)


def _plain(pieces: Iterator[str]) -> bytes:
    body = bytearray()
    for piece in pieces:
        body += piece.encode()
    return bytes(body)


def _gzip(pieces: Iterator[str]) -> bytes:
    """gzip (level 1: the page is highly repetitive, and speed matters more) as the pieces come."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = bytearray()
    for piece in pieces:
        out += compressor.compress(piece.encode())
    out += compressor.flush()
    return bytes(out)
