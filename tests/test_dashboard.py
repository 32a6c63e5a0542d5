"""The Grafana dashboard (helm/vantage/files/dashboard.json), read as Grafana reads it: every
panel's queries against the metric names and units the golden file pins, its units and
transformations, the region filter on every panel, and the panels issue 15 asks for."""

from __future__ import annotations

import json
import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from .deploy import DASHBOARD, GOLDEN, golden_metric_names, metric_names
from .exposition import build, record

# Names of issue 15 that other branches add (docs/metrics.md, CONTRACT15): the lead reconciles
# this list with tests/golden/metrics.txt once their work is merged. Prometheus name: unit.
CONTRACT_METRICS = {
    "vantage_check_up": "",
    "vantage_check_state_changes_total": "{change}",
    "vantage_check_flapping": "",
    "vantage_check_maintenance": "",
    "probe_vendor_status": "",
    "probe_vendor_incidents": "{incident}",
    "probe_vendor_indicator": "",
    "probe_heartbeat_run_duration_seconds_bucket": "s",
}
TIME_UNITS = {"ns", "µs", "ms", "s", "m", "h", "d", "dtdurationms", "dtdurations", "clocks", "clockms"}
TIMESTAMPS = re.compile(r"timestamp|expiry")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def query_panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p.get("targets")]


def golden_units() -> dict[str, str]:
    """Each metric's unit as the golden file pins it ("" for none), histogram series included."""
    units = {"up": ""}
    for line in GOLDEN.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2].startswith("otel=") and parts[3].startswith("unit="):
            unit = parts[3].removeprefix("unit=").replace("-", "")
            names = [parts[0]]
            if parts[1] == "histogram":
                names += [f"{parts[0]}_{suffix}" for suffix in ("bucket", "sum", "count")]
            units |= dict.fromkeys(names, unit)
    return units


def units() -> dict[str, str]:
    return {**CONTRACT_METRICS, **golden_units()}


def effective_unit(panel: dict[str, Any], ref: str) -> str:
    """The unit Grafana shows a query's values in: an override for its query (by refId, or by
    the value field's name after a merge: "Value #A", or "Value" for a single query), else the
    panel's default."""
    config = panel["fieldConfig"]
    unit = config["defaults"].get("unit", "")
    single = len(panel["targets"]) == 1
    for override in config.get("overrides", []):
        matcher = override["matcher"]
        hit = (matcher["id"] == "byFrameRefID" and matcher["options"] == ref) or (
            matcher["id"] == "byName"
            and matcher["options"] in ({f"Value #{ref}"} | ({"Value"} if single else set()))
        )
        for prop in override["properties"] if hit else []:
            if prop["id"] == "unit":
                unit = prop["value"]
    return str(unit)


def every_query() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in query_panels() for target in panel["targets"]]


def test_every_query_reads_metrics_the_agent_exports() -> None:
    known = golden_metric_names() | set(CONTRACT_METRICS)
    expressions = [t["expr"] for _, t in every_query()]
    expressions += [v["definition"] for v in dashboard()["templating"]["list"] if v.get("definition")]
    read = {expression: metric_names(expression) for expression in expressions}
    assert all(read.values()), [e for e, names in read.items() if not names]
    unknown = {e: names - known for e, names in read.items() if names - known}
    assert not unknown, f"not in tests/golden/metrics.txt nor the contract: {unknown}"


def test_units_follow_what_the_query_reads() -> None:
    """A flag or a count is never shown as a duration; seconds are shown as seconds, and a
    timestamp's distance from now in days as days."""
    known = units()
    wrong = []
    for panel, target in every_query():
        unit, expression = effective_unit(panel, target["refId"]), target["expr"]
        read = metric_names(expression)
        where = f"{panel['title']!r} {target['refId']}: {expression} shown in {unit!r}"
        seconds = [known[name] in ("s", "{timestamp}") for name in read]
        if "86400" in expression:  # a timestamp's distance from now, in days
            if unit != "d" or "time()" not in expression or not all(seconds):
                wrong.append(where)
        elif not any(seconds):
            if unit in TIME_UNITS:
                wrong.append(where)
        elif all(seconds) and not any(TIMESTAMPS.search(name) for name in read):
            if unit != "s":
                wrong.append(where)
    assert not wrong, "\n".join(wrong)


def test_the_sync_drift_and_the_deprecation_flag_have_their_own_units() -> None:
    panels = {p["title"]: p for p in query_panels()}
    sync = panels["Sync lag and drift"]
    by_metric = {next(iter(metric_names(t["expr"]))): t["refId"] for t in sync["targets"]}
    assert effective_unit(sync, by_metric["probe_sync_lag_seconds"]) == "s"
    assert effective_unit(sync, by_metric["probe_sync_drift"]) == "none"
    sunsets = panels["API sunsets and deprecations"]
    by_metric = {next(iter(metric_names(t["expr"]))): t["refId"] for t in sunsets["targets"]}
    assert effective_unit(sunsets, by_metric["probe_api_sunset_timestamp_seconds"]) == "d"
    assert effective_unit(sunsets, by_metric["probe_api_deprecated"]) == "none"
    [flag] = [
        o
        for o in sunsets["fieldConfig"]["overrides"]
        if o["matcher"]["options"] == f"Value #{by_metric['probe_api_deprecated']}"
    ]
    [mappings] = [p["value"] for p in flag["properties"] if p["id"] == "mappings"]
    assert {text["text"] for m in mappings for text in m["options"].values()} == {"deprecated", "no"}


def test_tables_merge_their_instant_queries_with_the_transformations_options() -> None:
    tables = [p for p in query_panels() if p["type"] == "table"]
    assert tables
    for panel in tables:
        assert all(t.get("instant") and t.get("format") == "table" for t in panel["targets"]), panel["title"]
        ids = [t["id"] for t in panel["transformations"]]
        assert ids[:1] == ["merge"], panel["title"]  # one row per check and region, every query a column
        for transformation in panel["transformations"]:
            assert isinstance(transformation.get("options"), dict), (panel["title"], transformation)
        organize = next(t["options"] for t in panel["transformations"] if t["id"] == "organize")
        assert organize["excludeByName"] == {"Time": True}
        assert {"indexByName", "renameByName"} <= set(organize)
    for panel in query_panels():
        for transformation in panel.get("transformations", []):
            assert isinstance(transformation.get("options"), dict), (panel["title"], transformation)


def selectors(expression: str) -> list[tuple[str, str]]:
    """Each metric a PromQL expression reads, with its label matchers ("" for none)."""
    names = metric_names(expression)
    # Blank out the strings' contents (keeping every position) so that a brace or a name in a
    # label value is not taken for PromQL.
    masked = re.sub(r'"[^"]*"', lambda m: '"' + "_" * (len(m.group(0)) - 2) + '"', expression)
    found = []
    for match in re.finditer(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?", masked):
        if match.group(1) in names:
            found.append(
                (match.group(1), expression[match.start(2) : match.end(2)] if match.group(2) else "")
            )
    return found


def test_every_panel_is_filtered_by_region_the_agents_too() -> None:
    unfiltered = [
        (panel["title"], name)
        for panel, target in every_query()
        for name, matchers in selectors(target["expr"])
        if 'region=~"$region"' not in matchers
    ]
    assert not unfiltered
    variables = [v["name"] for v in dashboard()["templating"]["list"]]
    assert variables[:3] == ["datasource", "region", "check"] and "vendor" in variables


def test_the_agents_own_series_carry_the_region() -> None:
    """The agent's panels filter by region: each series they read has the label on /metrics."""
    agent = build()
    record(agent)
    agent.recorder.inbound("hooks", "accepted")
    agent.recorder.loop_lag(0.01)
    text = agent.telemetry.render_prometheus().decode()
    samples = {
        sample.name: sample.labels
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    agent_panel = next(p for p in dashboard()["panels"] if p["type"] == "row" and p["title"] == "The agent")
    read = {
        name
        for panel in query_panels()
        if panel["gridPos"]["y"] > agent_panel["gridPos"]["y"]
        for target in panel["targets"]
        for name in metric_names(target["expr"])
    }
    assert {"vantage_event_loop_lag_seconds", "vantage_inbound_requests_total"} <= read
    for name in read:
        assert samples[name].get("region") == "eu-west-1", (name, samples.get(name))


def test_the_confirmed_state_maintenance_flapping_and_job_runs_have_panels() -> None:
    reading = {
        (name, panel["type"]) for panel, target in every_query() for name in metric_names(target["expr"])
    }
    assert {
        ("vantage_check_up", "state-timeline"),
        ("vantage_check_maintenance", "state-timeline"),
        ("vantage_check_flapping", "table"),
        ("vantage_check_state_changes_total", "table"),
        ("vantage_check_state_changes_total", "timeseries"),
        ("probe_heartbeat_run_duration_seconds_bucket", "timeseries"),
    } <= reading
    confirmed = next(p for p in query_panels() if p["title"] == "Confirmed state")
    mappings = confirmed["fieldConfig"]["defaults"]["mappings"]
    texts = {
        r["text"]
        for m in mappings
        for r in (m["options"].values() if m["type"] == "value" else [m["options"]["result"]])
    }
    assert texts == {"up", "down", "pending"}


def test_the_vendor_says_beside_we_see_for_each_vendor() -> None:
    panels = dashboard()["panels"]
    [row] = [p for p in panels if p.get("repeat") == "vendor"]
    assert row["type"] == "row" and "$vendor" in row["title"]
    # The row's panels: those below it up to the next row, side by side.
    below = sorted(
        (p for p in panels if p["gridPos"]["y"] > row["gridPos"]["y"]), key=lambda p: p["gridPos"]["y"]
    )
    pair = [p for p in below[: next(i for i, p in enumerate(below) if p["type"] == "row")]]
    says, sees = sorted(pair, key=lambda p: p["gridPos"]["x"])
    assert says["gridPos"]["y"] == sees["gridPos"]["y"]
    [says_query], [sees_query] = says["targets"], sees["targets"]
    assert metric_names(says_query["expr"]) == {"probe_vendor_status"}
    # The confirmed state, or pending (-1) for a check that runs and is not confirmed yet.
    assert metric_names(sees_query["expr"]) == {"vantage_check_up", "probe_success"}
    for query in (says_query, sees_query):
        assert 'vendor=~"$vendor"' in query["expr"]
    assert 'type!="statuspage"' in sees_query["expr"]  # our own checks, not the page we read
    status = says["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {k: v["text"] for k, v in status.items()} == {
        "0": "operational",
        "1": "under maintenance",
        "2": "degraded performance",
        "3": "partial outage",
        "4": "major outage",
    }
    vendor = next(v for v in dashboard()["templating"]["list"] if v["name"] == "vendor")
    assert metric_names(vendor["definition"]) == {"probe_vendor_status"}


def test_the_layout_is_whole() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]
