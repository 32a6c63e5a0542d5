"""`vantage once` as a CI runs it: the real command in a subprocess, against real local servers.

The gate must not pass by accident: an empty selection has an exit status of its own, a passive
check is "not judged" rather than green, an active webhook check waits for its delivery, and
``${hook_url}`` without ``VANTAGE_PUBLIC_URL`` is refused before anything runs. The reports
(table, ``--json``, ``--junit``, ``-v``) are parsed as the tools that read them would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import aiohttp
import pytest
import yaml
from aiohttp import web

from .helpers import ROOT, free_port, thread_server

pytestmark = pytest.mark.slow

SECRET = "sk_live_ONCE+secret/42=="
LITERAL = "literal-key-Zq81xV"  # written in the check file itself: withheld by its header's name
HOOK_TOKEN = "hook-token-0123456789abcdef"
PING_TOKEN = "ping-token-0123456789abcdef"
QUIET = {"OTEL_METRICS_EXPORTER": "none", "OTEL_TRACES_EXPORTER": "none"}


@pytest.fixture
def vendor() -> Iterator[tuple[int, dict[str, list[str]]]]:
    """An API: ``/ok``, ``/status/{code}``, ``/echo`` (headers and body echo the credentials),
    ``/long`` (a body no assertion expects), and ``/v1/events``, which delivers a webhook to the
    URL it is given (``hook``) carrying the run id, unless ``scenario`` is ``never``."""
    seen: dict[str, list[str]] = {"paths": [], "events": []}
    tasks: set[asyncio.Task[None]] = set()

    async def ok(request: web.Request) -> web.Response:
        seen["paths"].append(request.path)
        return web.json_response({"ok": True})

    async def status(request: web.Request) -> web.Response:
        seen["paths"].append(request.path)
        return web.Response(status=int(request.match_info["code"]))

    async def echo(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        token = auth.removeprefix("Bearer ")
        body = {
            "authorization": auth,
            "quoted": urllib.parse.quote(token, safe=""),
            "b64": base64.b64encode(token.encode()).decode(),
            "custom": request.headers.get("X-Custom", ""),
            "literal": request.headers.get("X-Api-Key", ""),
        }
        headers = {"X-Echo": token, "Set-Cookie": f"session={token}", "X-Trace": "abc"}
        return web.json_response(body, headers=headers)

    async def ansi(request: web.Request) -> web.Response:
        return web.Response(text="\x1b[2J\x1b[31mall good\r\nX-Forged: line")

    async def long(request: web.Request) -> web.Response:
        return web.json_response({"state": "degraded " + "x" * 300})

    async def deliver(hook: str, run: str) -> None:
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as session:
            await session.post(
                hook,
                json={"data": {"run": run}},
                headers={"Authorization": f"Bearer {HOOK_TOKEN}"},
            )

    async def events(request: web.Request) -> web.Response:
        event = await request.json()
        seen["events"].append(event.get("hook", ""))
        if event.get("scenario") != "never":
            task = asyncio.create_task(deliver(event["hook"], event["run"]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return web.json_response({"id": "evt_1"}, status=201)

    app = web.Application()
    app.router.add_get("/ok/{name}", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/echo", echo)
    app.router.add_get("/long", long)
    app.router.add_get("/ansi", ansi)
    app.router.add_post("/v1/events", events)
    with thread_server(app) as port:
        yield port, seen


def once(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "once", *args],
        env={"PATH": "", **QUIET, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def checks_env(checks: list[dict[str, Any]], **env: str) -> dict[str, str]:
    return {"VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}), **env}


def http(name: str, port: int, path: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "http",
        "target": f"http://127.0.0.1:{port}{path or '/ok/' + name}",
        **extra,
    }


def heartbeat(name: str = "nightly-sync") -> dict[str, Any]:
    return {
        "name": name,
        "type": "heartbeat",
        "target": "the nightly sync job",
        "interval": "1m",
        "settings": {"period": "24h", "token": "${PING_TOKEN}"},
    }


def webhook(name: str, port: int, scenario: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "webhook",
        "target": f"http://127.0.0.1:{port}",
        "interval": "1m",
        "timeout": "10s",
        "settings": {
            "trigger": {
                "steps": [
                    {
                        "name": "event",
                        "method": "POST",
                        "url": "/v1/events",
                        "json": {"run": "${run_id}", "hook": "${hook_url}", "scenario": scenario},
                    }
                ]
            },
            "correlation": {"path": "$.data.run"},
            "token": "${HOOK_TOKEN}",
            "wait": "2s",
        },
    }


def results(stdout: str) -> dict[str, dict[str, Any]]:
    document = json.loads(stdout)
    return {item["check"]: item for item in document["results"]}


# ---------------------------------------------------------------- selection


def test_an_empty_selection_is_an_error_of_its_own(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("checks: []\n")
    result = once("--checks", str(empty), env={})
    assert result.returncode == 4, result.stdout + result.stderr
    assert "no check selected" in result.stderr and "holds no check" in result.stderr
    assert "0 passed, 0 failed" not in result.stdout


def test_checks_filtered_out_by_regions_select_nothing(tmp_path: Path, vendor: tuple[int, Any]) -> None:
    port, seen = vendor
    checks = [http("eu-api", port, regions=["eu-west-1"]), http("us-api", port, regions=["us-east-1"])]
    junit = tmp_path / "report.xml"
    env = checks_env(checks, VANTAGE_REGION="ap-south-1")
    result = once("--json", "--junit", str(junit), env=env)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "none of them runs in region ap-south-1 (VANTAGE_REGION); they run in eu-west-1, us-east-1" in (
        result.stderr
    )
    document = json.loads(result.stdout)
    assert document["exit_status"] == 4 and document["results"] == []
    # The JUnit report says why, rather than holding an empty (green) suite.
    case = ET.parse(junit).getroot().find("testsuite/testcase")
    assert case is not None and case.find("error") is not None
    assert seen["paths"] == []  # nothing ran

    # The same checks in their region run.
    result = once("--json", env=checks_env(checks, VANTAGE_REGION="eu-west-1"))
    assert result.returncode == 0, result.stderr
    assert list(results(result.stdout)) == ["eu-api"]


def test_globs_and_labels_select(vendor: tuple[int, Any], tmp_path: Path) -> None:
    port, seen = vendor
    checks = [
        http("stripe-charges", port, labels={"vendor": "stripe", "team": "payments"}),
        http("stripe-refunds", port, labels={"vendor": "stripe", "team": "risk"}),
        http("shopify-orders", port, labels={"vendor": "shopify", "team": "payments"}),
    ]
    env = checks_env(checks)

    def ran(*args: str) -> set[str]:
        seen["paths"].clear()
        result = once("--json", *args, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        # What the report says ran is what reached the vendor.
        assert {p.removeprefix("/ok/") for p in seen["paths"]} == set(results(result.stdout))
        return set(results(result.stdout))

    assert ran("--check", "stripe-*") == {"stripe-charges", "stripe-refunds"}
    assert ran("--check", "stripe-charges", "--check", "shop*") == {"stripe-charges", "shopify-orders"}
    assert ran("--label", "team=payments") == {"stripe-charges", "shopify-orders"}
    assert ran("--label", "team=payments", "--label", "vendor=stripe") == {"stripe-charges"}
    assert ran("--check", "stripe-*", "--label", "team=pay*") == {"stripe-charges"}

    result = once("--check", "stripe-*", "--label", "vendor=shopify", env=env)
    assert result.returncode == 4 and "none matches --label vendor=shopify" in result.stderr
    # A pattern that matches nothing is a typo in the pipeline, even beside one that matches.
    result = once("--check", "stripe-charges", "--check", "strpe-refunds", env=env)
    assert result.returncode == 4 and "--check 'strpe-refunds' matches no check" in result.stderr
    result = once("--label", "payments", env=env)
    assert result.returncode == 2 and "is not KEY=VALUE" in result.stderr

    # --checks names the file, over both variables.
    path = tmp_path / "checks.yaml"
    path.write_text(yaml.safe_dump({"checks": [http("from-file", port)]}))
    result = once("--checks", str(path), "--json", env={**env, "VANTAGE_CHECKS_FILE": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    assert list(results(result.stdout)) == ["from-file"]


# ---------------------------------------------------------------- round trips


def test_an_active_webhook_waits_for_its_delivery(vendor: tuple[int, Any]) -> None:
    port, seen = vendor
    inbound = free_port()
    env = checks_env(
        [webhook("payments-webhook", port, "ok"), webhook("lost-webhook", port, "never")],
        VANTAGE_PORT=str(inbound),
        VANTAGE_HOST="127.0.0.1",
        VANTAGE_PUBLIC_URL=f"http://127.0.0.1:{inbound}",
        HOOK_TOKEN=HOOK_TOKEN,
    )
    result = once("--json", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    found = results(result.stdout)
    assert found["payments-webhook"]["result"] == "passed", found
    assert found["lost-webhook"]["result"] == "failed"
    assert found["lost-webhook"]["reason"] == "not_delivered"
    assert sorted(seen["events"]) == [
        f"http://127.0.0.1:{inbound}/hooks/lost-webhook",
        f"http://127.0.0.1:{inbound}/hooks/payments-webhook",
    ]
    assert f"serving /hooks and /heartbeat on port {inbound}" in result.stderr

    result = once("--check", "payments-webhook", "-v", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed, 0 failed" in result.stdout
    # -v shows the trigger's request and the delivery that came back, the token withheld.
    out = result.stdout
    assert f"> POST http://127.0.0.1:{port}/v1/events" in out
    assert "--- received at /hooks/payments-webhook: 1" in out
    assert "(accepted)" in out and "<< Authorization: <redacted>" in out
    assert "<< (body, " in out and '{"data": {"run": "' in out
    for spelling in spellings(HOOK_TOKEN):
        assert spelling not in out + result.stderr


def test_hook_url_without_a_public_url_is_a_configuration_error(vendor: tuple[int, Any]) -> None:
    port, seen = vendor
    env = checks_env([webhook("payments-webhook", port, "ok")], HOOK_TOKEN=HOOK_TOKEN)
    expected = (
        "check 'payments-webhook', field 'settings.trigger.steps[0].json.hook': "
        "${hook_url} needs VANTAGE_PUBLIC_URL"
    )
    for command in ("validate", "once"):
        result = subprocess.run(
            [sys.executable, "-m", "agent", command],
            env={"PATH": "", **QUIET, **env},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert expected in result.stderr, result.stderr
    assert seen["events"] == []  # refused before the trigger ran


def _ping_when_up(port: int, name: str, stop: threading.Event) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/heartbeat/{name}?status=ok",
        headers={"Authorization": f"Bearer {PING_TOKEN}"},
    )
    while not stop.is_set():
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        stop.wait(0.1)


def test_passive_checks_are_not_judged_unless_waited_for(vendor: tuple[int, Any], tmp_path: Path) -> None:
    port, _ = vendor
    inbound = free_port()
    checks = [http("api", port), heartbeat()]
    env = checks_env(checks, VANTAGE_PORT=str(inbound), VANTAGE_HOST="127.0.0.1", PING_TOKEN=PING_TOKEN)

    result = once(env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("nightly-sync"))
    assert "NOT JUDGED" in row and "--wait-passive" in row
    assert "1 passed, 0 failed, 1 not judged" in result.stdout

    # Waited for, with a ping on its way: judged, and passed.
    stop = threading.Event()
    pinger = threading.Thread(target=_ping_when_up, args=(inbound, "nightly-sync", stop), daemon=True)
    pinger.start()
    try:
        result = once("--wait-passive", "30s", "--json", env=env)
    finally:
        stop.set()
        pinger.join(5)
    assert result.returncode == 0, result.stdout + result.stderr
    assert results(result.stdout)["nightly-sync"]["result"] == "passed"

    # Waited for, and nothing came: failed. The wait outlasts the progress interval, so a plain
    # progress line (stderr is not a terminal) says what the gate waits for.
    result = once("--wait-passive", "6s", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("nightly-sync"))
    assert "FAIL" in row and "stale" in row and "no valid ping within 6s (--wait-passive)" in row
    assert "vantage once: 1/2 checks done; waiting for nightly-sync (waiting up to 6s for deliveries" in (
        result.stderr
    )


# ---------------------------------------------------------------- reports


def junit_cases(path: Path) -> list[dict[str, Any]]:
    """Read a JUnit file as GitLab's parser does (and check what Jenkins' needs on the way): a
    ``testsuites`` or ``testsuite`` root, suites of test cases with a name, a class name and a
    time in seconds; a ``failure`` or ``error`` child fails a case (its message from the
    ``message`` attribute or the text), a ``skipped`` child skips it; the suite's counts agree."""
    root = ET.parse(path).getroot()
    assert root.tag in ("testsuites", "testsuite")
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    assert suites
    cases: list[dict[str, Any]] = []
    for suite in suites:
        assert suite.get("name")
        found = suite.findall("testcase")
        assert suite.findall("*") == found  # nothing else at that level
        failed = skipped = errors = 0
        for case in found:
            assert case.get("name") and case.get("classname")
            float(case.get("time", ""))  # seconds, a number
            outcome = [child for child in case if child.tag in ("failure", "error", "skipped")]
            assert len(outcome) <= 1
            status, message, kind = "success", "", ""
            if outcome:
                child = outcome[0]
                status = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = child.get("message") or child.text or ""
                kind = child.get("type", "")
                failed += child.tag == "failure"
                errors += child.tag == "error"
                skipped += child.tag == "skipped"
            cases.append(
                {
                    "name": case.get("name"),
                    "classname": case.get("classname"),
                    "status": status,
                    "message": message,
                    "type": kind,
                    "text": outcome[0].text if outcome else None,
                    "system_out": case.findtext("system-out"),
                }
            )
        assert int(suite.get("tests", "-1")) == len(found)
        assert int(suite.get("failures", "-1")) == failed
        assert int(suite.get("errors", "-1")) == errors
        assert int(suite.get("skipped", "-1")) == skipped
        float(suite.get("time", ""))
    return cases


def test_junit_and_json_reports(vendor: tuple[int, Any], tmp_path: Path) -> None:
    port, _ = vendor
    inbound = free_port()
    checks = [
        http("up", port, settings={"assert": [{"source": "status", "op": "eq", "value": 200}]}),
        http("down", port, "/status/502"),
        heartbeat(),
    ]
    env = checks_env(
        checks,
        VANTAGE_PORT=str(inbound),
        VANTAGE_HOST="127.0.0.1",
        VANTAGE_REGION="eu",
        PING_TOKEN=PING_TOKEN,
    )
    report = tmp_path / "junit.xml"
    result = once("--json", "--junit", str(report), env=env)
    assert result.returncode == 1, result.stdout + result.stderr  # a failure outranks "not judged"

    document = json.loads(result.stdout)
    assert document["exit_status"] == 1 and document["region"] == "eu"
    assert document["summary"] == {"passed": 1, "failed": 1, "not_judged": 1, "total": 3}
    found = {item["check"]: item for item in document["results"]}
    up, down = found["up"], found["down"]
    assert up["result"] == "passed" and up["region"] == "eu" and up["reason"] is None
    assert set(up["phases"]) == {"resolve", "connect", "tls", "processing", "transfer"}
    assert up["duration"] > 0
    assert up["assertions"] == [
        {"assertion": "status eq 200", "passed": True, "actual": "200", "message": ""}
    ]
    assert down["result"] == "failed" and down["reason"] == "http_status" and "HTTP 502" in down["message"]
    assert found["nightly-sync"]["result"] == "not_judged"

    cases = {case["name"]: case for case in junit_cases(report)}
    assert set(cases) == {"up [eu]", "down [eu]", "nightly-sync [eu]"}
    assert cases["up [eu]"]["status"] == "success" and cases["up [eu]"]["classname"] == "vantage.eu.http"
    assert cases["down [eu]"]["status"] == "failed" and cases["down [eu]"]["type"] == "http_status"
    assert "HTTP 502" in cases["down [eu]"]["message"]
    assert cases["nightly-sync [eu]"]["status"] == "skipped"
    assert cases["nightly-sync [eu]"]["message"].startswith("not judged: passive check")


def test_messages_are_whole_and_logs_come_before_the_table(vendor: tuple[int, Any]) -> None:
    port, _ = vendor
    expected = "healthy " + "y" * 200
    check = http(
        "status-page",
        port,
        "/long",
        settings={"assert": [{"source": "body", "path": "$.state", "op": "eq", "value": expected}]},
    )
    result = once(env=checks_env([check], VANTAGE_LOG_FORMAT="text"))
    assert result.returncode == 1, result.stdout + result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("status-page"))
    # Nothing cut at 100 characters: the table's message is the probe's whole message.
    assert expected in row and "got degraded xxxx" in row, row
    whole = results(once("--json", env=checks_env([check])).stdout)["status-page"]["message"]
    assert len(whole) > 300 and row.endswith("  " + whole)
    # The run's log line went to stderr; stdout holds the report alone.
    assert "check status-page is failing" in result.stderr
    assert "is failing" not in result.stdout


def spellings(secret: str) -> list[str]:
    """The ways a secret could leak: as is, percent-encoded, base64, JSON-escaped."""
    return [
        secret,
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        base64.b64encode(secret.encode()).decode(),
        base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
        json.dumps(secret)[1:-1],
    ]


def test_debug_shows_the_exchange_with_every_secret_redacted(vendor: tuple[int, Any], tmp_path: Path) -> None:
    port, _ = vendor
    check = http(
        "echo",
        port,
        "/echo",
        settings={
            "headers": {
                "Authorization": "Bearer ${API_KEY}",
                "X-Custom": "k=${API_KEY}",
                "X-Api-Key": LITERAL,
            },
            "assert": [
                {"source": "status", "op": "eq", "value": 200},
                {"source": "header", "name": "X-Trace", "op": "eq", "value": "xyz"},
            ],
        },
    )
    hostile = http("hostile", port, "/ansi")
    env = checks_env([check, hostile], API_KEY=SECRET, VANTAGE_LOG_LEVEL="debug", VANTAGE_LOG_FORMAT="text")
    report = tmp_path / "junit.xml"
    result = once("-v", "--junit", str(report), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    # What a target sent cannot drive the terminal or forge a line of the report.
    assert "\x1b" not in out and "\r" not in out
    assert "\\x1b[2J\\x1b[31mall good\\r\\nX-Forged: line" in out
    # The request, the response (headers and a body excerpt), the assertions, the waterfall.
    assert f"> GET http://127.0.0.1:{port}/echo" in out
    assert "> Authorization: <redacted>" in out and "> X-Api-Key: <redacted>" in out
    assert "> X-Custom: k=<redacted>" in out  # redacted by the agent's redactor, not by its name
    assert "< HTTP/1.1 200" in out and "< X-Echo: <redacted>" in out and "< Set-Cookie: <redacted>" in out
    assert "< X-Trace: abc" in out
    assert '"authorization": "<redacted>"' in out and '"literal": "<redacted>"' in out  # echoed back
    assert "pass  expected: status eq 200; actual: 200" in out
    assert 'FAIL  expected: header X-Trace eq "xyz"; actual: abc' in out
    assert "--- waterfall" in out and "check echo" in out and "GET" in out
    assert "--- phases" in out and "connect" in out
    written = out + result.stderr + report.read_text()
    assert "<system-out>" in report.read_text()
    for secret in (SECRET, LITERAL):
        for spelling in spellings(secret):
            assert spelling not in written, spelling

    # --json -v carries the same, as data.
    result = once("-v", "--json", "--check", "echo", env=env)
    item = results(result.stdout)["echo"]
    exchange = item["exchanges"][0]
    assert exchange["status"] == 200 and ["X-Api-Key", "<redacted>"] in exchange["request_headers"]
    assert len(item["trace_id"]) == 32 and item["spans"][0]["name"] == "check echo"
    for spelling in spellings(SECRET) + spellings(LITERAL):
        assert spelling not in result.stdout + result.stderr


def test_on_a_terminal_the_progress_line_is_redrawn_and_logs_wait_for_it(vendor: tuple[int, Any]) -> None:
    import os
    import pty

    port, _ = vendor
    inbound = free_port()
    env = checks_env(
        [http("down", port, "/status/500"), heartbeat()],
        VANTAGE_PORT=str(inbound),
        VANTAGE_HOST="127.0.0.1",
        VANTAGE_LOG_FORMAT="text",
        PING_TOKEN=PING_TOKEN,
    )
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "once", "--wait-passive", "2s"],
            env={"PATH": "", **QUIET, **env},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        follower = -1
        out, _ = proc.communicate(timeout=60)
        terminal = b""
        while True:  # bounded: the child has exited, and the pty ends with it
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            terminal += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == 1, out
    text = terminal.decode()
    drawn = [i for i in range(len(text)) if text.startswith("\r\x1b[Kvantage once: ", i)]
    assert len(drawn) >= 2, text  # redrawn in place, twice a second
    assert "\n" not in text[drawn[0] : drawn[-1]]  # never a line of its own
    # The failing check's log line came during the run, and was held until the line was cleared.
    assert text.index("check down is failing") > drawn[-1], text
    assert "0 passed, 2 failed" in out


def test_which_checks_are_passive() -> None:
    from agent.once import passive

    from .helpers import config_from

    hook = webhook("active-hook", 1, "ok")
    quiet = {
        **hook,
        "name": "passive-hook",
        "settings": {"mode": "passive", "window": "1h", "token": "${HOOK_TOKEN}"},
    }
    config = config_from(
        [hook, quiet, heartbeat(), http("api", 1)],
        HOOK_TOKEN=HOOK_TOKEN,
        PING_TOKEN=PING_TOKEN,
        VANTAGE_PUBLIC_URL="http://127.0.0.1:1",
    )
    assert {entry.check.name: passive(entry) for entry in config.entries} == {
        "active-hook": False,
        "passive-hook": True,
        "nightly-sync": True,
        "api": False,
    }


def test_every_exit_status_is_documented() -> None:
    from agent.once import Exit

    help_text = subprocess.run(
        [sys.executable, "-m", "agent", "once", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    docs = (ROOT / "docs" / "ci.md").read_text()
    for status in Exit:
        assert f"\n  {status.value}  " in help_text, status
        assert f"\n| {status.value} | " in docs, status
