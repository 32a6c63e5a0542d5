"""The statuspage probe against a local server serving Atlassian Statuspage summaries.

The documents in ``tests/fixtures/statuspage/`` are in the format a Statuspage page serves at
``/api/v2/summary.json`` (the page, its components with their groups, the unresolved incidents,
the scheduled maintenances and the page's ``status.indicator``): every component operational; a
major outage with its incident (and a minor one elsewhere); a maintenance in progress; regions as
groups whose members share names. Then what a page should never send: HTML, other JSON, a 404, a
body over the cap.
"""

from __future__ import annotations

import copy
import json
import ssl
import subprocess
import tomllib
from collections.abc import AsyncIterator
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.app import build_agent
from agent.config.registry import GROUP, Registry
from agent.config.settings import load_config
from agent.errors import ConfigError
from agent.sdk import ProbeResult, Reason
from agent.sdk.testing import ProbeTester
from plugins.statuspage import MAX_BODY, MAX_COMPONENTS, StatuspageProbe

from .deploy import need
from .helpers import ROOT, serve

pytestmark = pytest.mark.anyio

FIXTURES = ROOT / "tests" / "fixtures" / "statuspage"
SUMMARY = "/api/v2/summary.json"


def fixture(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return document


class Page:
    """What the local status page answers at /api/v2/summary.json; the test changes it."""

    def __init__(self) -> None:
        self.body: bytes = b""
        self.status = 200
        self.content_type = "application/json"
        self.headers: dict[str, str] = {}
        self.requests: list[str] = []
        self.proxied: list[bool] = []

    def serve(self, document: Any) -> None:
        self.body, self.status, self.content_type = json.dumps(document).encode(), 200, "application/json"

    def app(self) -> web.Application:
        async def summary(request: web.Request) -> web.Response:
            self.requests.append(request.path)
            self.proxied.append("Proxy-Authorization" in request.headers)
            return web.Response(
                body=self.body, status=self.status, content_type=self.content_type, headers=self.headers
            )

        async def moved(_: web.Request) -> web.Response:
            raise web.HTTPMovedPermanently(f"/new{SUMMARY}")

        app = web.Application()
        app.router.add_get(SUMMARY, summary)
        app.router.add_get(f"/new{SUMMARY}", summary)
        app.router.add_get(f"/old{SUMMARY}", moved)
        return app


@pytest.fixture
async def page() -> AsyncIterator[tuple[Page, int]]:
    state = Page()
    async with serve(state.app()) as port:
        yield state, port


def check(port: int, path: str = "", **settings: Any) -> dict[str, Any]:
    return {
        "name": "vendor-says",
        "target": f"http://127.0.0.1:{port}{path}",
        "interval": "1m",
        "timeout": "5s",
        "labels": {"vendor": "acme"},
        "settings": settings,
    }


async def run(
    port: int, path: str = "", environ: dict[str, str] | None = None, **settings: Any
) -> ProbeResult:
    async with ProbeTester(StatuspageProbe, environ=environ) as tester:
        return await tester.run(check(port, path, **settings))


async def run_check(document: dict[str, Any]) -> ProbeResult:
    async with ProbeTester(StatuspageProbe) as tester:
        return await tester.run(document)


def statuses(result: ProbeResult) -> dict[str, float]:
    return {sample.labels["component"]: sample.value for sample in result.samples}


# ---------------------------------------------------------------- what the vendor declares


async def test_every_component_operational(page: tuple[Page, int]) -> None:
    state, port = page
    state.serve(fixture("operational"))
    result = await run(port)
    assert result.success, result.message
    assert statuses(result) == {"Payments API": 0, "Dashboard": 0, "Webhooks": 0, "Checkout": 0}
    assert result.values == {"probe.vendor.incidents": 0, "probe.vendor.indicator": 0}
    assert result.events == ()
    assert result.attributes["vantage.vendor.page"] == "Acme Payments"
    assert state.requests == [SUMMARY]  # one request: the summary holds the unresolved incidents


async def test_a_major_outage_names_the_component_and_its_incident(page: tuple[Page, int]) -> None:
    state, port = page
    state.serve(fixture("outage"))
    result = await run(port)
    assert not result.success
    assert result.reason is Reason.VENDOR_OUTAGE
    assert result.message == (
        "the vendor declares a major outage of Payments API: 'Elevated error rates' (and 1 more unresolved)"
    )
    assert statuses(result) == {"Payments API": 4, "Dashboard": 0, "Webhooks": 2, "Checkout": 0}
    assert result.values == {"probe.vendor.incidents": 2, "probe.vendor.indicator": 2}
    incidents = [dict(event.attributes) for event in result.events if event.name == "vendor_incident"]
    assert incidents == [
        {"vantage.vendor.name": "Delayed webhook deliveries", "vantage.vendor.status": "monitoring",
         "vantage.vendor.impact": "minor", "vantage.vendor.url": "https://stspg.io/z5m2xk8r1bqd"},
        {"vantage.vendor.name": "Elevated error rates", "vantage.vendor.status": "identified",
         "vantage.vendor.impact": "major", "vantage.vendor.url": "https://stspg.io/p31zjtct2jer"},
    ]  # fmt: skip

    # Degraded performance is below the default threshold; fail_on lowers it, and the incident
    # named is still the one that concerns the worst component.
    lowered = await run(port, fail_on="degraded_performance")
    assert lowered.message == (
        "the vendor declares a major outage of Payments API and degraded performance of Webhooks: "
        "'Elevated error rates' (and 1 more unresolved)"
    )
    # Only major outages: Payments API still fails the check.
    assert (await run(port, fail_on="major_outage")).reason is Reason.VENDOR_OUTAGE

    # Watching what is up: the check passes, and only the watched components are exported.
    watched = await run(port, components=["Dashboard", "checkout"])
    assert watched.success, watched.message
    assert statuses(watched) == {"Dashboard": 0, "Checkout": 0}
    assert watched.values["probe.vendor.incidents"] == 2  # the page's, whatever is watched

    # A watched degraded component alone names its own incident, not the page's worst.
    webhooks = await run(port, components=["Web*"], fail_on="degraded_performance")
    assert webhooks.message == (
        "the vendor declares degraded performance of Webhooks: 'Delayed webhook deliveries' "
        "(and 1 more unresolved)"
    )


async def test_a_maintenance_in_progress(page: tuple[Page, int]) -> None:
    state, port = page
    state.serve(fixture("maintenance"))
    result = await run(port)
    # The vendor marked Checkout as a major outage for its planned downtime: an outage all the same.
    assert result.reason is Reason.VENDOR_OUTAGE
    assert (
        result.message
        == "the vendor declares a major outage of Checkout during its maintenance 'Database upgrade'"
    )
    assert statuses(result) == {"Payments API": 0, "Dashboard": 1, "Webhooks": 0, "Checkout": 4}
    # "maintenance" is no incident indicator: with no incident open, 0.
    assert result.values == {"probe.vendor.incidents": 0, "probe.vendor.indicator": 0}
    assert result.attributes["vantage.vendor.indicator"] == "maintenance"
    assert [(e.name, e.attributes["vantage.vendor.status"]) for e in result.events] == [
        ("vendor_maintenance", "in_progress"),
        ("vendor_maintenance", "scheduled"),
    ]

    excused = await run(port, ignore_maintenance=True)
    assert excused.success, excused.message
    assert statuses(excused)["Checkout"] == 4  # still exported as the vendor says it

    # fail_on: under_maintenance fails on any status but operational; ignore_maintenance excuses
    # only the components of a maintenance in progress.
    strict = await run(port, fail_on="under_maintenance")
    assert strict.message == (
        "the vendor declares a major outage of Checkout and maintenance of Dashboard "
        "during its maintenance 'Database upgrade'"
    )
    upcoming = fixture("maintenance")
    upcoming["components"][2]["status"] = "under_maintenance"  # Webhooks: its maintenance is next week
    state.serve(upcoming)
    strict = await run(port, fail_on="under_maintenance", ignore_maintenance=True)
    assert strict.message == "the vendor declares maintenance of Webhooks"


async def test_groups_members_and_containers(page: tuple[Page, int]) -> None:
    state, port = page
    state.serve(fixture("grouped"))
    result = await run(port)
    # Members that share a name are told apart by their group; the containers are left out.
    assert statuses(result) == {
        "North America / API": 0,
        "North America / Card processing": 3,
        "Europe / API": 0,
        "Europe / Card processing": 0,
        "Sandbox": 0,
    }
    assert result.message == (
        "the vendor declares a partial outage of North America / Card processing: "
        "'Card declines in North America'"
    )
    assert result.values["probe.vendor.indicator"] == 1

    # A group named stands for its members.
    europe = await run(port, components=["Europe"])
    assert europe.success, europe.message
    assert statuses(europe) == {"Europe / API": 0, "Europe / Card processing": 0}
    # A glob over qualified names.
    cards = await run(port, components=["* / Card processing"])
    assert set(statuses(cards)) == {"North America / Card processing", "Europe / Card processing"}
    # With groups, the containers are watched (and exported) too.
    everything = await run(port, groups=True)
    assert statuses(everything)["North America"] == 3
    assert statuses(everything)["Europe"] == 0
    assert len(everything.samples) == 7
    only = await run(port, components=["Europe"], groups=True)
    assert statuses(only) == {"Europe": 0, "Europe / API": 0, "Europe / Card processing": 0}


async def test_names_the_page_does_not_have(page: tuple[Page, int]) -> None:
    state, port = page
    state.serve(fixture("outage"))
    result = await run(port, components=["Payment API", "Ledger", "Web*", "Bank*"])
    assert result.reason is Reason.ASSERTION
    assert result.message == (
        "the status page has no components named 'Payment API' (did you mean 'Payments API'?), "
        "'Ledger', 'Bank*'; it has Checkout, Dashboard, Payments API, Webhooks"
    )
    # What was found is exported all the same.
    assert statuses(result) == {"Webhooks": 2}
    assert result.values["probe.vendor.incidents"] == 2
    one = await run(port, components=["dashbord"])
    assert one.message.startswith(
        "the status page has no component named 'dashbord' (did you mean 'Dashboard'?);"
    )


async def test_components_over_the_cap_are_judged_but_not_exported(page: tuple[Page, int]) -> None:
    state, port = page
    document = fixture("operational")
    template = document["components"][0]
    document["components"] = [
        {**template, "id": f"c{index:05d}", "name": f"Region {index}"} for index in range(MAX_COMPONENTS + 50)
    ]
    document["components"][-1]["status"] = "major_outage"  # beyond the cap, still judged
    state.serve(document)
    result = await run(port)
    assert len(result.samples) == MAX_COMPONENTS
    assert "Region 0" in statuses(result) and f"Region {MAX_COMPONENTS}" not in statuses(result)
    assert result.attributes["vantage.vendor.components_not_exported"] == 50
    assert result.message == f"the vendor declares a major outage of Region {MAX_COMPONENTS + 49}"


async def test_what_the_vendor_writes_is_bounded_and_harmless(page: tuple[Page, int]) -> None:
    state, port = page
    document = fixture("outage")
    document["incidents"][1]["name"] = "Errors\n\x1b[31mfor card " + "x" * 5000
    document["incidents"] *= 20  # 40 incidents
    state.serve(document)
    result = await run(port)
    assert result.reason is Reason.VENDOR_OUTAGE
    assert "\n" not in result.message and "\x1b" not in result.message
    assert "'Errors [31mfor card xxx" in result.message  # control characters folded at read
    assert len(result.message) < 300
    assert result.values["probe.vendor.incidents"] == 40
    assert len(result.events) == 20
    assert all(len(str(e.attributes["vantage.vendor.name"])) <= 121 for e in result.events)


async def test_a_secret_in_the_vendors_words_is_redacted(page: tuple[Page, int]) -> None:
    state, port = page
    secret = "proxy-pass-0123456789"
    document = fixture("outage")
    document["incidents"][1]["name"] = f"Leaked {secret} in logs"
    state.serve(document)
    # The proxy's password registers the secret; the "proxy" is the page itself (it serves the
    # absolute-form request's path like any other).
    proxy = f"http://user:${{PROXY_PASSWORD}}@127.0.0.1:{port}"
    result = await run(port, environ={"PROXY_PASSWORD": secret}, proxy_url=proxy)
    assert result.reason is Reason.VENDOR_OUTAGE, result.message
    assert state.proxied == [True]  # through the proxy, with its credentials
    assert secret not in result.message and "<redacted>" in result.message
    for event in result.events:
        assert secret not in str(event.attributes)


# ---------------------------------------------------------------- what a page should never send


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"page": {"name": "Acme"', "application/json", "the response is not JSON"),
        (b"<!DOCTYPE html><html><body>Status</body></html>", "text/html", "the response is HTML, not JSON"),
        (b"  <html><body>Status</body></html>", "application/json", "the response is HTML, not JSON"),
        (b"[]", "application/json", "the response is a JSON array, not a summary object"),
        (b'{"components": []}', "application/json", "the summary has no status.indicator"),
        (b'{"status": {"indicator": "none"}}', "application/json", "the summary has no components list"),
        (b'{"status": {"indicator": "on_fire"}, "components": []}', "application/json",
         "status.indicator is 'on_fire', not one Statuspage uses"),
        (b'{"status": {"indicator": "none"}, "components": [{"name": "API", "status": "meh"}]}',
         "application/json", "component 'API' has the status 'meh', not one of operational, "),
        (b'{"status": {"indicator": "none"}, "components": [{"status": "operational"}]}',
         "application/json", "components[0] has no name"),
        (b'{"status": {"indicator": "none"}, "components": [7]}', "application/json",
         "components[0] is a JSON number, not an object"),
        (b'{"status": {"indicator": "none"}, "components": [], "incidents": {}}', "application/json",
         "incidents is a JSON object, not a list"),
        (b'{"status": {"indicator": "none"}, "components": [], "incidents": [{"id": "x"}]}',
         "application/json", "incidents[0] has no name"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "the response is not JSON"),
    ],
    ids=[
        "truncated-json", "html", "html-as-json", "array", "no-indicator", "no-components",
        "unknown-indicator", "unknown-status", "nameless", "not-an-object", "incidents-object",
        "incident-nameless", "nested",
    ],
)  # fmt: skip
async def test_a_page_that_is_not_a_summary(
    page: tuple[Page, int], body: bytes, content_type: str, expected: str
) -> None:
    state, port = page
    state.body, state.content_type = body, content_type
    result = await run(port)
    assert result.reason is Reason.PROTOCOL
    assert result.message.startswith(f"{SUMMARY}: {expected}"), result.message
    assert result.samples == () and result.values == {}


async def test_http_answers_that_are_not_a_summary(page: tuple[Page, int]) -> None:
    state, port = page
    state.status, state.body, state.content_type = 404, b'{"error": "not found"}', "application/json"
    result = await run(port)
    assert result.reason is Reason.HTTP_STATUS
    assert result.message == "HTTP 404 (expected 2xx) (is the target an Atlassian Statuspage page?)"

    state.status, state.headers = 429, {"Retry-After": "120"}
    limited = await run(port)
    assert limited.reason is Reason.RATE_LIMITED
    assert limited.retry_after == 120

    state.status, state.headers = 200, {}
    state.body = b'{"status": {"indicator": "none"}, "components": [], "pad": "' + b"x" * MAX_BODY + b'"}'
    huge = await run(port)
    assert huge.reason is Reason.PROTOCOL
    assert huge.message == f"{SUMMARY}: the response is over 4 MiB, more than a summary ever is"


async def test_redirects_are_followed(page: tuple[Page, int]) -> None:
    state, port = page
    state.serve(fixture("operational"))
    result = await run(port, "/old")
    assert result.success, result.message
    assert state.requests == [f"/new{SUMMARY}"]


async def test_over_tls_with_the_checks_own_ca(ca: trustme.CA, ca_file: Path) -> None:
    state = Page()
    state.serve(fixture("operational"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("status.acme.test").configure_cert(context)
    async with serve(state.app(), ssl_context=context) as port:
        target = {**check(port), "target": f"https://status.acme.test:{port}"}
        async with ProbeTester(StatuspageProbe, resolve={"status.acme.test": "127.0.0.1"}) as tester:
            untrusted = await tester.run(target)
            trusted = await tester.run({**target, "settings": {"tls": {"ca_file": str(ca_file)}}})
    assert untrusted.reason is Reason.TLS
    assert trusted.success, trusted.message
    assert state.requests == [SUMMARY]


async def test_a_page_that_never_answers_is_cut_by_the_timeout() -> None:
    answered = anyio.Event()

    async def hang(_: web.Request) -> web.Response:
        await answered.wait()  # released when the test ends
        return web.Response()

    app = web.Application()
    app.router.add_get(SUMMARY, hang)
    async with serve(app) as port:
        try:
            result = await run_check({**check(port), "timeout": "300ms"})
        finally:
            answered.set()
    assert result.reason is Reason.TIMEOUT
    assert result.message == (
        f"no result within the timeout of 300ms (waiting for the response of GET 127.0.0.1:{port}{SUMMARY})"
    )


async def test_nothing_listening() -> None:
    async with serve(web.Application()) as port:
        pass  # the port is free again
    result = await run(port)
    assert result.reason is Reason.CONNECT


# ---------------------------------------------------------------- configuration


def test_settings_are_checked_at_load() -> None:
    tester = ProbeTester(StatuspageProbe)
    base = {"name": "s", "target": "https://status.acme.test", "interval": "1m"}
    _, settings, _ = tester.load(base)
    assert (settings.components, settings.fail_on, settings.groups, settings.ignore_maintenance) == (
        (),
        "partial_outage",
        False,
        False,
    )
    mistakes = {
        "https://status.acme.test/api/v2/summary.json": "the target is the status page's base URL",
        "ftp://status.acme.test": "is not an http:// or https:// URL",
    }
    for target, expected in mistakes.items():
        with pytest.raises(ConfigError, match=expected):
            tester.load({**base, "target": target})
    settings_mistakes: list[tuple[dict[str, Any], str]] = [
        ({"fail_on": "outage"}, "partial_outage"),
        ({"components": ["API", "API"]}, "a component is named twice"),
        ({"components": [" "]}, "a component's name cannot be empty"),
        ({"proxy_url": "socks5://127.0.0.1:1080"}, "proxy_url must be an http:// or https:// URL"),
        ({"component": ["API"]}, "component"),
    ]
    for settings_, expected in settings_mistakes:
        with pytest.raises(ConfigError, match=expected):
            tester.load({**base, "settings": settings_})


def test_the_entry_point_is_declared() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    value = project["project"]["entry-points"][GROUP]["statuspage"]
    assert value == "plugins.statuspage:StatuspageProbe"
    assert isinstance(ProbeTester.from_entry_point("statuspage", value).probe, StatuspageProbe)


async def test_through_the_agent_to_metrics(page: tuple[Page, int]) -> None:
    """The recorder exports the component label beside the check's own labels, and the reason."""
    state, port = page
    document = copy.deepcopy(fixture("outage"))
    state.serve(document)
    installed = [point for point in entry_points(group=GROUP) if point.name != "statuspage"]
    registry = Registry([*installed, EntryPoint("statuspage", "plugins.statuspage:StatuspageProbe", GROUP)])
    environ = {
        "VANTAGE_CHECKS": json.dumps({"checks": [{"type": "statuspage", **check(port)}]}),
        "OTEL_TRACES_EXPORTER": "none",
    }
    config = load_config(environ, registry=registry)
    agent = build_agent(config, {"OTEL_TRACES_EXPORTER": "none"})
    try:
        await agent.scheduler.run_once()
    finally:
        await agent.http.aclose()
    text = agent.telemetry.render_prometheus().decode()
    kept = ("component", "reason")
    found = {
        (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if k in kept))):
            (sample.value, sample.labels.get("vendor"))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith(("probe_vendor", "probe_runs", "vantage_check_up"))
    }  # fmt: skip
    assert found[("probe_vendor_status", (("component", "Payments API"),))] == (4.0, "acme")
    assert found[("probe_vendor_status", (("component", "Webhooks"),))] == (2.0, "acme")
    assert found[("probe_vendor_incidents", ())] == (2.0, "acme")
    assert found[("probe_vendor_indicator", ())] == (2.0, "acme")
    assert found[("probe_runs_total", (("reason", "vendor_outage"),))] == (1.0, "acme")
    # The confirmed state, which the "is it the vendor or us?" queries read, says down.
    assert found[("vantage_check_up", ())] == (0.0, "acme")


# ---------------------------------------------------------------- the docs' queries


def vendor_or_us_queries() -> list[tuple[str, str]]:
    """The (comment, expression) pairs of the "Is it the vendor or us?" block of the docs."""
    docs = (ROOT / "docs" / "configuration.md").read_text()
    section = docs[docs.index("### Is it the vendor or us?") :]
    block = section[section.index("```promql\n") + len("```promql\n") : section.index("```\n", 10)]
    queries: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line.startswith("#"):
            queries.append((line, ""))
        else:
            comment, expression = queries[-1]
            queries[-1] = (comment, f"{expression} {line.strip()}".strip())
    return queries


@pytest.mark.slow  # runs the promtool binary
def test_the_vendor_or_us_queries(tmp_path: Path) -> None:
    promtool = need("promtool")
    admits, only_us, both = (expression for _, expression in vendor_or_us_queries())

    def series(metric: str, value: int, **labels: str) -> dict[str, str]:
        shown = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return {"series": f"{metric}{{{shown}}}", "values": f"{value}x5"}

    up, status = "vantage_check_up", "probe_vendor_status"
    inputs = [
        # github: our API check is down and the vendor declares a major outage of a component.
        series(up, 0, check="github-api", type="http", vendor="github"),
        series(up, 0, check="github-says", type="statuspage", vendor="github"),
        series(status, 4, check="github-says", type="statuspage", vendor="github", component="API Requests"),
        series(status, 0, check="github-says", type="statuspage", vendor="github", component="Webhooks"),
        # shopify: our check is down, the vendor admits only degraded performance.
        series(up, 0, check="shopify-admin", type="http", vendor="shopify"),
        series(up, 1, check="shopify-says", type="statuspage", vendor="shopify"),
        series(status, 2, check="shopify-says", type="statuspage", vendor="shopify", component="Admin API"),
        # acme: the vendor declares a partial outage of what we do not use; our check is up.
        series(up, 1, check="acme-crm", type="http", vendor="acme"),
        series(status, 3, check="acme-says", type="statuspage", vendor="acme", component="Reports"),
    ]

    def expect(expression: str, *samples: tuple[str, int]) -> dict[str, Any]:
        return {
            "expr": expression,
            "eval_time": "2m",
            "exp_samples": [{"labels": f'{{vendor="{v}"}}', "value": value} for v, value in samples],
        }

    document = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": inputs,
                "promql_expr_test": [
                    expect(admits, ("github", 4), ("acme", 3)),
                    expect(only_us, ("shopify", 1)),
                    expect(both, ("github", 1)),
                ],
            }
        ],
    }
    path = tmp_path / "vendor_or_us_test.yaml"
    path.write_text(yaml.safe_dump(document))
    tested = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# ---------------------------------------------------------------- hostile pages (review)


async def test_components_that_would_share_a_label_get_distinct_ones(page: tuple[Page, int]) -> None:
    """Two components the same label would be one series: the exposition would carry a duplicate
    (a scrape error), or one would hide the other's outage. Same name without a group, the same
    id twice, names alike in their first MAX_NAME characters: each its own label, stable."""
    state, port = page
    long = "x" * 130
    document = {
        "status": {"indicator": "major"},
        "components": [
            {"id": "a", "name": "API", "status": "major_outage"},
            {"id": "b", "name": "API", "status": "operational"},
            {"id": "c", "name": "Web", "status": "operational"},
            {"id": "c", "name": "Edge", "status": "operational"},
            {"id": "d", "name": f"{long}1", "status": "operational"},
            {"id": "e", "name": f"{long}2", "status": "operational"},
        ],
    }
    state.serve(document)
    result = await run(port)
    labels = [sample.labels["component"] for sample in result.samples]
    assert len(set(labels)) == len(labels) == 6, labels
    assert all(len(label) <= 2 * 120 for label in labels)
    assert result.reason is Reason.VENDOR_OUTAGE
    assert statuses(result)[labels[0]] == 4 and labels[0].startswith("API")
    assert (await run(port)).samples == result.samples  # the same labels run after run


async def test_a_component_status_of_any_json_type_is_unreadable_not_a_crash(
    page: tuple[Page, int],
) -> None:
    state, port = page
    for status in ([], {}, ["major_outage"], 4, None, True):
        state.serve(
            {"status": {"indicator": "none"}, "components": [{"id": "a", "name": "API", "status": status}]}
        )
        result = await run(port)
        assert result.reason is Reason.PROTOCOL, (status, result.message)
        assert "component 'API' has the status" in result.message


async def test_vendor_names_with_control_characters_are_folded(page: tuple[Page, int]) -> None:
    """A name with a newline or an ANSI escape reaches neither a message (a log line) nor a label."""
    state, port = page
    state.serve(
        {
            "status": {"indicator": "major"},
            "page": {"name": "Acme\n\x1b[2J"},
            "components": [{"id": "a", "name": 'Pay"ments\n\x1b[31mAPI\\', "status": "major_outage"}],
            "incidents": [
                {"name": "Down\r\nINFO fake log line", "impact": "major", "components": [{"id": "a"}]}
            ],
        }
    )
    result = await run(port)
    assert result.reason is Reason.VENDOR_OUTAGE
    for text in (result.message, *statuses(result), str(result.attributes), str(result.events)):
        assert not any(c in text for c in "\n\r\x1b"), text
    assert list(statuses(result)) == ['Pay"ments [31mAPI\\']


async def test_the_message_names_no_incident_of_other_components(page: tuple[Page, int]) -> None:
    """An incident that names its components and not the failing one is not quoted as the cause:
    "degraded performance of Webhooks: 'Elevated error rates'" blamed the Payments API incident."""
    state, port = page
    document = fixture("outage")
    document["incidents"] = [i for i in document["incidents"] if i["name"] == "Elevated error rates"]
    state.serve(document)
    webhooks = await run(port, components=["Webhooks"], fail_on="degraded_performance")
    assert (
        webhooks.message
        == "the vendor declares degraded performance of Webhooks (1 unresolved incident elsewhere)"
    )
    # An incident that does not say which components it concerns may be the cause: still quoted.
    del document["incidents"][0]["components"]
    state.serve(document)
    unsaid = await run(port, components=["Webhooks"], fail_on="degraded_performance")
    assert unsaid.message == "the vendor declares degraded performance of Webhooks: 'Elevated error rates'"


async def test_a_secret_in_the_vendors_words_is_redacted_in_every_message(page: tuple[Page, int]) -> None:
    """The names listed by "has no component named" (and its did-you-mean) and the words quoted by
    "not a summary" were cut, not redacted."""
    state, port = page
    secret = "proxy-pass-0123456789"
    proxy = f"http://user:${{PROXY_PASSWORD}}@127.0.0.1:{port}"
    environ = {"PROXY_PASSWORD": secret}
    named = {
        "status": {"indicator": "none"},
        "components": [{"id": "a", "name": f"API {secret}", "status": "operational"}],
    }
    state.serve(named)
    missing = await run(port, environ=environ, proxy_url=proxy, components=["API proxy-pass-012345678"])
    assert missing.reason is Reason.ASSERTION
    assert secret not in missing.message and "did you mean 'API <redacted>'?" in missing.message, (
        missing.message
    )
    for document in (
        {"status": {"indicator": secret}, "components": []},
        {"status": {"indicator": "none"}, "components": [{"id": "a", "name": secret, "status": secret}]},
    ):
        state.serve(document)
        unreadable = await run(port, environ=environ, proxy_url=proxy)
        assert unreadable.reason is Reason.PROTOCOL
        assert secret not in unreadable.message and "<redacted>" in unreadable.message, unreadable.message


async def test_component_names_are_escaped_label_values_in_both_expositions(page: tuple[Page, int]) -> None:
    """Quotes, backslashes, braces and a "#" in a vendor's names are label values, escaped in the
    Prometheus text format and in OpenMetrics, and parse back to the names; duplicates are apart."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics

    state, port = page
    odd = 'Q"uote\\back\\nslash # {x="y"} }'
    state.serve(
        {
            "status": {"indicator": "none"},
            "components": [
                {"id": "a", "name": odd, "status": "major_outage"},
                {"id": "b", "name": odd, "status": "operational"},
                {"id": "c", "name": "Ünïcode ✓", "status": "operational"},
            ],
        }
    )
    installed = [point for point in entry_points(group=GROUP) if point.name != "statuspage"]
    registry = Registry([*installed, EntryPoint("statuspage", "plugins.statuspage:StatuspageProbe", GROUP)])
    environ = {
        "VANTAGE_CHECKS": json.dumps({"checks": [{"type": "statuspage", **check(port)}]}),
        "OTEL_TRACES_EXPORTER": "none",
    }
    agent = build_agent(load_config(environ, registry=registry), {"OTEL_TRACES_EXPORTER": "none"})
    try:
        await agent.scheduler.run_once()
    finally:
        await agent.http.aclose()
    for as_openmetrics, parse in ((False, text_string_to_metric_families), (True, openmetrics)):
        text = agent.telemetry.render_prometheus(openmetrics=as_openmetrics).decode()
        found = {
            sample.labels["component"]: sample.value
            for family in parse(text)
            for sample in family.samples
            if sample.name == "probe_vendor_status"
        }
        assert found == {odd: 4.0, f"{odd} (2)": 0.0, "Ünïcode ✓": 0.0}, as_openmetrics
