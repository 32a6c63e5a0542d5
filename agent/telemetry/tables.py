"""The agent's metrics, kept as tables that runs update in place.

One :class:`Table` per metric (a ``MetricSpec``): gauges keep the last value of each series,
counters a running total, histograms their explicit bucket counts, sum, min and max. A series is
found by the check it belongs to (``None`` for the agent's own, agent-wide series) and a key that
tells apart the series of one check (a phase, a label set). Recording a run is a few dict look-ups
and in-place updates on the event loop; nothing is aggregated, copied or allocated for an existing
series. The tables become export data only when something collects them: the ``/metrics``
renderer (agent/telemetry/exposition.py) and the OTLP collection (agent/telemetry/collection.py),
each in a thread of its own.

Readers run in other threads than the writer. They take ``list(...)`` copies of the dicts they walk
(one C call under the interpreter lock, so never a dict that changes size under them) and read each
series' fields once; a histogram's count is the sum of its buckets, so ``+Inf`` and ``_count``
always agree, even when a reader sees a series in the middle of an update.

A ``snapshot`` metric's series of a check that its latest run did not report are dropped after the
run (:meth:`Table.retain`, called only for the probe types that declare one), so ordinary metrics
pay nothing for it.

Attribute values are redacted once, when a series is created or its attributes change, not at
each collection.
"""

from __future__ import annotations

import itertools
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping
from typing import Any

from agent.config.secrets import Redactor
from agent.sdk.probe import AttributeValue, MetricKind, MetricSpec

__all__ = ["Attributes", "HistogramPoint", "MetricTables", "Observer", "Point", "Table", "attributes_of"]

Attributes = Mapping[str, AttributeValue]
Observer = Callable[[], Iterable[tuple[Attributes, float]]]
"""Called at each collection: the current (attributes, value) of each series of an observed metric."""

_order = itertools.count()
_LABELLED = 1024  # label sets of samples shared at most, per table


class Point:
    """One series of a gauge or counter."""

    __slots__ = ("attrs", "extra", "raw", "sent", "start", "value")

    def __init__(self, raw: Attributes, attrs: Attributes, value: float, start: int) -> None:
        self.raw, self.attrs, self.value, self.start = raw, attrs, value, start
        self.extra: Attributes | None = None
        """Attributes on top of ``attrs`` (a phase, an outcome), shared by the series of every
        check that have them (see :meth:`Table.put_derived` and :func:`attributes_of`)."""
        self.sent: dict[int, Any] | None = None
        """What each delta exporter last sent of this series (by exporter id)."""


class HistogramPoint:
    """One series of an explicit-bucket histogram: ``counts[i]`` holds the values in
    ``(bounds[i-1], bounds[i]]``, the last one those above every bound."""

    __slots__ = (
        "attrs",
        "counts",
        "extra",
        "max",
        "min",
        "raw",
        "sent",
        "start",
        "sum",
        "window_max",
        "window_min",
    )

    def __init__(self, raw: Attributes, attrs: Attributes, buckets: int, start: int) -> None:
        self.raw, self.attrs, self.start = raw, attrs, start
        self.extra: Attributes | None = None  # always: histograms merge theirs
        self.counts = [0] * buckets
        self.sum = 0.0
        self.min = self.window_min = math.inf
        self.max = self.window_max = -math.inf
        """``min`` and ``max`` since the start; the ``window_`` ones since a delta exporter last
        sent the series."""
        self.sent: dict[int, Any] | None = None


class Table:
    """The series of one metric, by check and key.

    ``label_names`` is the union of the attribute names of every series, as the exposition writes
    a family's samples with the same label names (a series without one has it empty), and
    ``version`` changes when it grows.
    """

    __slots__ = (
        "bound",
        "bounds",
        "checks",
        "extras",
        "first",
        "keys",
        "kind",
        "labelled",
        "observer",
        "put",
        "redact",
        "spec",
        "starts",
        "version",
    )

    def __init__(
        self,
        spec: MetricSpec,
        redact: Redactor,
        bounds: tuple[float, ...] = (),
        starts: dict[str | None, int] | None = None,
        bound: dict[str | None, Attributes] | None = None,
    ) -> None:
        self.spec, self.kind, self.redact = spec, spec.kind, redact
        self.bounds = bounds
        self.checks: dict[str | None, Any] = {}
        """Each check's series: its only series when that is of key ``None``, else a dict of
        them by key. A series is a ``Point`` or ``HistogramPoint``, or, for a gauge's series
        whose attributes are its check's own (see :meth:`MetricTables.bind`) and whose extra is
        the table's for its key, the bare value (:meth:`points` makes a ``Point`` of it)."""
        self.bound: dict[str | None, Attributes] = {} if bound is None else bound
        """Each check's own attributes, shared with :class:`MetricTables`."""
        self.starts: dict[str | None, int] = {} if starts is None else starts
        """When each check got its first series (ns): the start of all its series, one number
        shared by them (and by every table of :class:`MetricTables`)."""
        self.extras: dict[Hashable, Attributes] = {}
        self.labelled: dict[tuple[tuple[str, AttributeValue], ...], Attributes] = {}
        """Samples' own label sets, by their pairs (see :meth:`put_labelled`)."""
        self.keys: set[str] = set()
        self.version = 0
        self.first = -1
        """When the table got its first series (an ordinal): the exposition writes histograms in
        that order, as the SDK's exporter did."""
        self.observer: Observer | None = None
        self.put: Callable[[str | None, Hashable, Attributes, float], None] = {
            MetricKind.GAUGE: self.set,
            MetricKind.COUNTER: self.add,
            MetricKind.HISTOGRAM: self.record,
        }[spec.kind]
        """Record a value as the metric's kind has it: a gauge keeps it, a counter adds it, a
        histogram counts it."""

    def _own(self, attrs: Attributes) -> Attributes:
        """The attributes a series keeps: redacted (the same object when there was nothing to
        redact, so that the series of a check share their check's attributes), and their names in
        ``keys``."""
        redact = self.redact
        clean: Attributes = {k: redact(v) if isinstance(v, str) else v for k, v in attrs.items()}
        if clean == attrs:
            clean = attrs
        if not self.keys.issuperset(clean):
            self.keys.update(clean)
            self.version += 1
        if self.first < 0:
            self.first = next(_order)
        return clean

    def _start(self, check: str | None) -> int:
        start = self.starts.get(check)
        if start is None:
            start = self.starts[check] = time.time_ns()
        return start

    def _keep(self, check: str | None, key: Hashable, series: Any) -> None:
        """Keep a series, new or in the place of the one of its key: a check's only series, of
        key ``None`` (most of them), is kept as it is, not in a dict of one (some 80 bytes a
        series saved)."""
        entry = self.checks.get(check)
        if entry.__class__ is dict:
            entry[key] = series
        elif key is None or entry is None:
            self.checks[check] = series if key is None else {key: series}
        else:
            self.checks[check] = {None: entry, key: series}

    def set(self, check: str | None, key: Hashable, attrs: Attributes, value: float) -> None:
        """Keep ``value`` as the series' last value (a gauge, or an observed total)."""
        entry = self.checks.get(check)  # the check's lone series (key None), or a dict of them
        point = entry.get(key) if entry.__class__ is dict else entry if key is None else None
        if point.__class__ is not Point:  # none yet, or a bare value
            if key is None and attrs is self.bound.get(check) and self.kind is MetricKind.GAUGE:
                if point is not None:  # the bare value of the check's lone series: replaced
                    if entry.__class__ is dict:
                        entry[None] = value
                    else:
                        self.checks[check] = value
                    return
                if self._own(attrs) is attrs:  # (else there was something to redact)
                    self._start(check)
                    self._keep(check, key, value)
                    return
            # A new series, or a bare one whose attributes are no longer its check's own.
            self._keep(check, key, Point(attrs, self._own(attrs), value, self._start(check)))
            return
        if point.raw is not attrs and point.raw != attrs:
            point.raw, point.attrs = attrs, self._own(attrs)
        point.value = value

    def add(self, check: str | None, key: Hashable, attrs: Attributes, value: float) -> None:
        """Add ``value`` to the series' running total."""
        entry = self.checks.get(check)  # the check's lone series (key None), or a dict of them
        point = entry.get(key) if entry.__class__ is dict else entry if key is None else None
        if point is None:
            self._keep(check, key, Point(attrs, self._own(attrs), float(value), self._start(check)))
            return
        if point.raw is not attrs and point.raw != attrs:
            point.raw, point.attrs = attrs, self._own(attrs)
        point.value += value

    def put_derived(
        self, check: str, key: Hashable, base: Attributes, extra: Attributes, value: float
    ) -> None:
        """Set or add (a gauge or a counter) ``value`` to a series whose attributes are the check's
        ``base`` and ``extra``, where ``key`` alone decides ``extra`` (a phase, an outcome): the
        series keeps both as they are, ``extra`` shared by every check's series of that key, so
        nothing is merged at a run or kept merged in memory."""
        if self.kind is MetricKind.HISTOGRAM:
            self.record(check, key, {**base, **extra}, value)
            return
        entry = self.checks.get(check)  # the check's lone series (key None), or a dict of them
        point = entry.get(key) if entry.__class__ is dict else entry if key is None else None
        gauge = self.kind is MetricKind.GAUGE
        if point.__class__ is Point:
            if point.raw is base:
                if gauge:
                    point.value = value
                else:
                    point.value += value
                return
        elif point is not None and gauge and base is self.bound.get(check):
            # A bare value (its extra is the table's for its key): replaced.
            if entry.__class__ is dict:
                entry[key] = value
            else:
                self.checks[check] = value
            return
        shared = self.extras.get(key)
        if shared is None or shared != extra:
            shared = self.extras[key] = self._own(extra)
        if point is None:
            if gauge and base is self.bound.get(check) and self._own(base) is base:
                self._start(check)
                self._keep(check, key, float(value))
                return
            point = Point(base, self._own(base), float(value), self._start(check))
            self._keep(check, key, point)
        elif point.__class__ is not Point:  # a bare value whose base is no longer its check's own
            point = Point(base, self._own(base), value, self._start(check))
            self._keep(check, key, point)
        else:
            point.raw, point.attrs = base, self._own(base)
            point.value = point.value + value if self.kind is MetricKind.COUNTER else value
        point.extra = shared

    def put_labelled(
        self, check: str, key: Hashable, base: Attributes, labels: Attributes, value: float
    ) -> None:
        """Record ``value`` as the metric's kind has it in a series whose attributes are the
        check's ``base`` and a sample's own ``labels`` (a TLS version): the series keeps both as
        they are, ``labels`` shared by the series of every check that has the same, so that
        nothing merged is kept per check (histograms merge theirs)."""
        try:
            known = tuple(labels.items())
            shared = self.labelled.get(known)
        except TypeError:  # a sequence among the values: merged, as a histogram's
            known, shared = (), None
        if self.kind is MetricKind.HISTOGRAM or not known:
            self.put(check, key, {**base, **labels} if labels else base, value)
            return
        if shared is None:
            if len(self.labelled) >= _LABELLED:
                self.labelled.clear()  # label sets that come and go: the series keep theirs
            shared = self.labelled[known] = self._own(labels)
        counter = self.kind is MetricKind.COUNTER
        entry = self.checks.get(check)  # the check's lone series (key None), or a dict of them
        point = entry.get(key) if entry.__class__ is dict else entry if key is None else None
        if point is None or point.__class__ is not Point:  # (a bare value: made a Point)
            point = Point(base, self._own(base), float(value) if counter else value, self._start(check))
            point.extra = shared
            self._keep(check, key, point)
            return
        if point.raw is not base or point.extra is not shared:
            point.raw, point.attrs, point.extra = base, self._own(base), shared
        if counter:
            point.value += value
        else:
            point.value = value

    def retain(self, check: str, keys: Collection[Hashable]) -> None:
        """Drop the series of ``check`` whose key is not among ``keys``, the series its latest run
        reported (a ``snapshot`` metric, see ``MetricSpec``); every one of them when ``keys`` is
        empty. Readers in other threads see the series before or after, never a dict that changes
        size under them: the check's series are replaced by a new dict, not deleted from theirs."""
        entry = self.checks.get(check)
        if entry is None:
            return
        if entry.__class__ is dict:
            if all(key in keys for key in entry):
                return
            kept = {key: series for key, series in entry.items() if key in keys}
            if kept:
                self.checks[check] = kept
            else:
                del self.checks[check]
        elif None not in keys:
            del self.checks[check]

    def record(self, check: str | None, key: Hashable, attrs: Attributes, value: float) -> None:
        """Count ``value`` in the series' histogram."""
        entry = self.checks.get(check)  # the check's lone series (key None), or a dict of them
        point = entry.get(key) if entry.__class__ is dict else entry if key is None else None
        if point is None:
            point = HistogramPoint(attrs, self._own(attrs), len(self.bounds) + 1, self._start(check))
            self._keep(check, key, point)
        elif point.raw is not attrs and point.raw != attrs:
            point.raw, point.attrs = attrs, self._own(attrs)
        point.sum += value
        if value < point.min:
            point.min = value
        if value > point.max:
            point.max = value
        if value < point.window_min:
            point.window_min = value
        if value > point.window_max:
            point.window_max = value
        # Last, so that a reader never counts more values than the sum holds.
        point.counts[bisect_left(self.bounds, value)] += 1

    def points(self) -> Iterator[Any]:
        """Every series (``Point`` or ``HistogramPoint``; a bare value as a ``Point`` made for the
        occasion), safe to call from another thread."""
        for check, entry in list(self.checks.items()):
            if entry.__class__ is dict:
                for key, point in list(entry.items()):
                    if point.__class__ in _POINTS:
                        yield point
                    elif (made := self._point(check, key, point)) is not None:
                        yield made
            elif entry.__class__ in _POINTS:
                yield entry
            elif (made := self._point(check, None, entry)) is not None:
                yield made

    def samples(self) -> Iterator[tuple[Attributes, Attributes | None, float, int]]:
        """Every series of a gauge or counter as (attributes, extra, value, start): :meth:`points`
        without making a ``Point`` of a bare value."""
        bound, extras, starts = self.bound, self.extras, self.starts
        for check, entry in list(self.checks.items()):
            if entry.__class__ is dict:
                for key, point in list(entry.items()):
                    if point.__class__ is Point:
                        yield point.attrs, point.extra, point.value, point.start
                    elif (attrs := bound.get(check)) is not None:
                        extra = None if key is None else extras.get(key)
                        yield attrs, extra, point, starts.get(check, 0)
            elif entry.__class__ is Point:
                yield entry.attrs, entry.extra, entry.value, entry.start
            elif (attrs := bound.get(check)) is not None:
                yield attrs, None, entry, starts.get(check, 0)

    def _point(self, check: str | None, key: Hashable, value: float) -> Point | None:
        attrs = self.bound.get(check)
        if attrs is None:  # the check was just forgotten
            return None
        point = Point(attrs, attrs, value, self.starts.get(check, 0))
        point.extra = None if key is None else self.extras.get(key)
        return point

    def __len__(self) -> int:
        return sum(len(e) if e.__class__ is dict else 1 for e in list(self.checks.values()))


def attributes_of(point: Point | HistogramPoint) -> Attributes:
    """All the attributes of a series (merged when it has ``extra``: call it at collection)."""
    extra = point.extra
    return point.attrs if extra is None else {**point.attrs, **extra}


_POINTS = (Point, HistogramPoint)


class MetricTables:
    """The tables of every metric the agent may emit, in the order they were declared."""

    def __init__(self, redactor: Redactor | None = None) -> None:
        self.redactor = redactor or Redactor()
        self.tables: dict[str, Table] = {}
        self._starts: dict[str | None, int] = {}
        self._bound: dict[str | None, Attributes] = {}
        self._hooks: list[Callable[[], None]] = []

    def before_collection(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` at the start of each collection, in the collecting thread: for series
        whose values are worked out then (which checks are in a maintenance window)."""
        self._hooks.append(hook)

    def bind(self, check: str, attrs: Attributes) -> None:
        """``attrs`` are ``check``'s own attributes, the one object its runs record most series
        with: a gauge's series that has them (and, by its key, the table's extra) is kept as its
        bare value, not as a ``Point`` (some 80 bytes a series; 8 of an http check's 15)."""
        self._bound[check] = attrs

    def declare(self, spec: MetricSpec) -> Table:
        """The table of ``spec`` (made on first use; a second spec of the same name gets the first
        one's table)."""
        table = self.tables.get(spec.name)
        if table is None:
            bounds = tuple(spec.buckets or ()) if spec.kind is MetricKind.HISTOGRAM else ()
            table = self.tables[spec.name] = Table(spec, self.redactor, bounds, self._starts, self._bound)
        return table

    def observe(self, spec: MetricSpec, observer: Observer) -> Table:
        """Declare a metric whose values ``observer`` gives at each collection (agent-wide)."""
        table = self.declare(spec)
        table.observer = observer
        return table

    def forget(self, check: str) -> None:
        """Drop every series of ``check``, in every table."""
        for table in list(self.tables.values()):
            table.checks.pop(check, None)
        self._starts.pop(check, None)
        self._bound.pop(check, None)

    def refresh(self) -> None:
        """Read the observed metrics into their tables; collections call it first."""
        for hook in list(self._hooks):
            hook()
        for table in list(self.tables.values()):
            if table.observer is not None:
                for attrs, value in table.observer():
                    table.set(None, tuple(sorted(attrs.items())), attrs, value)

    def collected(self) -> list[Table]:
        """The tables that hold series, in the order an exposition writes them: histograms in
        the order they got their first series, then the others in the order they were declared."""
        tables = [t for t in list(self.tables.values()) if t.checks]
        histograms = sorted((t for t in tables if t.kind is MetricKind.HISTOGRAM), key=lambda t: t.first)
        return [*histograms, *(t for t in tables if t.kind is not MetricKind.HISTOGRAM)]

    def series_count(self) -> int:
        return sum(len(t) for t in list(self.tables.values()))
