"""The metric tables themselves: what a record does to a series, without any exporter."""

from __future__ import annotations

from agent.app import build_agent
from agent.config.secrets import Redactor
from agent.sdk.probe import MetricKind, MetricSpec, ProbeResult, Sample
from agent.sdk.reasons import Reason
from agent.telemetry.tables import MetricTables, attributes_of
from plugins.icmp import IcmpProbe
from plugins.statuspage import StatuspageProbe
from plugins.sync import SyncProbe

from .helpers import config_from

BASE = {"check": "a", "type": "http", "target": "https://x.test/", "region": "eu"}


def test_histogram_buckets_are_upper_inclusive_and_min_max_follow() -> None:
    tables = MetricTables()
    table = tables.declare(MetricSpec("took", MetricKind.HISTOGRAM, "s", "", buckets=(0.1, 1.0)))
    for value in (0.1, 0.5, 1.0, 2.0, 0.0):
        table.record("a", None, BASE, value)
    (point,) = table.points()
    assert point.counts == [2, 2, 1]  # (-inf, 0.1], (0.1, 1.0], (1.0, +inf)
    assert point.sum == 3.6 and point.min == 0.0 and point.max == 2.0
    assert point.window_min == 0.0 and point.window_max == 2.0


def test_gauges_keep_the_last_value_and_counters_add() -> None:
    tables = MetricTables()
    gauge = tables.declare(MetricSpec.gauge("up", "", ""))
    counter = tables.declare(MetricSpec("runs", MetricKind.COUNTER, "{run}", ""))
    for value in (1.0, 0.0):
        gauge.put("a", None, BASE, value)
        counter.put("a", None, BASE, 1)
    assert [p.value for p in gauge.points()] == [0.0]
    assert [p.value for p in counter.points()] == [2.0]
    # A series named by its key takes its new attributes (a new TLS version replaces the old).
    gauge.set("a", "version", {**BASE, "version": "TLS 1.2"}, 1)
    gauge.set("a", "version", {**BASE, "version": "TLS 1.3"}, 1)
    assert [attributes_of(p).get("version") for p in gauge.points()] == [None, "TLS 1.3"]
    assert gauge.keys >= {"check", "version"}


def test_derived_series_share_their_extra_attributes_and_merge_only_when_collected() -> None:
    tables = MetricTables()
    phases = tables.declare(MetricSpec.gauge("phase", "s", "", "phase"))
    other = {**BASE, "check": "b"}
    for base in (BASE, other):
        for run in range(2):
            phases.put_derived(base["check"], "connect", base, {"phase": "connect"}, 0.1 * (run + 1))
    a, b = phases.points()
    assert a.extra is b.extra and a.attrs is BASE and b.attrs is other
    assert a.value == 0.2
    assert attributes_of(a) == {**BASE, "phase": "connect"}
    assert attributes_of(a) is not a.attrs  # merged at collection only
    assert "phase" in phases.keys


def test_forget_drops_a_checks_series_in_every_table_and_keeps_the_agents() -> None:
    tables = MetricTables()
    gauge = tables.declare(MetricSpec.gauge("up", "", ""))
    histogram = tables.declare(MetricSpec("took", MetricKind.HISTOGRAM, "s", "", buckets=(1.0,)))
    for check in ("a", "b"):
        gauge.put(check, None, {**BASE, "check": check}, 1)
        histogram.put(check, None, {**BASE, "check": check}, 0.5)
    histogram.put(None, None, {}, 0.5)
    tables.forget("a")
    assert [attributes_of(p).get("check") for p in gauge.points()] == ["b"]
    assert [attributes_of(p).get("check") for p in histogram.points()] == ["b", None]
    assert tables.series_count() == 3


def test_attributes_are_redacted_when_a_series_is_made() -> None:
    redactor = Redactor(["hunter2-secret"])
    tables = MetricTables(redactor)
    gauge = tables.declare(MetricSpec.gauge("up", "", ""))
    gauge.set("a", "k", {**BASE, "detail": "token hunter2-secret"}, 1)
    gauge.set("a", None, BASE, 1)
    with_secret, plain = gauge.points()
    assert with_secret.attrs["detail"] == "token <redacted>"
    assert plain.attrs is BASE  # nothing to redact: the check's own attributes, shared


def test_observed_metrics_are_read_at_each_refresh() -> None:
    tables = MetricTables()
    seen = [3]
    table = tables.observe(MetricSpec.gauge("checks", "{check}", ""), lambda: [({}, seen[0])])
    tables.refresh()
    seen[0] = 4
    tables.refresh()
    assert [p.value for p in table.points()] == [4]


def test_a_checks_lone_series_and_then_keyed_ones_keep_their_order() -> None:
    tables = MetricTables()
    gauge = tables.declare(MetricSpec.gauge("up", "", ""))
    gauge.set("a", None, BASE, 1)
    gauge.set("b", "k", {**BASE, "check": "b"}, 2)
    gauge.set("a", "k", {**BASE, "k": "v"}, 3)  # a's lone series gets a sibling
    gauge.set("a", None, BASE, 4)
    assert [(attributes_of(p)["check"], p.value) for p in gauge.points()] == [("a", 4), ("a", 3), ("b", 2)]
    assert len(gauge) == 3
    tables.forget("a")
    assert [p.value for p in gauge.points()] == [2]


def test_samples_label_sets_are_shared_by_the_checks_that_have_them() -> None:
    tables = MetricTables()
    gauge = tables.declare(MetricSpec.gauge("tls", "", ""))
    other = {**BASE, "check": "b"}
    for base in (BASE, other):
        gauge.put_labelled(base["check"], "version", base, {"version": "TLS 1.3"}, 1)
    a, b = gauge.points()
    assert a.extra is b.extra and a.attrs is BASE and b.attrs is other
    gauge.put_labelled("a", "version", BASE, {"version": "TLS 1.2"}, 1)  # the series takes the new
    assert [attributes_of(p)["version"] for p in gauge.points()] == ["TLS 1.2", "TLS 1.3"]
    assert gauge.keys >= {"check", "version"}
    counter = tables.declare(MetricSpec("errors", MetricKind.COUNTER, "{error}", ""))
    for _ in range(2):
        counter.put_labelled("a", ("kind", "x"), BASE, {"kind": "x", "check": "mine"}, 1)
    (point,) = counter.points()
    assert point.value == 2.0 and attributes_of(point) == {**BASE, "kind": "x", "check": "mine"}


def test_a_bound_checks_gauges_are_kept_bare_and_read_as_points() -> None:
    tables = MetricTables()
    gauge = tables.declare(MetricSpec.gauge("up", "", ""))
    phases = tables.declare(MetricSpec.gauge("phase", "s", "", "phase"))
    counter = tables.declare(MetricSpec("runs", MetricKind.COUNTER, "{run}", ""))
    tables.bind("a", BASE)
    for value in (1, 0.5):
        gauge.set("a", None, BASE, value)
        phases.put_derived("a", "connect", BASE, {"phase": "connect"}, value)
        counter.put("a", None, BASE, 1)
    # Stored as the values themselves; counters (delta state) keep their Points.
    assert gauge.checks["a"] == 0.5 and phases.checks["a"] == {"connect": 0.5}
    assert counter.checks["a"].__class__.__name__ == "Point"
    (point,) = gauge.points()
    assert (point.attrs, point.extra, point.value) == (BASE, None, 0.5) and point.attrs is BASE
    assert point.start == tables._starts["a"] > 0
    (phase,) = phases.points()
    assert attributes_of(phase) == {**BASE, "phase": "connect"} and phase.value == 0.5
    assert list(phases.samples()) == [(BASE, {"phase": "connect"}, 0.5, tables._starts["a"])]
    assert "check" in gauge.keys and "phase" in phases.keys
    # Another check's attributes, or the check's own that changed: a Point again.
    other = {**BASE, "detail": "x"}
    gauge.set("a", None, other, 2)
    (point,) = gauge.points()
    assert point.attrs is other and point.value == 2
    tables.forget("a")
    assert list(phases.points()) == [] and list(phases.samples()) == []


def test_a_bound_check_whose_attributes_need_redacting_keeps_points() -> None:
    tables = MetricTables(Redactor(["hunter2-secret"]))
    gauge = tables.declare(MetricSpec.gauge("up", "", ""))
    secret = {**BASE, "detail": "token hunter2-secret"}
    tables.bind("a", secret)
    gauge.set("a", None, secret, 1)
    gauge.set("a", None, secret, 3)
    (point,) = gauge.points()
    assert point.attrs["detail"] == "token <redacted>" and point.value == 3


def test_retain_drops_the_series_of_a_check_its_latest_run_did_not_report() -> None:
    """A ``snapshot`` metric (a vendor's components): the series of one check that are not among
    the run's keys go, the other checks' stay; no key at all empties the check, and then a table
    with no series is left out of a collection."""
    tables = MetricTables()
    status = tables.declare(MetricSpec.gauge("status", "", "", "component", snapshot=True))
    other = {**BASE, "check": "b"}
    for component, value in (("API", 4.0), ("Webhooks", 2.0), ("Mail", 0.0)):
        status.put_labelled("a", component, BASE, {"component": component}, value)
    status.put_labelled("b", "API", other, {"component": "API"}, 4.0)

    def series() -> set[tuple[str, str, float]]:
        return {
            (str(a["check"]), str(a["component"]), p.value)
            for p in status.points()
            if (a := attributes_of(p))
        }

    entry = status.checks["a"]
    status.retain("a", {"API", "Webhooks", "Mail"})  # all reported: nothing changes, nothing is copied
    assert status.checks["a"] is entry
    status.retain("a", {"Webhooks", "Mail"})
    assert series() == {("a", "Webhooks", 2.0), ("a", "Mail", 0.0), ("b", "API", 4.0)}
    status.retain("a", set())  # a run that reported none (the page could not be read)
    assert "a" not in status.checks and series() == {("b", "API", 4.0)}
    status.retain("a", set())  # nothing left: no error
    status.retain("b", set())
    assert not status.checks and status not in tables.collected() and tables.series_count() == 0
    status.put_labelled("a", "API", BASE, {"component": "API"}, 0.0)  # back on the page
    assert series() == {("a", "API", 0.0)}
    # A check's lone series (a value, key None): kept while reported, dropped when not.
    indicator = tables.declare(MetricSpec.gauge("indicator", "", "", snapshot=True))
    tables.bind("a", BASE)
    indicator.set("a", None, BASE, 3.0)  # kept as a bare value
    indicator.retain("a", {None})
    assert [p.value for p in indicator.points()] == [3.0]
    indicator.retain("a", set())
    assert list(indicator.points()) == [] and not indicator.checks


def test_the_metrics_whose_series_a_run_decides_are_snapshots_and_the_recorder_drops_them() -> None:
    """An icmp run with no reply leaves no round-trip statistics of the run before it on /metrics
    (nor a sync value that was not read, nor a vendor component): their specs say ``snapshot``, the
    others do not, and the recorder drops after each run what it did not report."""

    snapshots = {
        spec.name
        for probe in (IcmpProbe, SyncProbe, StatuspageProbe)
        for spec in probe.metrics
        if spec.snapshot
    }
    assert snapshots == {
        "probe.icmp.rtt",
        "probe.sync.value",
        "probe.vendor.status",
        "probe.vendor.incidents",
        "probe.vendor.indicator",
    }
    agent = build_agent(config_from([{"name": "ping", "type": "icmp", "target": "127.0.0.1"}]), {})
    (entry,) = agent.entries
    stats = {"min": 0.001, "avg": 0.002, "max": 0.003, "stddev": 0.001}
    replied = ProbeResult(
        success=True,
        values={"probe.icmp.packets_received": 3.0},
        samples=tuple(Sample("probe.icmp.rtt", v, {"stat": s}) for s, v in stats.items()),
    )
    silent = ProbeResult.failure(Reason.TIMEOUT, "no reply", values={"probe.icmp.packets_received": 0.0})

    def rtt_lines() -> list[str]:
        text = agent.telemetry.render_prometheus().decode()
        return [line for line in text.splitlines() if line.startswith("probe_icmp_rtt_seconds{")]

    recorder = agent.recorder
    recorder.finish_run(recorder.start_run(entry), replied)
    assert len(rtt_lines()) == 4
    recorder.finish_run(recorder.start_run(entry), silent)
    assert rtt_lines() == []
    text = agent.telemetry.render_prometheus().decode()
    assert "probe_icmp_packets_received{" in text  # not a snapshot: kept
    agent.telemetry.shutdown(5)
