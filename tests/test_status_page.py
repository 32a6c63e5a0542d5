"""The status page and the debug view (agent/server/pages.py) and their history
(agent/server/history.py), against real agents on loopback and in headless Chromium.

The browser is Debian's ``chromium`` (installed by tests/setup.sh), driven over the DevTools
protocol with aiohttp's websocket client. It reaches nothing but loopback: every other name fails
to resolve and every other request goes to a proxy that refuses. Without chromium these tests are
skipped, except in CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web
from pydantic import ValidationError

from agent.config.secrets import Redactor
from agent.config.settings import AgentSettings
from agent.net.http import RequestRecord
from agent.sdk.assertions import AssertionOutcome
from agent.sdk.probe import ProbeResult
from agent.sdk.reasons import Reason
from agent.server.history import History, HistoryStore
from agent.server.pages import CSP
from tests.helpers import AgentProcess, free_port, thread_server, wait_until

pytestmark = pytest.mark.anyio

TOKEN = "page-token-0123456789"
SECRET = "sk_live_status_page_secret_42"
# Script-bearing text from a vendor: a header value, which a failed assertion quotes.
HOSTILE = "<script>window.pwned=1;document.title='pwned'</script><img src=x onerror=\"window.pwned=2\">"
TITLE = "Vantage · page-test"
FLOW_TOKEN = "flow-access-token-0123456789"


# ---------------------------------------------------------------- the browser


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is not installed (tests/setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


class Page:
    """One Chromium tab over the DevTools protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._id = 0
        self.events: list[dict[str, Any]] = []

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        ident = self._id
        await self._ws.send_json({"id": ident, "method": method, "params": params})
        with anyio.fail_after(20):
            while True:
                message = await self._ws.receive_json()
                if message.get("id") == ident:
                    if "error" in message:
                        raise AssertionError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message.get("result", {})
                    return result
                self.events.append(message)

    async def wait_for_event(self, name: str) -> dict[str, Any]:
        with anyio.fail_after(20):
            while True:
                for i, event in enumerate(self.events):
                    if event.get("method") == name:
                        del self.events[: i + 1]
                        return event
                self.events.append(await self._ws.receive_json())

    async def goto(self, url: str) -> None:
        self.events.clear()
        await self.send("Page.navigate", url=url)
        await self.wait_for_event("Page.loadEventFired")

    async def eval(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Page]:
    """Headless Chromium with one tab, reaching loopback only."""
    binary = _chromium()
    # Chromium's helper processes may still write to the profile as it is removed: not an error.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        process = await anyio.open_process(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-pings",
                # Nothing but loopback: other names do not resolve, other requests go nowhere.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--proxy-server=http://127.0.0.1:9",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            active = Path(profile) / "DevToolsActivePort"
            port = wait_until(lambda: active.exists() and active.read_text().split("\n")[0], timeout=30)
            async with aiohttp.ClientSession() as session:
                with anyio.fail_after(20):
                    while True:
                        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                            pages = [t for t in await response.json() if t.get("type") == "page"]
                        if pages:
                            break
                        await anyio.sleep(0.1)
                async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = Page(ws)
                    await page.send("Page.enable")
                    await page.send("Runtime.enable")
                    yield page
        finally:
            process.kill()
            with anyio.CancelScope(shield=True), anyio.fail_after(10):
                await process.wait()


# ---------------------------------------------------------------- a vendor and an agent


def _vendor() -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"ok": True}, headers={"X-Request-Id": "r-1"})

    async def hostile(request: web.Request) -> web.Response:
        return web.json_response(
            {"ok": False}, headers={"X-Evil": HOSTILE, "X-Echo": SECRET, "Set-Cookie": "session=abcdef"}
        )

    async def token(request: web.Request) -> web.Response:
        return web.json_response({"access_token": FLOW_TOKEN})

    async def orders(request: web.Request) -> web.Response:
        # Echoes the credential, as a careless vendor does: the page must show it redacted.
        auth = request.headers.get("Authorization", "")
        status = 200 if auth == f"Bearer {FLOW_TOKEN}" else 401
        return web.json_response({"orders": [1]}, status=status, headers={"X-Echo": auth})

    app = web.Application()
    app.router.add_post("/token", token)
    app.router.add_get("/orders", orders)
    app.router.add_get("/ok", ok)
    app.router.add_get("/hostile", hostile)
    return app


def _checks(port: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{port}"
    return {
        "checks": [
            {
                "name": "vendor-ok",
                "type": "http",
                "target": f"{base}/ok",
                "interval": "1s",
                "labels": {"vendor": "acme"},
            },
            {
                "name": "vendor-hostile",
                "type": "http",
                "target": f"{base}/hostile",
                # Slower than the others: a run picked from its list is still among the last 3 in
                # full when the page is opened, however loaded the machine.
                "interval": "3s",
                "labels": {"vendor": "acme"},
                "settings": {
                    "headers": {"Authorization": "Bearer ${PAGE_SECRET}"},
                    "assertions": [{"source": "header", "name": "X-Evil", "op": "eq", "value": "calm"}],
                },
            },
            {
                "name": "vendor-flow",
                "type": "flow",
                "target": base,
                "interval": "1s",
                "labels": {"vendor": "acme"},
                "settings": {
                    "steps": [
                        {
                            "name": "token",
                            "method": "POST",
                            "url": "/token",
                            "extract": {"access_token": {"path": "$.access_token", "secret": True}},
                        },
                        {
                            "name": "orders",
                            "url": "/orders",
                            "headers": {"Authorization": "Bearer ${steps.token.access_token}"},
                            "assert": [{"source": "status", "op": "eq", "value": 200}],
                        },
                    ]
                },
            },
            {
                "name": "nothing-there",
                "type": "http",
                "target": f"http://127.0.0.1:{free_port()}/",
                "interval": "1s",
                "labels": {"vendor": "zeta"},
            },
        ]
    }


@contextlib.contextmanager
def agent(port: int, **env: str) -> Iterator[AgentProcess]:
    process = AgentProcess(
        _checks(port),
        {
            "OTEL_TRACES_EXPORTER": "none",
            "OTEL_METRICS_EXPORTER": "none",
            "VANTAGE_REGION": "page-test",
            "VANTAGE_STATUS_GROUP_BY": "vendor",
            "VANTAGE_TRACE_URL_TEMPLATE": "https://tempo.example/explore?traceId={trace_id}",
            "PAGE_SECRET": SECRET,
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            **env,
        },
    )
    try:
        yield process
    finally:
        process.stop()


def _status(process: AgentProcess, path: str = "/api/status", token: str | None = TOKEN) -> Any:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(process.url(path))
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except (urllib.error.URLError, ConnectionError):
        return None


def _all_ran(process: AgentProcess, runs: int = 2, token: str | None = TOKEN) -> bool:
    status = _status(process, token=token)
    return bool(status) and all((c.get("runs_24h") or 0) >= runs for c in status["checks"])


# ---------------------------------------------------------------- in the browser


async def test_the_pages_in_chromium_list_checks_show_failures_and_waterfalls_and_run_no_vendor_script() -> (
    None
):
    with thread_server(_vendor()) as vendor, agent(vendor, VANTAGE_API_TOKEN=TOKEN) as process:
        wait_until(lambda: _all_ran(process), timeout=30)
        async with browser() as page:
            # The token once in the address: a cookie keeps it, and the address loses it.
            await page.goto(process.url(f"/?token={TOKEN}"))
            assert await page.eval("location.pathname + location.search") == "/"
            assert await page.eval("document.title") == TITLE
            assert await page.eval("document.querySelector('meta[http-equiv=refresh]').content") == "10"
            rows = await page.eval("[...document.querySelectorAll('tr.check')].map(r => r.dataset.check)")
            assert rows == ["vendor-flow", "vendor-hostile", "vendor-ok", "nothing-there"]  # acme, then zeta
            groups = await page.eval(
                "[...document.querySelectorAll('section.group h2')].map(h => h.innerText)"
            )
            assert [g.split(" ")[:2] for g in groups] == [["vendor:", "acme"], ["vendor:", "zeta"]]
            states = await page.eval(
                "Object.fromEntries([...document.querySelectorAll('tr.check')]"
                ".map(r => [r.dataset.check, r.querySelector('.state').innerText]))"
            )
            assert states == {
                "vendor-flow": "up",
                "vendor-hostile": "down",
                "vendor-ok": "up",
                "nothing-there": "down",
            }
            failure = await page.eval(
                "document.querySelector('tr[data-check=\"nothing-there\"] td.failure').innerText"
            )
            assert failure.startswith("connect ")
            hostile = await page.eval(
                "document.querySelector('tr[data-check=\"vendor-hostile\"] td.failure').innerText"
            )
            assert hostile.startswith("assertion ") and HOSTILE in hostile  # shown as text
            assert await page.eval("document.querySelectorAll('svg.spark polyline').length") == 4
            assert await page.eval("document.body.innerText.includes('100%')")
            await _assert_nothing_ran(page)

            await page.goto(process.url("/checks/vendor-ok"))
            assert await page.eval("document.querySelector('h1').innerText") == "vendor-ok up"
            phases = await page.eval(
                "[...document.querySelectorAll('svg.waterfall g.phase text:first-child')]"
                ".map(t => t.textContent)"
            )
            assert phases == ["resolve", "connect", "tls", "processing", "transfer"]
            widths = await page.eval(
                "[...document.querySelectorAll('svg.waterfall rect')].map(r => r.width.baseVal.value)"
            )
            assert len(widths) == 5 and all(w >= 1 for w in widths)
            headers = await page.eval("document.querySelector('table.headers').textContent")
            assert "X-Request-Id" in headers and "r-1" in headers
            link = await page.eval("document.querySelector('section.run a.trace').href")
            assert (
                link.startswith("https://tempo.example/explore?traceId=")
                and len(link.rsplit("=", 1)[1]) == 32
            )
            runs = await page.eval("document.querySelectorAll('table.runs tbody tr').length")
            assert runs >= 2

            await page.goto(process.url("/checks/vendor-hostile"))
            assertion = await page.eval("document.querySelector('table.assertions tr.fail').innerText")
            assert "header X-Evil eq" in assertion or "X-Evil" in assertion
            assert HOSTILE in assertion
            headers = await page.eval("document.querySelector('table.headers').textContent")
            assert HOSTILE in headers
            assert SECRET not in await page.eval("document.documentElement.outerHTML")
            assert "abcdef" not in headers  # Set-Cookie is a credential of the session
            await _assert_nothing_ran(page)

            # A run picked from the list (one kept in full: it has a link) is shown in full. The
            # check runs every 3 s and one run is kept in full: a new run may replace the one picked
            # before its page opens, so a few tries.
            for _ in range(5):
                await page.goto(process.url("/checks/vendor-hostile"))
                trace = await page.eval(
                    "Array.from(document.querySelectorAll('table.runs tbody tr'))"
                    ".find(r => r.querySelector('a[href*=run]')).querySelector('code').innerText"
                )
                await page.goto(process.url(f"/checks/vendor-hostile?run={trace}"))
                if trace in await page.eval("document.querySelector('section.run').innerText"):
                    break
            else:
                raise AssertionError("the run picked is not shown in full")

            # A flow: its steps in order, its requests one after another, the extracted token
            # (a secret) nowhere, not even where the vendor echoes it back.
            await page.goto(process.url("/checks/vendor-flow"))
            steps = await page.eval("[...document.querySelectorAll('ol.steps > li')].map(li => li.innerText)")
            assert [s.split("\n")[0].split(" ")[:2] for s in steps] == [
                ["passed", "token"],
                ["passed", "orders"],
            ]
            assert "/token → HTTP 200" in steps[0] and "extracted: access_token" in steps[0]
            assert "/orders → HTTP 200" in steps[1] and "status eq 200" in steps[1]
            bars = await page.eval("document.querySelectorAll('svg.waterfall rect').length")
            assert bars == 2
            echoed = await page.eval("document.querySelectorAll('table.headers')[1].textContent")
            assert "X-Echo" in echoed and "Bearer <redacted>" in echoed
            assert FLOW_TOKEN not in await page.eval("document.documentElement.outerHTML")
            await _assert_nothing_ran(page)


async def _assert_nothing_ran(page: Page) -> None:
    assert await page.eval("typeof window.pwned") == "undefined"
    assert await page.eval("document.title") != "pwned"
    # Escaped, the vendor's markup made no element; and nothing was fetched from anywhere.
    assert await page.eval("document.querySelectorAll('body script, body img').length") == 0
    assert await page.eval("performance.getEntriesByType('resource').map(r => r.name)") == []


async def test_without_the_token_the_pages_say_how_to_give_it_and_show_nothing() -> None:
    with thread_server(_vendor()) as vendor, agent(vendor, VANTAGE_API_TOKEN=TOKEN) as process:
        wait_until(lambda: _status(process) is not None, timeout=30)
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/checks/vendor-ok", f"/?token={TOKEN}x"):
                async with session.get(process.url(path), allow_redirects=False) as response:
                    assert response.status == 401
                    text = await response.text()
                    assert "?token=" in text and "vendor-ok" not in text
            async with session.get(process.url("/api/status")) as response:
                assert response.status == 401
            async with session.get(
                process.url("/"), headers={"Authorization": f"Bearer {TOKEN}"}
            ) as response:
                assert response.status == 200
                assert response.headers["Content-Security-Policy"] == CSP
                assert "script-src" not in CSP and "default-src 'none'" in CSP
                assert "vendor-ok" in await response.text()


def test_a_trace_link_template_is_http_or_https_with_a_trace_id() -> None:
    for bad in ("javascript:alert(1)//{trace_id}", "data:text/html,{trace_id}", "https://tempo.example/"):
        with pytest.raises(ValidationError, match="trace_url_template"):
            AgentSettings.model_validate({"trace_url_template": bad})
    assert AgentSettings.model_validate(
        {"trace_url_template": "HTTPS://t.example/{trace_id}"}
    ).trace_url_template


# ---------------------------------------------------------------- workers and restarts


def test_a_supervisor_shows_every_workers_checks() -> None:
    import urllib.request

    with (
        thread_server(_vendor()) as vendor,
        agent(vendor, VANTAGE_WORKERS="2", VANTAGE_API_TOKEN=TOKEN) as process,
    ):
        wait_until(lambda: _all_ran(process), timeout=60)
        names = sorted(c["name"] for c in _status(process)["checks"])
        assert names == ["nothing-there", "vendor-flow", "vendor-hostile", "vendor-ok"]
        for name in names:
            found = _status(process, f"/api/status/{name}")
            assert found["name"] == name and found["last_runs"]
        assert _status(process, token=None) is None  # the supervisor wants the token as a worker does

        def get(path: str) -> str:
            request = urllib.request.Request(process.url(path), headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=5) as response:
                return str(response.read().decode())

        page = get("/")
        assert all(f'data-check="{name}"' in page for name in names)
        assert 'class="waterfall"' in get("/checks/vendor-ok")


def test_the_history_survives_a_restart_with_a_state_dir(tmp_path: Path) -> None:
    with thread_server(_vendor()) as vendor:
        with agent(vendor, VANTAGE_STATE_DIR=str(tmp_path)) as first:
            wait_until(lambda: _all_ran(first, runs=3, token=None), timeout=30)
            before = _status(first, "/api/status/vendor-hostile", token=None)
            first.stop(signal.SIGTERM)  # the last runs are written on the way out
        assert first.proc.returncode == 0
        with agent(vendor, VANTAGE_STATE_DIR=str(tmp_path)) as second:
            found = wait_until(lambda: _status(second, "/api/status/vendor-hostile", token=None), timeout=30)
            kept = {run["trace_id"] for run in before["last_runs"]}
            after = wait_until(
                lambda: (
                    (s := _status(second, "/api/status/vendor-hostile", token=None))
                    and kept & {run["trace_id"] for run in s["last_runs"]}
                    and s
                ),
                timeout=30,
            )
            assert found is not None
            assert after["runs_24h"] >= before["runs_24h"]
            assert after["last_failure"]["reason"] == "assertion"
        db = sqlite3.connect(tmp_path / "status-history.sqlite3")
        try:
            text = "\n".join(str(row) for row in db.execute("SELECT * FROM runs"))
            text += "\n".join(str(row) for row in db.execute("SELECT * FROM last_failure"))
        finally:
            db.close()
        assert "vendor-hostile" in text and SECRET not in text


# ---------------------------------------------------------------- the history on its own


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _result(ok: bool, duration: float = 0.05) -> ProbeResult:
    if ok:
        return ProbeResult(success=True, duration=duration, phases={"connect": 0.01, "processing": 0.04})
    return ProbeResult.failure(
        Reason.ASSERTION,
        f"token {SECRET} refused",
        duration=duration,
        assertions=(AssertionOutcome("status eq 200", False, "500", f"got {SECRET}"),),
    )


_REQUEST = RequestRecord("GET", "https", "api.vendor.test", 443, 0.05, 200, None, "1.1", (("X-Key", SECRET),))


def test_uptime_counts_runs_in_the_last_day_and_week() -> None:
    clock = _Clock()
    history = History(Redactor([SECRET]), runs=5, clock=clock)
    for i in range(10):
        history.record("c", clock.now, _result(i % 4 != 0), [_REQUEST], i + 1)
        clock.now += 60
    summary = history.summary("c")
    assert summary["uptime_24h"] == summary["uptime_7d"] == 0.7
    assert summary["runs_24h"] == 10 and len(summary["recent"]) == 5
    clock.now += 2 * 86_400  # two days on: the day's buckets are out of the window, the week's not
    summary = history.summary("c")
    assert summary["uptime_24h"] is None and summary["uptime_7d"] == 0.7
    clock.now += 7 * 86_400
    assert history.summary("c")["uptime_7d"] is None
    runs = history.runs("c")
    assert SECRET not in json.dumps(runs) and SECRET not in json.dumps(summary)
    assert runs["last_failure_detail"]["assertions"][0]["passed"] is False


def test_uptime_over_gaps_and_a_clock_set_back_matches_counting_every_run() -> None:
    """The rings keep no slot number a bucket: a gap empties what it passes. Their uptimes must
    equal counting each run's time against the window, whatever the gaps."""
    rng = random.Random(7)
    clock = _Clock()
    history = History(Redactor(), clock=clock)
    runs: list[tuple[float, bool]] = []
    for _ in range(3000):
        clock.now += rng.choice([1, 30, 300, 3_599, 4 * 3600, 30 * 3600])
        ok = rng.random() < 0.8
        history.record("c", clock.now, _result(ok), [], 1)
        runs.append((clock.now, ok))
        for width, slots, key in ((300, 288, "uptime_24h"), (3600, 168, "uptime_7d")):
            for now in (clock.now, clock.now + rng.choice([0, 299, 7200, 3 * 86_400])):
                first = (int(now // width) - slots + 1) * width
                kept = [ok for when, ok in runs if first <= when < (int(now // width) + 1) * width]
                clock.now, real = now, clock.now
                got = history.summary("c")[key]
                clock.now = real
                assert got == (sum(kept) / len(kept) if kept else None)
    # A clock set back: runs counted after "now" are out of the window, not double-counted.
    clock.now = runs[-1][0] - 600
    last = int(clock.now // 300)
    kept = [ok for when, ok in runs if last - 287 <= when // 300 <= last]
    assert history.summary("c")["uptime_24h"] == (sum(kept) / len(kept) if kept else None)


def test_runs_after_a_clock_set_back_by_days_are_counted_at_once() -> None:
    """A clock set back by more than a ring's span (an agent started with its clock days ahead,
    then corrected): the runs since count from the first, as they did when a bucket had its slot."""
    clock = _Clock()
    history = History(Redactor(), clock=clock)
    for i in range(20):
        history.record("c", clock.now, _result(True), [], i + 1)
        clock.now += 60
    clock.now -= 9 * 86_400  # more than either ring's span
    for i in range(10):
        history.record("c", clock.now, _result(i % 5 != 0), [], i + 100)
        clock.now += 60
    summary = history.summary("c")
    assert summary["runs_24h"] == 10 and summary["uptime_24h"] == 0.8
    assert summary["uptime_7d"] == 0.8


def test_a_bucket_counts_past_a_byte_when_a_check_runs_every_half_second() -> None:
    clock = _Clock()
    clock.now = (clock.now // 300) * 300  # the start of a 5-minute bucket
    history = History(Redactor(), clock=clock)
    for i in range(590):  # 590 runs in one bucket, 1 in 10 failed
        history.record("c", clock.now, _result(i % 10 != 0), [], i + 1)
        clock.now += 0.5
    summary = history.summary("c")
    assert summary["runs_24h"] == 590 and summary["uptime_24h"] == 531 / 590
    history.merge({"c": ([(300, int(clock.now // 300), 10, 10)], [], None)})  # and past it by a merge
    assert history.summary("c")["runs_24h"] == 600


def test_a_saved_bucket_from_the_future_is_not_taken_in() -> None:
    clock = _Clock()
    history = History(Redactor(), clock=clock)
    history.record("c", clock.now, _result(True), [], 1)
    future = int(clock.now // 300) + 1000  # a file written by a clock set days ahead
    history.merge({"c": ([(300, future, 5, 5)], [], None)})
    summary = history.summary("c")
    assert summary["uptime_24h"] == 1.0 and summary["runs_24h"] == 1


def test_the_store_is_bounded_and_redacted_and_merges_after_a_restart(tmp_path: Path) -> None:
    clock = _Clock()
    history = History(Redactor([SECRET]), runs=20, details=3, store=HistoryStore(tmp_path), clock=clock)
    for i in range(100):
        history.record("c", clock.now, _result(i != 50), [_REQUEST], i + 1)
        clock.now += 120  # 100 runs over more than 3 hours
        if i % 25 == 0:
            history.flush()
    history.flush()
    assert history.store is not None
    history.store.close()
    db = sqlite3.connect(tmp_path / "status-history.sqlite3")
    try:
        assert db.execute("SELECT count(*) FROM runs").fetchone()[0] == 20
        assert db.execute("SELECT count(*) FROM runs WHERE detail IS NOT NULL").fetchone()[0] == 3
        dump = "\n".join(db.iterdump())
    finally:
        db.close()
    assert SECRET not in dump and "<redacted>" in dump

    again = History(Redactor([SECRET]), runs=20, details=3, store=HistoryStore(tmp_path), clock=clock)
    again.record("c", clock.now, _result(True), [_REQUEST], 1000)  # a run before the history is read
    assert again.store is not None
    again.merge(again.read_saved(["c", "other"]))
    summary = again.summary("c")
    assert summary["runs_24h"] == 101 and summary["uptime_24h"] == 100 / 101
    runs = again.runs("c")
    assert len(runs["last_runs"]) == 20 and runs["last_runs"][0]["trace_id"] == f"{1000:032x}"
    assert runs["last_failure_detail"]["reason"] == "assertion"


def test_a_corrupt_or_unwritable_file_is_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "vantage.server")
    (tmp_path / "status-history.sqlite3").write_bytes(b"this is not a database" * 100)
    history = History(Redactor(), store=HistoryStore(tmp_path), clock=_Clock())
    assert history.store is not None
    assert history.store.load(["c"], 0.0) == {}
    history.record("c", time.time(), _result(True), [], 1)
    history.flush()
    assert (tmp_path / "status-history.sqlite3.corrupt").exists()
    assert "set aside" in caplog.text
    history.store.close()

    caplog.clear()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    clock = _Clock()
    broken = History(Redactor(), store=HistoryStore(not_a_dir), clock=clock)
    broken.record("c", clock.now, _result(False), [], 1)
    broken.flush()
    broken.flush()
    assert broken.summary("c")["runs_24h"] == 1  # in memory all the same
    assert caplog.text.count("kept in memory only") == 1  # said once, not at every write


def test_a_flows_steps_render_their_request_status_assertions_and_extracted_names_escaped() -> None:
    from agent.sdk.probe import StepResult as Step
    from agent.server.pages import render_check

    steps = (
        Step("login", True, 0.02, request="POST /oauth/token", status=200, extracted=("token",)),
        Step(
            "orders",
            False,
            0.03,
            Reason.ASSERTION,
            HOSTILE,
            request="GET /v1/orders",
            status=500,
            assertions=(AssertionOutcome("status eq 200", False, "500", f"got 500 with {SECRET}"),),
        ),
    )
    clock = _Clock()
    history = History(Redactor([SECRET]), clock=clock)
    result = ProbeResult.failure(Reason.ASSERTION, "step 'orders' failed", duration=0.05, steps=steps)
    history.record("flow", clock.now, result, [_REQUEST], 7)
    check = {"name": "flow", "type": "flow", "last": {"success": False}, **history.runs("flow")}
    html = render_check(check, "", "t", None, clock.now)
    assert "<code>POST /oauth/token</code> → HTTP 200" in html and "→ HTTP 500" in html
    assert "extracted: <code>token</code>" in html
    assert 'class="assertions"' in html and "status eq 200" in html
    assert "<script>" not in html and "<img" not in html and "&lt;script&gt;window.pwned=1" in html
    assert SECRET not in html


# ---------------------------------------------------------------- review: secrets and a bad file


_VENDOR_TOKENS = (
    ("X-Subject-Token", "gAAAAABsubjecttoken0001"),
    ("X-Auth-Token", "authtoken-0002-value"),
    ("X-Amz-Security-Token", "IQoJb3JpZ2luX2VjEJr0003"),
    ("X-Session-Id", "sess-0004-abcdef"),
    ("X-Api-Key", "apikey-0005-value"),
)


def test_a_vendors_token_in_a_response_header_is_redacted_on_the_page_and_on_disk(tmp_path: Path) -> None:
    from agent.config.secrets import sensitive_header

    assert all(sensitive_header(name) for name, _ in _VENDOR_TOKENS)
    assert not sensitive_header("Content-Type") and not sensitive_header("X-Request-Id")
    clock = _Clock()
    history = History(Redactor(), store=HistoryStore(tmp_path), clock=clock)
    headers = (*_VENDOR_TOKENS, ("Content-Type", "application/json"))
    request = RequestRecord("POST", "https", "idp.vendor.test", 443, 0.05, 201, None, "1.1", headers)
    history.record("c", clock.now, _result(False), [request], 1)
    history.flush()
    assert history.store is not None
    history.store.close()
    shown = json.dumps(history.runs("c"))
    dump = "\n".join(sqlite3.connect(tmp_path / "status-history.sqlite3").iterdump())
    for _, token in _VENDOR_TOKENS:
        assert token not in shown and token not in dump
    assert "application/json" in shown and "X-Subject-Token" in shown


def test_a_short_lived_secret_stays_redacted_after_the_redactor_forgets_it(tmp_path: Path) -> None:
    redactor = Redactor()
    token = "oauth-access-token-0123456789"
    redactor.add(token, ephemeral=True)
    clock = _Clock()
    history = History(redactor, store=HistoryStore(tmp_path), clock=clock)
    request = RequestRecord(
        "GET", "https", "api.vendor.test", 443, 0.05, 200, None, "1.1", (("X-Echo", token),)
    )
    failed = ProbeResult.failure(Reason.ASSERTION, f"got {token}", duration=0.05)
    history.record("c", clock.now, failed, [request], 1)
    for i in range(2000):  # later tokens push it out of the redactor's bounded set
        redactor.add(f"later-token-{i:06d}", ephemeral=True)
    assert token not in redactor  # forgotten: the history must not depend on it any more
    history.flush()
    shown = json.dumps([history.runs("c"), history.summary("c")])
    assert token not in shown and "<redacted>" in shown
    assert history.store is not None
    history.store.close()
    assert token not in "\n".join(sqlite3.connect(tmp_path / "status-history.sqlite3").iterdump())


def test_a_run_kept_long_lets_go_of_the_secrets_of_its_time_once_they_change() -> None:
    """A run in full keeps a snapshot of the redactor until made into text: a check's last
    failure, kept for days, must not keep its snapshot (the secrets compiled, up to 1,024
    short-lived ones) alive through every change of the redactor since: one per change."""
    redactor = Redactor([SECRET])
    token = "flow-extracted-token-000"
    redactor.add(token, ephemeral=True)
    clock = _Clock()
    history = History(redactor, clock=clock)
    for n in range(30):  # thirty checks' last failures, kept as they ended
        failed = ProbeResult.failure(Reason.ASSERTION, f"got {token}")
        history.record(f"a{n}", clock.now, failed, [_REQUEST], n + 1)
    then = weakref.ref(redactor.snapshot())
    for i in range(1, 20):  # a flow's runs, each extracting a new short-lived secret
        clock.now += 60
        redactor.add(f"flow-extracted-token-{i:03d}", ephemeral=True)
        history.record("b", clock.now, _result(True), [], i + 100)
    gc.collect()
    assert then() is None
    shown = json.dumps([[history.runs(f"a{n}"), history.summary(f"a{n}")] for n in range(30)])
    assert token not in shown and SECRET not in shown and shown.count("<redacted>") >= 30


def test_one_run_is_kept_in_full_by_default_and_the_last_failure_besides() -> None:
    clock = _Clock()
    history = History(Redactor([SECRET]), clock=clock)
    history.record("c", clock.now, _result(False), [_REQUEST], 1)
    for i in range(3):
        clock.now += 60
        history.record("c", clock.now, _result(True), [_REQUEST], i + 2)
    runs = history.runs("c")
    assert len(runs["last_runs"]) == 4 and len(runs["details"]) == 1
    assert runs["details"][0]["trace_id"] == f"{4:032x}"
    assert runs["last_failure_detail"]["trace_id"] == f"{1:032x}"


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE runs SET time='abc'",
        "UPDATE runs SET duration='slow'",
        "UPDATE runs SET success=7",
        'UPDATE last_failure SET detail=\'{"time":"abc"}\'',
        "UPDATE runs SET detail='{\"requests\":5}' WHERE detail IS NOT NULL",
        "UPDATE buckets SET slot=99999999999",
        "UPDATE buckets SET runs=-5",
        "UPDATE buckets SET failures=runs+1",
    ],
)
def test_a_history_file_with_rows_no_write_made_is_set_aside_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    caplog.set_level(logging.WARNING, "vantage.server")
    clock = _Clock()
    history = History(Redactor(), store=HistoryStore(tmp_path), clock=clock)
    history.record("c", clock.now, _result(False), [_REQUEST], 1)
    history.record("c", clock.now + 1, _result(True), [_REQUEST], 2)
    history.flush()
    assert history.store is not None
    history.store.close()
    db = sqlite3.connect(tmp_path / "status-history.sqlite3")
    db.execute(damage)
    db.commit()
    db.close()

    again = History(Redactor(), store=HistoryStore(tmp_path), clock=clock)
    again.merge(again.read_saved(["c"]))  # neither raises
    assert again.summary("c")["runs_24h"] == 0
    assert (tmp_path / "status-history.sqlite3.corrupt").exists() and "set aside" in caplog.text
    again.record("c", clock.now + 2, _result(True), [], 3)
    again.flush()  # a new file is started
    assert again.store is not None
    assert again.store.load(["c"], 0.0)["c"][1][0][0].time == clock.now + 2
    again.store.close()


async def test_the_read_back_of_a_bad_saved_history_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    from agent.server.pages import Pages

    caplog.set_level(logging.WARNING, "vantage.server")
    history = History(Redactor(), store=HistoryStore(Path("/nonexistent-dir")), clock=_Clock())
    history.read_saved = lambda names: {"c": ([(300, 99_999_999_999, 1, 0)], [], None)}  # type: ignore[method-assign]
    pages = Pages(object(), token=None, title="t", history=history, names=lambda: ["c"])  # type: ignore[arg-type]
    await pages._read_back(history)
    assert "cannot be taken in" in caplog.text


async def test_a_worker_answering_not_json_or_a_run_of_the_wrong_shape_is_a_clear_message() -> None:
    from agent.server.pages import WorkersSource, render_check

    async def gather(path: str) -> list[tuple[int, str]]:
        return [(200, "<html>not json</html>")]

    with pytest.raises(web.HTTPBadGateway) as raised:
        await WorkersSource(gather).check("c")  # type: ignore[arg-type]
    assert "did not answer with JSON" in (raised.value.text or "")

    check = {
        "name": "c",
        "details": [{"time": "abc", "phases": "x", "requests": 5, "trace_id": "0" * 32}, "not a run"],
        "last_failure_detail": "not a run either",
    }
    html = render_check(check, "", "t", None, 1_800_000_000.0)
    assert "not of the shape the page shows" in html
