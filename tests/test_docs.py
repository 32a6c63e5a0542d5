"""The check examples in the documentation load: a doc that drifts from the code fails here."""

from __future__ import annotations

import re

import pytest
import yaml

from agent.errors import ConfigError

from .helpers import ROOT, config_from

DOCUMENTS = [ROOT / "README.md", ROOT / "docs" / "configuration.md", ROOT / "docs" / "deployment.md"]


def examples() -> list[tuple[str, str]]:
    found = []
    for document in DOCUMENTS:
        if not document.exists():
            continue
        for block in re.findall(r"```yaml\n(.*?)```", document.read_text(), re.S):
            if block.lstrip().startswith("- name:"):
                found.append((f"{document.name}: {block.splitlines()[0]}", block))
    return found


@pytest.mark.parametrize(("where", "block"), examples(), ids=[where for where, _ in examples()])
def test_example_checks_load(where: str, block: str) -> None:
    env = {name: "s3cret-value-0123456789" for name in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", block)}
    try:
        config_from(yaml.safe_load(block), **env)
    except ConfigError as exc:
        # Examples may name files of the reader's machine (a CA bundle); everything else must hold.
        problems = [line for line in str(exc).splitlines() if "does not exist or is not a file" not in line]
        assert not problems, "\n".join(problems)


def test_there_are_examples() -> None:
    assert len(examples()) >= 8


def test_the_make_run_example_loads() -> None:
    # The variables examples/run.sh exports.
    env = {
        "SANDBOX_API_KEY": "sk_test_sandbox",
        "SANDBOX_CLIENT_SECRET": "sandbox-client-secret",
        "SANDBOX_WEBHOOK_SECRET": "whsec_sandbox_0123456789",
        "SANDBOX_JOB_TOKEN": "sandbox-job-token-0123",
        "VANTAGE_PUBLIC_URL": "http://127.0.0.1:8080",
    }
    config = config_from(yaml.safe_load((ROOT / "examples" / "checks.yaml").read_text()), **env)
    entries = {entry.check.name: entry for entry in config.entries}
    assert {entry.check.type for entry in config.entries} >= {
        "http",
        "flow",
        "webhook",
        "heartbeat",
        "sync",
        "statuspage",
    }
    # Issue 15's features, as the README's tour describes them.
    flaky = entries["sandbox-flaky"].check
    assert (flaky.retries, flaky.failure_threshold) == (1, 2)
    assert entries["sandbox-orders"].check.down_interval == 5
    assert {name for name, entry in entries.items() if entry.maintenance} == {
        "sandbox-order-sync",
        "sandbox-erp-freshness",
    }
    vendor = entries["sandbox-status"].check.labels["vendor"]
    assert vendor == entries["sandbox-charges"].check.labels["vendor"]
    assert entries["sandbox-order-sync"].settings.schedule == "* * * * *"
