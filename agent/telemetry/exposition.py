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
progress or started less than ``FRESH`` seconds before, in its format and encoding. The agent's
``/metrics`` renders (and gzips) on the event loop a slice at a time, the loop's other work going
on between two slices (:meth:`ExpositionCache.aget`); tools render in the calling thread
(:meth:`ExpositionCache.get`).
"""

from __future__ import annotations

import asyncio
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
from agent.telemetry.tables import MetricTables, Point, Table

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
_SLICE = 128  # series rendered between two hand-overs (of the event loop, or the interpreter lock)
_NUMBERS = 4096  # numbers' texts remembered from one family to the next, at most
_LOW = -math.inf

_Pairs = tuple[tuple[str, str], ...]  # a layout: label names, each with its attribute's name

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
    if value.__class__ is float and -math.inf < value < 1e6:
        return repr(value)  # most of them: Python's shortest repr is Go's below a million
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

    before: _Pairs
    after: _Pairs

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
    each ``name="value"`` pair (a check's name, target and labels recur in every family). A check's
    text cut around its phase is not kept (the renderer cuts it once for the check's series), and
    a family with a label of its own takes its check's pairs from the layout without it (made once
    for the families without one): the memory a rendering holds at once is the process's RSS.

    The attributes objects whose ids the memos use are kept alive in lists as long as the memos,
    so that no id is reused meanwhile."""

    def __init__(self) -> None:
        self.texts: dict[int, dict[int, str]] = {}
        """By layout (its id): by attributes object (its id), their text in it."""
        self._seen: list[Mapping[str, Any] | None] = []
        self._pairs: dict[tuple[str, str], str] = {}
        self._all: dict[tuple[int, int], list[str]] = {}
        self._own: dict[tuple[int, int], list[tuple[int, str]]] = {}
        self._rest: dict[tuple[int, tuple[int, ...]], _Pairs] = {}
        self._layouts: dict[_Pairs, _Pairs] = {}

    def layout(self, pairs: _Pairs) -> _Pairs:
        """The one object of the rendering for this layout: texts are remembered by its id."""
        return self._layouts.setdefault(pairs, pairs)

    def texts_in(self, layout: _Pairs) -> dict[int, str]:
        """The texts remembered in ``layout``, by the id of their attributes object."""
        texts = self.texts.get(id(layout))
        if texts is None:
            texts = self.texts[id(layout)] = {}
        return texts

    def remember(self, layout: _Pairs, attrs: Mapping[str, Any], text: str) -> None:
        """Keep ``text`` as the text of ``attrs`` in ``layout`` for the rest of the rendering."""
        self.texts_in(layout)[id(attrs)] = text
        self._seen.append(attrs)

    def text(self, layout: _Pairs, attrs: Mapping[str, Any], extra: Mapping[str, Any] | None) -> str:
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
        one = self.own(layout, extra)
        if one is not None:
            place, pair = one
            head, tail = self.around(layout, attrs, place)
            return f"{head}{pair}{tail}"
        # Several pairs of their own (a run's result, reason and attempt): the check's pairs in
        # the layout without them (made already) with theirs put in, in the order of the places.
        own = self._own[(id(layout), id(extra))]
        places = tuple(place for place, _ in own)
        rest = self._rest.get((id(layout), places))
        if rest is None:
            rest = self._rest[(id(layout), places)] = self.layout(
                tuple(pair for i, pair in enumerate(layout) if i not in places)
            )
        parts = self.parts(rest, attrs).copy()
        for place, pair in own:
            parts.insert(place, pair)
        return ",".join(parts)

    def own(self, layout: _Pairs, extra: Mapping[str, Any]) -> tuple[int, str] | None:
        """The one pair of ``extra`` in ``layout`` and its place (a phase, a version); None when
        it has none or more than one."""
        own = self._own.get((id(layout), id(extra)))
        if own is None:
            own = self._own[(id(layout), id(extra))] = [
                (i, pair) for i, pair in enumerate(self.parts(layout, extra)) if layout[i][1] in extra
            ]
        return own[0] if len(own) == 1 else None

    def around(self, layout: _Pairs, attrs: Mapping[str, Any], place: int) -> tuple[str, str]:
        """The text of ``attrs`` in ``layout`` before and after ``place`` (with their commas): a
        series with one pair of its own there is ``head + pair + tail``; the caller cuts it once
        for a check's series."""
        # The check's pairs in the layout without that place: the one of the families without a
        # label of their own, whose pairs for the check are made already.
        rest = self._rest.get((id(layout), (place,)))
        if rest is None:
            rest = self._rest[(id(layout), (place,))] = self.layout(layout[:place] + layout[place + 1 :])
        parts = self.parts(rest, attrs)
        head, tail = ",".join(parts[:place]), ",".join(parts[place:])
        return (f"{head}," if head else "", f",{tail}" if tail else "")

    def parts(self, layout: _Pairs, attrs: Mapping[str, Any]) -> list[str]:
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
        if len(numbers) >= _NUMBERS:
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
    head = f"# HELP {name} {_help(spec.description, openmetrics)}\n# TYPE {name} {spec.kind.value}\n"
    if openmetrics and unit:
        head += f"# UNIT {name} {unit}\n"
    layout = _Layout.of(table)
    before = labels.layout(layout.before + layout.after)  # all of them: a histogram's le apart
    if table.kind is MetricKind.HISTOGRAM:
        yield from _histogram(table, labels, layout, before, sample, head)
    else:
        yield from _values(table, labels, numbers, before, sample, head)


def _histogram(
    table: Table, labels: _Labels, layout: _Layout, before: _Pairs, sample: str, head: str
) -> Iterator[str]:
    """A histogram's lines: per series, its buckets (cumulative), its count and its sum."""
    out = [head]
    texts, at, parts_of = labels.texts_in(before), len(layout.before), labels.parts
    les = [f'le="{bound}"' for bound in table.bounds] + ['le="+Inf"']
    bucket, count_name, sum_name = f"{sample}_bucket", f"{sample}_count", f"{sample}_sum"
    for i, point in enumerate(table.points(), 1):
        attrs = point.attrs
        parts = parts_of(before, attrs)  # histograms merge their attributes: no extra
        first, rest = ",".join(parts[:at]), ",".join(parts[at:])
        if first and rest:
            plain = f"{first},{rest}"
            opening, closing = f"{bucket}{{{first},", f",{rest}}} "
        else:
            plain = first or rest
            opening = f"{bucket}{{{first}," if first else f"{bucket}{{"
            closing = f",{rest}}} " if rest else "} "
        if id(attrs) not in texts:  # the check's text in the families of the same labels
            labels.remember(before, attrs, plain)
        cumulative = list(accumulate(point.counts))
        total = cumulative[-1]
        # The bucket lines as one join: each line is "<opening><le><closing><n>.0", and what
        # separates two numbers is ".0\n<opening>".
        if total < 1_000_000:
            lines = [f"{le}{closing}{n}" for le, n in zip(les, cumulative, strict=True)]
            between = f".0\n{opening}"
            out.append(f"{opening}{between.join(lines)}.0\n")
        else:
            out += [f"{opening}{le}{closing}{_go(n)}\n" for le, n in zip(les, cumulative, strict=True)]
        plain = f"{{{plain}}}" if plain else ""
        total_text = f"{total}.0" if total < 1_000_000 else _go(total)
        sum_ = point.sum
        sum_text = repr(sum_) if sum_.__class__ is float and _LOW < sum_ < 1e6 else _go(sum_)
        out.append(f"{count_name}{plain} {total_text}\n{sum_name}{plain} {sum_text}\n")
        if i % _SLICE == 0:
            yield "".join(out)
            out.clear()
    yield "".join(out)


def _values(
    table: Table,
    labels: _Labels,
    numbers: dict[float, str],
    before: _Pairs,
    sample: str,
    head: str,
) -> Iterator[str]:
    """A gauge's or a counter's lines, a check at a time.

    Most series are a check's bare value (see ``Table``): its text is its check's in the layout,
    made once for the rendering. A series with a label of its own (a phase) is its check's text
    with that pair put in its place: the check's text around the place is cut once for its
    series, and each line is one format."""
    out = [head]
    texts, text_of, around_of = labels.texts_in(before), labels.text, labels.around
    bound, extras = table.bound, table.extras
    opening = sample + "{"
    own: dict[int, tuple[int, str]] = {}  # by extra (its id): its place and its one pair (or -1)
    room = _NUMBERS - len(numbers)  # numbers remembered: the recurring ones come early
    todo = _SLICE
    for check, entry in list(table.checks.items()):
        if entry.__class__ is dict:
            series: Any = list(entry.items())
        elif entry.__class__ is Point:
            series = ((None, entry),)
        else:  # the check's lone series, a bare value (most series): the same as below, inline
            attrs = bound.get(check)
            if attrs is None:  # the check was just forgotten
                continue
            text = texts.get(id(attrs))
            if text is None:
                text = text_of(before, attrs, None)
            number = numbers.get(entry)
            if number is None:
                number = repr(entry) if entry.__class__ is float and _LOW < entry < 1e6 else _go(entry)
                if room > 0:
                    numbers[entry] = number
                    room -= 1
            out.append(f"{opening}{text}}} {number}\n" if text else f"{sample} {number}\n")
            todo -= 1
            if todo <= 0:
                yield "".join(out)
                out.clear()
                todo = _SLICE
            continue
        cut: tuple[int, Any, str, str] | None = None  # (place, attributes, head, tail)
        for key, point in series:
            if point.__class__ is Point:
                attrs, extra, value = point.attrs, point.extra, point.value
            else:  # a bare value: its check's own attributes, its key's extra
                attrs = bound.get(check)
                if attrs is None:  # the check was just forgotten
                    continue
                extra, value = None if key is None else extras.get(key), point
            number = numbers.get(value)
            if number is None:
                # _go's most common case inline: a duration, a timestamp (one repr of a float)
                number = repr(value) if value.__class__ is float and _LOW < value < 1e6 else _go(value)
                if room > 0:
                    numbers[value] = number
                    room -= 1
            if extra is None:
                text = texts.get(id(attrs))
                if text is None:
                    text = text_of(before, attrs, None)
                out.append(f"{opening}{text}}} {number}\n" if text else f"{sample} {number}\n")
            else:
                one = own.get(id(extra))
                if one is None:
                    one = own[id(extra)] = labels.own(before, extra) or (-1, "")
                place, text = one
                if place < 0:  # none, or more than one pair of its own
                    text = text_of(before, attrs, extra)
                    out.append(f"{opening}{text}}} {number}\n" if text else f"{sample} {number}\n")
                else:
                    if cut is None or cut[0] != place or cut[1] is not attrs:
                        cut = (place, attrs, *around_of(before, attrs, place))
                    out.append(f"{opening}{cut[2]}{text}{cut[3]}}} {number}\n")
            todo -= 1
        if todo <= 0:
            yield "".join(out)
            out.clear()
            todo = _SLICE
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
    """Renders ``/metrics`` at most once per ``fresh`` seconds per format and encoding.

    A caller that finds a rendering of its kind in progress waits for it; one that finds a rendering
    started less than ``fresh`` ago takes it. A gzipped rendering is compressed as it is written,
    slice by slice, so the whole plain page is never in memory; :meth:`expire` lets go of renderings
    older than ``fresh``.

    :meth:`aget` renders on the event loop, giving the loop back after each slice of ``_SLICE``
    series (about a millisecond of work at most): the agent's scrapes. In a worker thread instead,
    the rendering would hold the interpreter lock for up to the switch interval each time the loop
    let go of it for a system call, many times a probe run, which made probe starts late at 1,000
    runs a second (docs/design-notes.md). :meth:`get` blocks, for tools and tests in a thread of
    their own; the two kinds of caller share the renderings but not the wait."""

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
        kinds = [(om, gz) for om in (False, True) for gz in (False, True)]
        self._busy = {kind: threading.Lock() for kind in kinds}
        self._loop_busy = {kind: asyncio.Lock() for kind in kinds}
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

    async def aget(self, *, openmetrics: bool = False, gzip: bool = False) -> Rendering:
        """The page in the format and encoding asked for, rendered on the event loop."""
        kind = (openmetrics, gzip)
        async with self._loop_busy[kind]:  # the scrapes meanwhile wait for this rendering
            rendering = self._renderings.get(kind)
            if rendering is None or self._clock() - rendering.started > self.fresh:
                started = self._clock()
                out = bytearray()
                compressor = _compressor() if gzip else None
                for piece in render(self._tables, self._resource, openmetrics=openmetrics):
                    data = piece.encode()
                    out += data if compressor is None else compressor.compress(data)
                    await asyncio.sleep(0)  # the loop's other work, then the next slice
                if compressor is not None:
                    out += compressor.flush()
                rendering = Rendering(
                    bytes(out), OPENMETRICS_TYPE if openmetrics else TEXT_TYPE, gzip, started
                )
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
        time.sleep(0)  # a slice done: hand the interpreter lock over, should another thread wait
    return bytes(body)


def _compressor() -> Any:
    """gzip at level 1: the page is highly repetitive, and speed matters more."""
    return zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)


def _gzip(pieces: Iterator[str]) -> bytes:
    """gzip (level 1: the page is highly repetitive, and speed matters more) as the pieces come."""
    compressor = _compressor()
    out = bytearray()
    for piece in pieces:
        out += compressor.compress(piece.encode())
        time.sleep(0)
    out += compressor.flush()
    return bytes(out)
