"""``/metrics`` rendered from the metric tables: the golden bytes the SDK's Prometheus exporter wrote,
both formats read back by ``prometheus_client``'s parsers and ``promtool``, content negotiation and
gzip over real HTTP, one rendering shared by the scrapes of a window."""

from __future__ import annotations

import gzip
import math
import shutil
import subprocess
import threading
from pathlib import Path

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from agent.app import serve as serve_agent
from agent.sdk.probe import MetricKind, MetricSpec, ProbeResult
from agent.telemetry import exposition
from agent.telemetry.exposition import OPENMETRICS_TYPE, TEXT_TYPE, ExpositionCache, _go, negotiate
from agent.telemetry.tables import MetricTables

from .exposition import GOLDEN_OPENMETRICS, GOLDEN_TEXT, build, record

OPENMETRICS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)  # what Prometheus 2.x sends


def test_the_page_is_what_the_sdks_exporter_wrote() -> None:
    agent = build()
    record(agent)
    assert agent.telemetry.render_prometheus().decode() == GOLDEN_TEXT.read_text()
    assert agent.telemetry.render_prometheus(openmetrics=True).decode() == GOLDEN_OPENMETRICS.read_text()


def test_both_formats_parse() -> None:
    agent = build()
    record(agent)
    text = agent.telemetry.render_prometheus().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["probe_runs"].type == "counter"
    runs = {(s.labels["check"], s.labels["result"]): s.value for s in families["probe_runs"].samples}
    assert runs[("api", "success")] == 2 and runs[("db", "failure")] == 3
    buckets = [s for s in families["probe_all_duration_seconds"].samples if s.name.endswith("_bucket")]
    assert {s.labels["le"] for s in buckets} >= {"0.005", "60.0", "+Inf"}
    om = {
        f.name: f for f in openmetrics_families(agent.telemetry.render_prometheus(openmetrics=True).decode())
    }
    assert om["probe_duration_seconds"].unit == "seconds"
    assert om["target"].type == "info"
    assert om["probe_runs"].type == "counter"
    assert [s.name for s in om["probe_runs"].samples][:1] == ["probe_runs_total"]


def test_promtool_accepts_the_page() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (tests/setup.sh)")
    agent = build()
    record(agent)
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=agent.telemetry.render_prometheus(),
        capture_output=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_forgetting_a_check_drops_its_series_histograms_included() -> None:
    agent = build()
    record(agent)
    agent.forget("db")
    text = agent.telemetry.render_prometheus().decode()
    assert 'check="db"' not in text
    assert 'probe_all_duration_seconds_count{check="api"' in text
    assert 'vantage_scheduler_lateness_seconds_count{region="eu-west-1"} 4.0' in text  # the agent's own stay
    for name in ("hook", "api"):
        agent.forget(name)
    text = agent.telemetry.render_prometheus().decode()
    assert "probe_all_duration_seconds" not in text and "probe_webhook_delivery" not in text


@pytest.mark.parametrize(
    ("accept", "encoding", "expected"),
    [
        ("", "", (False, False)),
        ("*/*", "gzip, deflate", (False, True)),
        (OPENMETRICS_ACCEPT, "gzip", (True, True)),
        ("application/openmetrics-text; version=1.0.0", "identity", (True, False)),
        ("application/openmetrics-text;version=2.0.0", "", (False, False)),
        ("text/plain;q=1,application/openmetrics-text;q=0.5", "gzip;q=0", (False, False)),
        ("application/openmetrics-text;q=0", "*", (False, True)),
    ],
)
def test_negotiation(accept: str, encoding: str, expected: tuple[bool, bool]) -> None:
    assert negotiate(accept, encoding) == expected


def test_scrapes_within_the_window_share_one_rendering() -> None:
    agent = build()
    record(agent)
    now = [100.0]
    cache = ExpositionCache(agent.telemetry.tables, agent.telemetry.resource.attributes, clock=lambda: now[0])
    bodies = []

    def scrape() -> None:
        bodies.append(cache.get().body)

    threads = [threading.Thread(target=scrape) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert cache.renders == 1 and len(set(bodies)) == 1 and bodies[0] == GOLDEN_TEXT.read_bytes()
    now[0] += cache.fresh / 2
    cache.get()
    assert cache.renders == 1
    cache.get(openmetrics=True)
    cache.get(gzip=True)
    assert cache.renders == 3
    now[0] += cache.fresh * 2
    cache.expire()
    cache.get()
    assert cache.renders == 4


@pytest.mark.anyio
async def test_on_the_event_loop_scrapes_share_one_rendering_and_the_loop_runs_between_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(exposition, "_SLICE", 2)  # the golden page in many slices
    agent = build()
    record(agent)
    now = [100.0]
    cache = ExpositionCache(agent.telemetry.tables, agent.telemetry.resource.attributes, clock=lambda: now[0])
    ticks = 0
    rendering = True

    async def ticker() -> None:  # other work on the loop: it must get turns during the rendering
        nonlocal ticks
        while rendering:
            ticks += 1
            await anyio.lowlevel.checkpoint()

    bodies: list[bytes] = []

    async def scrape(**kind: bool) -> None:
        bodies.append((await cache.aget(**kind)).body)

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        async with anyio.create_task_group() as scrapes:
            for _ in range(5):
                scrapes.start_soon(scrape)
        rendering = False
    assert cache.renders == 1 and bodies == [GOLDEN_TEXT.read_bytes()] * 5
    assert ticks > 10  # the page is dozens of slices, the ticker ran between them
    openmetrics = (await cache.aget(openmetrics=True, gzip=True)).body
    assert gzip.decompress(openmetrics) == GOLDEN_OPENMETRICS.read_bytes() and cache.renders == 2
    cache.get(openmetrics=True, gzip=True)  # a thread's caller shares the loop's rendering
    assert cache.renders == 2


@pytest.mark.anyio
async def test_a_scrape_cancelled_mid_rendering_leaves_no_half_page_and_no_lock_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client gone mid-rendering (its handler cancelled between two slices): the scrape waiting
    behind it renders the whole page itself, and later scrapes are not kept waiting."""
    monkeypatch.setattr(exposition, "_SLICE", 2)
    agent = build()
    record(agent)
    cache = ExpositionCache(agent.telemetry.tables, agent.telemetry.resource.attributes, clock=lambda: 100.0)
    bodies: list[bytes] = []
    gone = anyio.CancelScope()

    async def scrape() -> None:
        bodies.append((await cache.aget()).body)

    async def cancelled() -> None:
        with gone:
            await scrape()

    async with anyio.create_task_group() as group:
        group.start_soon(cancelled)
        await anyio.lowlevel.checkpoint()  # it has the lock and renders
        group.start_soon(scrape)  # waits behind it
        for _ in range(5):  # a few slices of the first rendering, then its client goes
            await anyio.lowlevel.checkpoint()
        assert cache.renders == 0 and not bodies
        gone.cancel()
    assert bodies == [GOLDEN_TEXT.read_bytes()] and cache.renders == 1
    with anyio.fail_after(5):
        assert (await cache.aget()).body == GOLDEN_TEXT.read_bytes()


@pytest.mark.anyio
async def test_negotiation_and_gzip_over_http(tmp_path: Path) -> None:
    agent = build()
    record(agent)
    async with anyio.create_task_group() as tg:
        port = await tg.start(
            lambda task_status: serve_agent(agent, handle_signals=False, task_status=task_status)
        )
        url = f"http://127.0.0.1:{port}/metrics"
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(url, headers={"Accept-Encoding": "identity"}) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == TEXT_TYPE
                assert "Content-Encoding" not in response.headers
                plain = await response.read()
            async with session.get(url, headers={"Accept-Encoding": "gzip"}) as response:
                assert response.headers["Content-Encoding"] == "gzip"
                assert response.headers["Content-Type"] == TEXT_TYPE
                zipped = await response.read()
            async with session.get(
                url, headers={"Accept": OPENMETRICS_ACCEPT, "Accept-Encoding": "gzip"}
            ) as response:
                assert response.headers["Content-Type"] == OPENMETRICS_TYPE
                assert "Accept" in response.headers["Vary"]
                openmetrics = gzip.decompress(await response.read()).decode()
        tg.cancel_scope.cancel()
    # The agent's own checks ran meanwhile: compare the families, not the values.
    assert gzip.decompress(zipped).decode().split("\n")[:3] == plain.decode().split("\n")[:3]
    assert len(zipped) < len(plain) / 3
    assert {f.name for f in text_string_to_metric_families(plain.decode())} >= {
        "probe_success",
        "target_info",
    }
    assert openmetrics.endswith("# EOF\n")
    assert {f.name for f in openmetrics_families(openmetrics)} >= {"probe_runs", "target"}


def test_a_probe_label_with_a_secret_is_redacted_once_stored() -> None:
    agent = build()
    secret = "s3cr3t-label-value"
    agent.config.redactor.add(secret)
    entry = next(e for e in agent.entries if e.check.name == "api")
    from agent.sdk.probe import Sample

    run = agent.recorder.start_run(entry)
    result = ProbeResult(
        success=True,
        duration=0.1,
        samples=(Sample("probe.tls.version_info", 1, {"version": secret}, "version"),),
    )
    agent.recorder.finish_run(run, result)
    text = agent.telemetry.render_prometheus().decode()
    assert secret not in text and 'version="<redacted>"' in text


@pytest.mark.parametrize(
    "value",
    [0, 1, True, 200, -1, 0.0, -0.0, 0.1, 1e-05, 4.7e-05, 0.004187253995041829, 999999.9, 1e6, 1234567.0,
     1.8e9, 3668918509.0, 1e16, 1.5e22, -1e7, -1234567.5, 2**53, math.inf, -math.inf, math.nan],
)  # fmt: skip
def test_numbers_are_written_as_prometheus_client_writes_them(value: float) -> None:
    # The renderer writes most floats with a bare repr(); this pins it to Go's spelling.
    assert _go(value) == floatToGoString(value)


@pytest.mark.parametrize("size", [1, 2, 5])
def test_the_page_is_the_same_whatever_the_slices(monkeypatch: pytest.MonkeyPatch, size: int) -> None:
    # Pieces end at every slice boundary: in a histogram, between a check's series, inside a
    # check's phases.
    monkeypatch.setattr(exposition, "_SLICE", size)
    agent = build()
    record(agent)
    assert agent.telemetry.render_prometheus().decode() == GOLDEN_TEXT.read_text()
    assert agent.telemetry.render_prometheus(openmetrics=True).decode() == GOLDEN_OPENMETRICS.read_text()


def test_each_sample_has_its_attributes_and_extra_in_its_familys_label_names() -> None:
    # What the renderer cuts and puts together (a check's text around a phase, a run's several
    # pairs of its own put in, bare values, points) read back as labels: attributes and extra
    # merged, the extra winning, every other name of the family empty.
    tables = MetricTables()
    bound = {"check": "a", "type": "http", "target": 'https://x.test/?q="1"', "region": "eu"}
    other = {"check": "b", "type": "tcp", "target": "db:5432", "zone": "z1"}
    tables.bind("a", bound)
    phases = tables.declare(MetricSpec.gauge("phase", "s", "", "phase"))
    runs = tables.declare(MetricSpec("runs", MetricKind.COUNTER, "{run}", ""))
    up = tables.declare(MetricSpec.gauge("up", "", ""))
    expected: dict[str, list[dict[str, str]]] = {"phase_seconds": [], "runs_total": [], "up": []}
    for attrs in (bound, other):
        check = attrs["check"]
        for phase in ("connect", "tls"):
            phases.put_derived(check, phase, attrs, {"phase": phase}, 0.25)
            expected["phase_seconds"].append({**attrs, "phase": phase})
        for extra in (
            {"result": "failure", "reason": "timeout", "attempt": "2"},
            {"check": "c", "result": "x"},
        ):
            key = tuple(extra.items())
            runs.put_derived(check, key, attrs, extra, 1)
            expected["runs_total"].append({**attrs, **extra})
        up.put(check, None, attrs, 1)
        expected["up"].append(attrs)
    text = "".join(exposition.render(tables, {}))
    seen: dict[str, list[dict[str, str]]] = {"phase_seconds": [], "runs_total": [], "up": []}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in seen:
                seen[sample.name].append(sample.labels)
    for name, wanted in expected.items():
        names = set().union(*wanted)
        assert seen[name] == [{k: str(labels.get(k, "")) for k in names} for labels in wanted], name
        assert all(list(labels) == sorted(names) for labels in seen[name]), name  # in their order
