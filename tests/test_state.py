"""Per-check state owned by the agent (``agent/state.py``): what a probe keeps for a check lives in
that check's ``ctx.state``, survives across its runs, is never shared with another check, and goes
when the check goes; no probe instance keeps a dictionary keyed by check name."""

from __future__ import annotations

import ast
import gc
import weakref
from collections.abc import Callable

import anyio
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agent.app import build_agent
from agent.sdk import ProbeState, Reason
from agent.sdk.testing import ProbeTester
from agent.state import CheckSlots, ProbeStates
from plugins.http import HttpProbe

from .helpers import ROOT, config_from, serve
from .inbound import running_agent
from .test_http_auth import CLIENT_SECRET, Vendor, oauth
from .test_http_probe import TELEMETRY_ENV, http_check
from .test_http_schema import V1, V2
from .test_http_schema import Vendor as ShapeVendor
from .test_webhook_probe import SECRET, vendor, webhook


class Box:
    """Something a probe keeps for a check."""

    def __init__(self) -> None:
        self.runs = 0


class Other:
    pass


# --- the slots of one check: the agent's and the testing harness's keep the same contract ---


def state_of_a_tester() -> ProbeState:
    """A check's ``ctx.state`` as ``ProbeTester`` hands it to a probe's own tests."""
    return ProbeTester(HttpProbe).state("one")


IMPLEMENTATIONS: list[Callable[[], ProbeState]] = [CheckSlots, state_of_a_tester]


@pytest.mark.parametrize("make", IMPLEMENTATIONS, ids=["agent", "tester"])
def test_one_object_per_kind_made_once(make: Callable[[], ProbeState]) -> None:
    state = make()
    made: list[Box] = []

    def factory() -> Box:
        made.append(Box())
        return made[-1]

    first = state.get(Box, factory)
    first.runs += 1
    again = state.get(Box, factory)
    assert again is first and again.runs == 1
    assert len(made) == 1  # the factory ran once
    assert state.get(Box) is first  # the kind names the slot, whatever the factory
    other = state.get(Other)
    assert isinstance(other, Other) and other is not first


@pytest.mark.parametrize("make", IMPLEMENTATIONS, ids=["agent", "tester"])
def test_a_factory_that_makes_the_wrong_type_is_refused(make: Callable[[], ProbeState]) -> None:
    state = make()
    with pytest.raises(TypeError, match="the factory for Box made a Other"):
        state.get(Box, Other)  # type: ignore[arg-type]
    assert isinstance(state.get(Box), Box)  # nothing wrong was kept


# --- the agent's states: per check, dropped with the check ---


def test_two_checks_never_share_a_slot() -> None:
    states = ProbeStates()
    assert states.of("a") is states.of("a")
    assert states.of("a") is not states.of("b")
    a, b = states.of("a").get(Box), states.of("b").get(Box)
    a.runs = 5
    assert b is not a and b.runs == 0
    assert sorted(name for name in ("a", "b", "c") if name in states) == ["a", "b"]


def test_retain_and_drop_release_a_removed_checks_state() -> None:
    states = ProbeStates()
    kept, removed, dropped = (states.of(name).get(Box) for name in ("kept", "removed", "dropped"))
    refs = {
        name: weakref.ref(box) for name, box in (("kept", kept), ("removed", removed), ("dropped", dropped))
    }
    del removed, dropped

    assert states.retain(["kept", "dropped", "never-ran"]) == ["removed"]
    states.drop("dropped")
    states.drop("never-ran")  # a check with no state: nothing to do
    gc.collect()

    assert refs["removed"]() is None and refs["dropped"]() is None  # nothing else held them
    assert refs["kept"]() is kept and states.of("kept").get(Box) is kept
    assert len(states) == 1 and "removed" not in states
    assert states.of("removed").get(Box).runs == 0  # back under the same name: fresh


# --- real probes: dropping a check's state makes its next run start fresh ---


@pytest.mark.anyio
async def test_an_oauth_token_is_kept_per_check_and_goes_with_the_check() -> None:
    api = Vendor()
    async with serve(api.app()) as port:
        settings = {"auth": oauth(port)}
        checks = [
            http_check("orders", f"http://127.0.0.1:{port}/orders", **settings),
            http_check("twin", f"http://127.0.0.1:{port}/orders", **settings),
        ]
        exporter = InMemorySpanExporter()
        agent = build_agent(
            config_from(checks, CLIENT_SECRET=CLIENT_SECRET),
            TELEMETRY_ENV,
            span_processors=[SimpleSpanProcessor(exporter)],
        )
        try:
            await agent.scheduler.run_once()
            first = len(api.issued)
            await agent.scheduler.run_once()
            kept = len(api.issued)
            agent.states.drop("orders")
            await agent.scheduler.run_once()
            results = {name: state.last for name, state in agent.recorder.states.items()}
        finally:
            await agent.http.aclose()
    assert first == 2  # one token per check: the twin with the same client does not share it
    assert kept == 2  # the second run used the tokens kept in each check's state
    assert len(api.issued) == 3  # the dropped check fetched a new one; the twin did not
    assert all(result is not None and result.success for result in results.values()), results


@pytest.mark.anyio
async def test_a_schema_baseline_goes_with_the_check() -> None:
    # Without a state directory the baseline lives only in the check's state: dropped, the next
    # response becomes the new baseline; kept, the changed shape is a drift.
    api = ShapeVendor()
    async with serve(api.app()) as port:
        url = f"http://127.0.0.1:{port}/charges"
        checks = [http_check(name, url, schema_drift={"fail": True}) for name in ("kept", "dropped")]
        agent = build_agent(config_from(checks), TELEMETRY_ENV)
        try:
            api.body = V1
            await agent.scheduler.run_once()
            agent.states.drop("dropped")
            api.body = V2
            await agent.scheduler.run_once()
            results = {name: state.last for name, state in agent.recorder.states.items()}
        finally:
            await agent.http.aclose()
    kept, dropped = results["kept"], results["dropped"]
    assert kept is not None and kept.reason is Reason.SCHEMA, kept
    assert kept.values["probe.schema.drift"] == 1.0
    assert dropped is not None and dropped.success, dropped.message
    assert "probe.schema.drift" not in dropped.values


@pytest.mark.anyio
async def test_a_probe_testers_forget_drops_the_state_as_the_agent_does() -> None:
    api = Vendor()
    async with serve(api.app()) as port:
        check = http_check("orders", f"http://127.0.0.1:{port}/orders", auth=oauth(port))
        environ = {"CLIENT_SECRET": CLIENT_SECRET}
        async with ProbeTester(HttpProbe, environ=environ) as tester:
            for _ in range(2):
                assert (await tester.run(check)).success
            assert len(api.issued) == 1
            tester.forget("orders")
            assert (await tester.run(check)).success
    assert len(api.issued) == 2


@pytest.mark.anyio
async def test_a_webhook_checks_awaited_run_ids_go_with_its_state() -> None:
    # Both checks' first runs give up before their (late) deliveries; those arrive between runs.
    # The check that kept its state knows the run id it gave up on (the delivery is "late", its
    # latency recorded); the one whose state was dropped starts fresh and knows none ("unmatched").
    app, _ = vendor()
    async with serve(app) as port:
        checks = [webhook("kept", port, "late"), webhook("dropped", port, "late")]
        async with running_agent(checks, WHSEC=SECRET) as running:
            first = await running.run_once()
            with anyio.fail_after(10):
                for name in ("kept", "dropped"):
                    await running.agent.inbox.wait(name, 0)
            assert len(running.agent.states.of("dropped")) > 0
            running.agent.states.drop("dropped")
            second = await running.run_once()
    assert first["kept"].reason is Reason.NOT_DELIVERED and first["dropped"].reason is Reason.NOT_DELIVERED

    def outcomes(name: str) -> list[str]:
        return [
            str(sample.labels["outcome"])
            for sample in second[name].samples
            if sample.metric == "probe.webhook.deliveries"
        ]

    assert "late" in outcomes("kept") and "unmatched" not in outcomes("kept")
    assert "unmatched" in outcomes("dropped") and "late" not in outcomes("dropped")
    assert any(s.metric == "probe.webhook.delivery" for s in second["kept"].samples)
    assert not any(s.metric == "probe.webhook.delivery" for s in second["dropped"].samples)


# --- no probe instance keeps a dictionary keyed by check name ---

# Mappings a probe may hold because they are shared across checks and bounded, with why.
SHARED: dict[str, str] = {
    # Keyed by OpenAPI document URL, and weak: it holds only documents that a live check holds in
    # its own ctx.state, so that checks naming one URL fetch and parse it once, and a document goes
    # with the last check that uses it.
    "HttpProbe._documents": "WeakValueDictionary by document URL",
}

_MAPPING_CALLS = {"dict", "OrderedDict", "defaultdict", "Counter", "WeakValueDictionary", "WeakKeyDictionary"}
_MAPPING_NAMES = (
    "dict",
    "Dict",
    "Mapping",
    "OrderedDict",
    "defaultdict",
    "Counter",
    "WeakValueDictionary",
    "WeakKeyDictionary",
)


def _called(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        return (
            func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        )
    return None


def _is_mapping(annotation: ast.expr | None, value: ast.expr | None) -> bool:
    if isinstance(value, ast.Dict | ast.DictComp) or _called(value) in _MAPPING_CALLS:
        return True
    if annotation is not None:
        text = ast.unparse(annotation)
        return any(name in text.replace(".", " ").replace("[", " ").split() for name in _MAPPING_NAMES)
    return False


def _init_attributes(cls: ast.ClassDef) -> list[tuple[str, ast.expr | None, ast.expr | None]]:
    """``(name, annotation, value)`` of each ``self.name`` assigned in ``__init__``."""
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
    found: list[tuple[str, ast.expr | None, ast.expr | None]] = []
    for node in ast.walk(init) if init else ():
        targets: list[ast.expr] = []
        annotation: ast.expr | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, annotation, value = [node.target], node.annotation, node.value
        else:
            continue
        for target in targets:
            pairs: list[tuple[ast.expr, ast.expr | None]] = [(target, value)]
            if isinstance(target, ast.Tuple):  # self.a, self.b = A(), {}
                values = value.elts if isinstance(value, ast.Tuple) else [None] * len(target.elts)
                pairs = list(zip(target.elts, values, strict=True))
            for element, assigned in pairs:
                if isinstance(element, ast.Attribute) and ast.unparse(element.value) == "self":
                    found.append((element.attr, annotation, assigned))
    return found


def held_mappings(sources: dict[str, str]) -> dict[str, list[str]]:
    """For each ``Probe`` subclass in ``sources`` (module → text), the mappings its instance
    holds from ``__init__``: its own, and those of the objects of plugin classes it makes there,
    as ``Class.attribute`` paths."""
    classes = {
        node.name: node
        for text in sources.values()
        for node in ast.walk(ast.parse(text))
        if isinstance(node, ast.ClassDef)
    }

    def mappings(name: str, seen: frozenset[str]) -> list[str]:
        out: list[str] = []
        for attribute, annotation, value in _init_attributes(classes[name]):
            made = _called(value)
            if _is_mapping(annotation, value):
                out.append(f"{name}.{attribute}")
            elif made in classes and made not in seen:
                out.extend(f"{name}.{attribute} → {path}" for path in mappings(made, seen | {made}))
        return out

    def is_probe(cls: ast.ClassDef) -> bool:
        return any(ast.unparse(base).split("[")[0] == "Probe" for base in cls.bases)

    return {name: mappings(name, frozenset({name})) for name, cls in classes.items() if is_probe(cls)}


def plugin_sources() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text() for path in sorted((ROOT / "plugins").rglob("*.py"))
    }


def test_no_probe_keeps_a_dictionary_keyed_by_check_name() -> None:
    found = held_mappings(plugin_sources())
    # Not vacuous: the scan sees every probe type, and sees what it must.
    assert {"HttpProbe", "FlowProbe", "SyncProbe", "WebhookProbe", "HeartbeatProbe", "TcpProbe"} <= set(found)
    held = {path: probe for probe, paths in found.items() for path in paths}
    assert not {path: probe for path, probe in held.items() if path not in SHARED}, held
    assert set(SHARED) <= set(held), "an allowed shared cache is gone: remove it from SHARED"
    assert isinstance(HttpProbe()._documents, weakref.WeakValueDictionary)


def test_the_scan_finds_the_old_singleton_dictionaries() -> None:
    # What the probes held before their state moved to ctx.state: each is found, through the
    # object that holds it too.
    old = {
        "old.py": """
class TokenCache:
    def __init__(self) -> None:
        self._tokens: dict[tuple[str, str], str] = {}

class StepRunner:
    def __init__(self) -> None:
        self._tokens = TokenCache()

class WebhookProbe(Probe[WebhookSettings]):
    def __init__(self) -> None:
        self._trigger = StepRunner()
        self._trackers: dict[str, _DeliveriesSeen] = {}

class HttpProbe(Probe[HttpSettings]):
    def __init__(self) -> None:
        self._tokens, self._documents = TokenCache(), {}

class Helper:
    def __init__(self) -> None:
        self._cache = {}
"""
    }
    assert held_mappings(old) == {
        "WebhookProbe": [
            "WebhookProbe._trigger → StepRunner._tokens → TokenCache._tokens",
            "WebhookProbe._trackers",
        ],
        "HttpProbe": ["HttpProbe._tokens → TokenCache._tokens", "HttpProbe._documents"],
    }
    # The real TokenCache still holds a dictionary: only no probe holds it any more.
    auth = (ROOT / "plugins" / "_toolkit" / "auth.py").read_text()
    cache = next(
        n for n in ast.walk(ast.parse(auth)) if isinstance(n, ast.ClassDef) and n.name == "TokenCache"
    )
    assert [
        name for name, annotation, value in _init_attributes(cache) if _is_mapping(annotation, value)
    ] == ["_tokens"]


@pytest.mark.anyio
async def test_forgetting_a_check_drops_all_the_agent_holds_for_it() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from agent.sdk import InboundRequest

    api = Vendor()
    async with serve(api.app()) as port:
        settings = {"auth": oauth(port)}
        checks = [
            http_check("gone", f"http://127.0.0.1:{port}/orders", **settings),
            http_check("kept", f"http://127.0.0.1:{port}/orders", **settings),
        ]
        agent = build_agent(config_from(checks, CLIENT_SECRET=CLIENT_SECRET), TELEMETRY_ENV)
        try:
            await agent.scheduler.run_once()
            for name in ("gone", "kept"):
                agent.inbox.deliver(
                    InboundRequest("hooks", name, "POST", {}, {}, b"{}", "127.0.0.1", 0.0, 0.0)
                )
            from plugins._toolkit.auth import TokenCache

            slot = weakref.ref(agent.states.of("gone").get(TokenCache))
            agent.forget("gone")
            gc.collect()
            text = agent.telemetry.render_prometheus().decode()
        finally:
            await agent.http.aclose()
    series = {
        sample.labels.get("check")
        for family in text_string_to_metric_families(text)
        if family.type in ("gauge", "counter")
        for sample in family.samples
    }
    assert "kept" in series and "gone" not in series
    assert set(agent.recorder.states) == {"kept"}
    assert agent.inbox.after("gone", 0) == [] and len(agent.inbox.after("kept", 0)) == 1
    assert slot() is None  # the probe's state (its token cache) went with it
