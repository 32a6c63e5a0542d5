"""What the deployment tests share: the chart, its example profiles, promtool, metric names."""

from __future__ import annotations

import os
import re
import shutil
from typing import Any

import pytest
import yaml

from .helpers import ROOT

CHART = ROOT / "helm" / "vantage"
ALERTS = CHART / "files" / "alerts.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
GOLDEN = ROOT / "tests" / "golden" / "metrics.txt"
PROFILES = sorted((CHART / "examples").glob("*.yaml"))
KUBERNETES = "1.37.0"


def need(tool: str) -> str:
    """The path of a Debian-packaged tool; in CI (where .ci/run installs it) its absence fails."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed; .ci/run installs Debian's prometheus package")
        pytest.skip(f"{tool} is not installed (Debian's prometheus package; tests/setup.sh installs it)")
    return path


def golden_metric_names() -> set[str]:
    """Every Prometheus metric name the agent declares, histogram series included."""
    names: set[str] = {"up"}
    for line in GOLDEN.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2].startswith("otel="):
            names.add(parts[0])
            if parts[1] == "histogram":
                names |= {f"{parts[0]}_bucket", f"{parts[0]}_sum", f"{parts[0]}_count"}
    return names


_FUNCTIONS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "by",
    "on",
    "and",
    "or",
    "unless",
    "rate",
    "increase",
    "histogram_quantile",
    "time",
    "changes",
    "max_over_time",
    "last_over_time",
    "timestamp",
    "label_values",
    "le",
    "bool",
    "without",
    "ignoring",
    "group_left",
    "group_right",
    "topk",
    "bottomk",
    "abs",
    "absent",
    "group",
}


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression reads (label names and functions left out)."""
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    # Grafana's label_values(metric, label): the label is not a metric.
    without_strings = re.sub(r"label_values\((.*),\s*\w+\)", r"\1", without_strings)
    without_matchers = re.sub(r"\{[^}]*\}", "", without_strings)
    without_groupings = re.sub(
        r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_matchers
    )
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    tokens = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_ranges))
    return {t for t in tokens if t not in _FUNCTIONS and not t.startswith("$")}


def alert_expressions() -> dict[str, str]:
    document = yaml.safe_load(ALERTS.read_text())
    return {rule["alert"]: rule["expr"] for group in document["groups"] for rule in group["rules"]}


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    found = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    found += [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return found
