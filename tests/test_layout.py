"""The layout's import rules, read from the source with ``ast`` (docs/architecture.md states them).

- A plugin imports from the agent only ``agent.sdk``; it imports other plugins only through the
  private helpers (``plugins._toolkit``, or a ``plugins._*`` module while the helpers move there).
- ``agent/sdk`` imports no implementation: the implementation imports the contract's data from it,
  and what a probe is handed is a protocol there. Anything it would import again is debt, listed
  below; the list may only shrink (an entry that is no longer needed fails the test, so it goes).
  ``agent/sdk/testing.py`` is the exception by design: it runs a probe through the agent's own
  loading, HTTP client, inbox and per-check state, and nothing in ``agent.sdk`` or ``plugins/``
  imports it.
- ``agent/server`` imports neither the scheduler nor OpenTelemetry; the inbound path (inbound and
  inbox) does not reach them through other modules either.
- Only ``agent/telemetry`` and the composition root (``agent/app.py``) import OpenTelemetry.

Every import counts: inside functions and under ``TYPE_CHECKING`` too.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from .helpers import ROOT

# What agent/sdk imports from the implementation today, by SDK module. The issue asks for an SDK
# with no implementation: the contract's data (Check, the inbound requests, the HTTP exchange and
# TLS types, durations, REDACTED) is defined in agent/sdk, and the agent's parts a probe is handed
# (Inbox, HTTP client and factory, redactor, secret resolver) are protocols there. An entry here is
# debt, to be paid by moving the type into agent/sdk (or a protocol there) and deleting the entry.
SDK_DEBT: dict[str, set[str]] = {}

# agent/sdk/testing.py runs a check as the agent does: by design, not debt.
TESTING_HARNESS = {
    "agent",  # __version__, for the HTTP client's User-Agent
    "agent.config.registry",  # the probe loaded and checked as its entry point would be
    "agent.config.settings",  # load_config: defaults, secrets, validate_target, Settings
    "agent.errors",  # ConfigError, PluginError, re-exported for a probe's tests
    "agent.net.http",  # HttpClientFactory
    "agent.server.inbox",  # Inbox
    "agent.state",  # ProbeStates: each check's ctx.state, kept and dropped as the agent does
}

# Plugins that import the agent beyond agent.sdk today, while the helpers move (module → imports).
PLUGIN_AGENT_DEBT: dict[str, set[str]] = {}  # none left: the failure map is part of the SDK

# Plugins that import another probe type's module today (module → imports).
PLUGIN_PLUGIN_DEBT: dict[str, set[str]] = {}  # none left: webhook's trigger steps moved to _toolkit

SERVER_FORBIDDEN = ("agent.schedule.scheduler", "opentelemetry")
INBOUND_PATH = ("agent.server.inbound", "agent.server.inbox")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(*folders: str) -> dict[str, Path]:
    found = {module_name(path): path for folder in folders for path in sorted((ROOT / folder).rglob("*.py"))}
    assert found, folders
    return found


def imports(name: str, path: Path) -> set[str]:
    """The modules ``path`` imports, relative imports made absolute; ``from m import x`` counts
    as ``m``, and also as ``m.x`` when that is a module of the project."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            out.add(source)
            for alias in node.names:
                candidate = f"{source}.{alias.name}"
                if _is_module(candidate):
                    out.add(candidate)
    return out


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (ROOT / relative.with_suffix(".py")).is_file() or (ROOT / relative / "__init__.py").is_file()


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


AGENT = modules("agent")
PLUGINS = modules("plugins")
GRAPH = {name: imports(name, path) for name, path in {**AGENT, **PLUGINS}.items()}


def offenders(found: dict[str, set[str]], allowed: dict[str, set[str]]) -> tuple[list[str], list[str]]:
    """Imports that break a rule and are not allowed; allowed ones that no longer happen."""
    new = [f"{m} imports {t}" for m, ts in sorted(found.items()) for t in sorted(ts - allowed.get(m, set()))]
    paid = [
        f"{m} no longer imports {t}"
        for m, ts in sorted(allowed.items())
        for t in sorted(ts - found.get(m, set()))
    ]
    return new, paid


def check(found: dict[str, set[str]], allowed: dict[str, set[str]]) -> None:
    new, paid = offenders(found, allowed)
    assert not new, "imports that break the layout:\n" + "\n".join(new)
    assert not paid, "debt paid: remove these from the allow-list in tests/test_layout.py:\n" + "\n".join(
        paid
    )


def breaking(names: Iterable[str], rule: Callable[[str, str], bool]) -> dict[str, set[str]]:
    out = {}
    for name in names:
        bad = {target for target in GRAPH[name] if rule(name, target)}
        if bad:
            out[name] = bad
    return out


def test_plugins_import_only_the_sdk_from_the_agent() -> None:
    found = breaking(PLUGINS, lambda _, target: under(target, "agent") and target != "agent.sdk")
    check(found, PLUGIN_AGENT_DEBT)


def test_plugins_import_other_plugins_only_through_the_private_helpers() -> None:
    def rule(_: str, target: str) -> bool:
        if not under(target, "plugins"):
            return False
        # plugins._toolkit.* and, while the move is under way, the plugins._* helper modules.
        return target == "plugins" or not target.split(".")[1].startswith("_")

    check(breaking(PLUGINS, rule), PLUGIN_PLUGIN_DEBT)


def test_the_sdk_imports_no_implementation_beyond_its_known_debt() -> None:
    sdk = [name for name in AGENT if under(name, "agent.sdk") and name != "agent.sdk.testing"]
    found = breaking(sdk, lambda _, target: under(target, "agent") and not under(target, "agent.sdk"))
    check(found, SDK_DEBT)


def test_the_testing_harness_stays_out_of_the_sdk_and_the_plugins() -> None:
    harness = {t for t in GRAPH["agent.sdk.testing"] if under(t, "agent") and not under(t, "agent.sdk")}
    assert harness == TESTING_HARNESS
    users = [name for name, targets in GRAPH.items() if "agent.sdk.testing" in targets]
    assert users == []


def test_the_server_imports_neither_the_scheduler_nor_opentelemetry() -> None:
    server = [name for name in AGENT if under(name, "agent.server")]
    found = breaking(server, lambda _, target: any(under(target, f) for f in SERVER_FORBIDDEN))
    check(found, {})


def test_only_telemetry_and_the_composition_root_import_opentelemetry() -> None:
    users = {name for name, targets in GRAPH.items() if any(under(t, "opentelemetry") for t in targets)}
    assert users, "the reader sees the recorder's imports"
    assert {name for name in users if not under(name, "agent.telemetry")} == {"agent.app"}


def reach(start: str) -> tuple[set[str], list[str]]:
    """The project modules ``start`` imports, directly or not, and the chains to forbidden ones."""
    seen, todo, path = {start}, [start], {start: [start]}
    reached = []
    while todo:
        name = todo.pop()
        for target in sorted(GRAPH.get(name, ())):
            if any(under(target, f) for f in SERVER_FORBIDDEN):
                reached.append(" → ".join([*path[name], target]))
            elif target in GRAPH and target not in seen:
                seen.add(target)
                path[target] = [*path[name], target]
                todo.append(target)
    return seen, reached


@pytest.mark.parametrize("start", INBOUND_PATH)
def test_the_inbound_path_does_not_reach_them_through_other_modules(start: str) -> None:
    _, reached = reach(start)
    assert not reached, "\n".join(reached)


EXAMPLE = ROOT / "examples" / "probe"


def test_the_example_probe_imports_only_the_sdk_and_its_testing_helpers() -> None:
    found: dict[str, set[str]] = {}
    for path in sorted(EXAMPLE.rglob("*.py")):
        allowed = (
            {"agent.sdk", "agent.sdk.testing"}
            if "tests" in path.relative_to(EXAMPLE).parts
            else {"agent.sdk"}
        )
        agent = {t for t in imports(module_name(path), path) if under(t, "agent")}
        found[str(path.relative_to(EXAMPLE))] = agent
        assert agent <= allowed, f"{path.relative_to(ROOT)} imports {sorted(agent - allowed)}"
    # Not vacuous: the probe and its test were read, and they do use the SDK.
    assert found["vantage_redis/probe.py"] == {"agent.sdk"}
    assert found["tests/test_redis_ping.py"] == {"agent.sdk", "agent.sdk.testing"}


def test_the_reader_finds_the_imports_it_must() -> None:
    # The rules above pass as easily on a reader that sees nothing: show that this one sees.
    assert {"agent.sdk", "plugins._toolkit.net"} <= GRAPH["plugins.tcp"]
    assert "agent.sdk.probe" in GRAPH["agent.sdk"]  # from agent.sdk.probe import *
    assert "agent.sdk.http" in GRAPH["agent.sdk.probe"]
    assert "agent.sdk.probe" in GRAPH["agent.config.checks"]  # an import under TYPE_CHECKING
    assert "agent.sdk.types" in GRAPH["agent.config.checks"]  # the implementation imports the SDK
    assert "agent.server.inbox" in GRAPH["agent.server.inbound"]
    assert breaking(["plugins.tcp"], lambda _, target: target == "agent.sdk") == {
        "plugins.tcp": {"agent.sdk"}
    }
