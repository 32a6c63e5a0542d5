"""Checks parsed from a large document: equal parts kept once, the document's memory let go of."""

from __future__ import annotations

import datetime

import yaml

from agent.config.checks import _load_yaml
from agent.config.settings import load_config

HTTP = {"name": "a", "type": "http", "target": "https://api.example/v1"}


def test_checks_share_equal_labels_settings_and_field_sets() -> None:
    document = yaml.safe_dump(
        {
            "defaults": {"labels": {"team": "payments"}},
            "checks": [
                {**HTTP, "settings": {"method": "HEAD"}},
                {**HTTP, "name": "b", "settings": {"method": "HEAD"}},
                {**HTTP, "name": "c", "labels": {"tier": "1"}, "interval": "30s"},
            ],
        }
    )
    a, b, c = (entry.check for entry in load_config({"VANTAGE_CHECKS": document}).entries)
    assert a.settings is b.settings and a.labels is b.labels
    assert a.model_fields_set is b.model_fields_set
    assert a.target is b.target is c.target
    # What differs stays apart, and each check reads as it was written.
    assert c.settings == {} and c.labels == {"team": "payments", "tier": "1"} and c.labels is not a.labels
    assert a.settings == {"method": "HEAD"} and a.labels == {"team": "payments"}
    assert c.interval == 30.0 and a.interval == 60.0
    assert a.model_dump() == {**b.model_dump(), "name": "a"}
    assert "interval" in c.model_fields_set and "interval" not in a.model_fields_set


def test_the_yaml_document_is_the_same_after_compaction() -> None:
    text = yaml.safe_dump(
        {"checks": [{**HTTP, "when": datetime.date(2026, 1, 2), "data": b"\x00\x01", "n": [1, 2.5, None]}]}
    )
    assert _load_yaml(text, "x") == yaml.safe_load(text)
