"""Hot reload (agent/reload.py): SIGHUP, ``POST /-/reload`` and a changed checks file apply a new
check set that validated, keep the running one when it does not, and leave unchanged checks alone.

In process (the agent's parts inspected directly) and as real agent processes (a single agent, a
ConfigMap-style symlink swap, worker processes), against local HTTP servers."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import anyio
import pytest
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from agent.app import Agent, build_agent
from agent.app import serve as serve_agent
from agent.config.settings import load_config

from .helpers import FakeClock, free_port, otlp_http_receiver, serve, thread_server, wait_until
from .test_scheduler import ENV, make_agent, sleep_check

SECRET = "reload-secret-value-7f3a"
TOKEN = "reload-api-token-91c2"


async def ok(_: web.Request) -> web.Response:
    return web.json_response({"ok": True})


def http(
    name: str, port: int, *, interval: str = "300ms", timeout: str = "250ms", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "type": "http",
        "target": f"http://127.0.0.1:{port}/ok",
        "interval": interval,
        "timeout": timeout,
        **extra,
    }


def write(path: Path, checks: list[dict[str, Any]] | str) -> None:
    """Write a checks file whole, as a ConfigMap update or an editor's save does (new inode)."""
    text = checks if isinstance(checks, str) else yaml.safe_dump({"checks": checks})
    fresh = path.with_name(path.name + ".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def samples(text: str, family: str) -> dict[str, float]:
    """A family's values by their ``check`` label (or ``worker`` label, or "" for none)."""
    out = {}
    for metric in text_string_to_metric_families(text):
        for sample in metric.samples:
            if sample.name == family:
                key = sample.labels.get("check") or sample.labels.get("worker") or ""
                out[key] = sample.value
    return out


def metrics_of(agent: Agent) -> str:
    return agent.telemetry.render_prometheus().decode()


# ---------------------------------------------------------------- in process


@asynccontextmanager
async def running(path: Path, **env: str) -> AsyncIterator[Agent]:
    environ = {
        "VANTAGE_CHECKS_FILE": str(path),
        "VANTAGE_PORT": "0",
        "VANTAGE_HOST": "127.0.0.1",
        "VANTAGE_RELOAD_POLL_INTERVAL": "0",
        "OTEL_TRACES_EXPORTER": "none",
        "RELOAD_SECRET": SECRET,
        **env,
    }
    agent = build_agent(load_config(environ), environ)
    async with anyio.create_task_group() as tg:
        port = await tg.start(partial(serve_agent, agent, handle_signals=False))
        agent.server.port = port  # the port bound, for the tests that call the agent
        yield agent
        tg.cancel_scope.cancel()


async def wait_for_runs(agent: Agent, name: str, runs: int) -> None:
    with anyio.fail_after(20):
        while (state := agent.recorder.states.get(name)) is None or state.runs < runs:
            await anyio.sleep(0.02)


class Remembered:
    """An object a probe would keep in its check's state (``ctx.state``)."""


pytestmark = pytest.mark.anyio


async def test_added_checks_start_removed_go_and_unchanged_keep_their_state(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/ok", ok)
    async with serve(app) as port:
        path = tmp_path / "checks.yml"
        write(path, [http("kept", port), http("gone", port)])
        async with running(path) as agent:
            await wait_for_runs(agent, "kept", 2)
            await wait_for_runs(agent, "gone", 1)
            kept = agent.recorder.states["kept"]
            remembered = agent.states.of("kept").get(Remembered)
            due = agent.scheduler.due("kept")
            runs = kept.runs
            assert 'check="gone"' in metrics_of(agent)

            write(path, [http("kept", port), http("new", port, labels={"vendor": "acme"})])
            assert agent.reloader is not None
            result = await agent.reloader.reload("test")

            assert (result.status, result.added, result.removed, result.changed) == (
                "reloaded",
                ("new",),
                ("gone",),
                (),
            )
            # The removed check: out of the scheduler, its state and series gone.
            assert agent.scheduler.names == ["kept", "new"]
            assert "gone" not in agent.states and "gone" not in agent.recorder.states
            assert 'check="gone"' not in metrics_of(agent)
            # The unchanged check: the same state and history, its phase and its next tick.
            assert agent.recorder.states["kept"] is kept
            assert agent.states.of("kept").get(Remembered) is remembered
            after = agent.scheduler.due("kept")
            assert due is not None and after is not None
            interval = kept.entry.check.interval
            assert round((after - due) / interval, 6) == round((after - due) / interval)  # same phase
            await wait_for_runs(agent, "kept", runs + 2)  # its run count goes on from where it was
            await wait_for_runs(agent, "new", 1)
            text = metrics_of(agent)
            assert samples(text, "probe_success")["new"] == 1.0
            assert 'vendor="acme"' in text
            assert samples(text, "vantage_config_last_reload_successful") == {"": 1.0}
            assert samples(text, "vantage_checks") == {"": 2.0}


async def test_the_secrets_of_a_new_check_are_redacted_from_the_start(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/ok", ok)
    async with serve(app) as port:
        path, secret = tmp_path / "checks.yml", tmp_path / "owner"
        write(path, [http("api", port)])
        async with running(path) as agent:
            # A secret the running agent has never seen: a file that a new check refers to.
            secret.write_text("owner-secret-5be1")
            write(path, [http("api", port), http("new", port, labels={"owner": f"${{file:{secret}}}"})])
            assert agent.reloader is not None
            assert (await agent.reloader.reload("test")).added == ("new",)
            await wait_for_runs(agent, "new", 1)
            text = metrics_of(agent)
            assert 'owner="<redacted>"' in text and "owner-secret-5be1" not in text


def hook(name: str, token: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "webhook",
        "target": "http://127.0.0.1:9",
        "interval": "1s",
        "timeout": "900ms",
        "settings": {"mode": "passive", "window": "5m", "token": token},
    }


async def test_the_inbound_endpoints_follow_the_reloaded_checks(tmp_path: Path) -> None:
    import aiohttp

    path = tmp_path / "checks.yml"
    write(path, [hook("orders", "orders-token-1")])
    async with running(path) as agent, aiohttp.ClientSession() as session:

        async def deliver(name: str, token: str) -> int:
            url = f"http://127.0.0.1:{agent.server.port}/hooks/{name}"
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            async with session.post(url, data=b"{}", headers=headers) as response:
                return response.status

        assert await deliver("refunds", "refunds-token-2") == 401  # not configured yet
        write(path, [hook("refunds", "refunds-token-2")])
        assert agent.reloader is not None
        result = await agent.reloader.reload("test")
        assert (result.added, result.removed) == (("refunds",), ("orders",))
        assert await deliver("refunds", "refunds-token-2") == 200
        assert await deliver("orders", "orders-token-1") == 401  # removed: unknown, as any other


async def test_a_changed_check_is_restarted_with_fresh_state(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/ok", ok)
    async with serve(app) as port:
        path = tmp_path / "checks.yml"
        write(path, [http("api", port, labels={"tier": "one"}), http("other", port)])
        async with running(path) as agent:
            await wait_for_runs(agent, "api", 1)
            before = agent.recorder.states["api"]
            remembered = agent.states.of("api").get(Remembered)
            write(path, [http("api", port, labels={"tier": "two"}), http("other", port)])
            assert agent.reloader is not None
            result = await agent.reloader.reload("test")
            assert result.changed == ("api",) and result.added == result.removed == ()
            assert agent.recorder.states["api"] is not before
            assert agent.states.of("api").get(Remembered) is not remembered
            assert 'tier="one"' not in metrics_of(agent)  # the old definition's series went
            await wait_for_runs(agent, "api", 1)
            assert 'tier="two"' in metrics_of(agent)
            # Reloading the same file again changes nothing.
            again = await agent.reloader.reload("test")
            assert again.status == "unchanged" and again.digest == result.digest

            # Reloads asked for at once run one after the other: the first applies the change,
            # the second finds nothing left to do (two at once would both start "api2").
            write(path, [http("api", port, labels={"tier": "two"}), http("api2", port)])
            results = []

            async def reload() -> None:
                assert agent.reloader is not None
                results.append(await agent.reloader.reload("test"))

            async with anyio.create_task_group() as tg:
                tg.start_soon(reload)
                tg.start_soon(reload)
            assert sorted((r.status, r.added) for r in results) == [
                ("reloaded", ("api2",)),
                ("unchanged", ()),
            ]
            assert agent.scheduler.names == ["api", "api2"]


async def test_a_broken_file_keeps_the_running_checks_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application()
    app.router.add_get("/ok", ok)
    async with serve(app) as port:
        path = tmp_path / "checks.yml"
        write(path, [http("api", port)])
        async with running(path) as agent:
            await wait_for_runs(agent, "api", 1)
            assert agent.reloader is not None
            started = samples(metrics_of(agent), "vantage_config_last_reload_success_timestamp_seconds")[""]
            # A bad value that comes from a secret: the reason names the field, never the value.
            write(path, [http("api", port), http("bad", port, interval="${RELOAD_SECRET}")])
            with caplog.at_level(logging.ERROR, logger="vantage.reload"):
                result = await agent.reloader.reload("test")
            assert result.status == "failed"
            assert "'bad'" in result.error and "interval" in result.error
            assert SECRET not in result.error
            logged = "\n".join(record.getMessage() for record in caplog.records)
            assert "the checks were not reloaded (test); the 1 running checks are kept" in logged
            assert "interval" in logged and SECRET not in logged
            assert agent.scheduler.names == ["api"]
            text = metrics_of(agent)
            assert samples(text, "vantage_config_last_reload_successful") == {"": 0.0}
            assert samples(text, "vantage_config_last_reload_success_timestamp_seconds") == {"": started}
            runs = agent.recorder.states["api"].runs
            await wait_for_runs(agent, "api", runs + 1)  # still probing

            write(path, "checks: [ {name: unclosed")  # not even YAML
            assert (await agent.reloader.reload("test")).status == "failed"

            write(path, [http("api", port), http("fixed", port)])
            assert (await agent.reloader.reload("test")).added == ("fixed",)
            text = metrics_of(agent)
            assert samples(text, "vantage_config_last_reload_successful") == {"": 1.0}
            assert samples(text, "vantage_config_last_reload_success_timestamp_seconds")[""] > started


async def test_a_run_in_flight_of_a_removed_check_is_cancelled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    arrived = anyio.Event()
    requests: list[web.Request] = []

    async def hang(request: web.Request) -> web.Response:
        requests.append(request)
        arrived.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    def closed() -> bool:
        transport = requests[0].transport
        return transport is None or transport.is_closing()

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/hang", hang)
    async with serve(app) as port:
        path = tmp_path / "checks.yml"
        slow = {**http("slow", port, interval="5s", timeout="4s"), "target": f"http://127.0.0.1:{port}/hang"}
        write(path, [http("api", port), slow])
        async with running(path, VANTAGE_SHUTDOWN_TIMEOUT="30s") as agent:
            with anyio.fail_after(10):  # the slow check's first tick is within its interval
                await arrived.wait()
            assert agent.recorder.states["slow"].runs == 0
            write(path, [http("api", port)])
            assert agent.reloader is not None
            with caplog.at_level(logging.INFO, logger="vantage.checks"), anyio.fail_after(20):
                result = await agent.reloader.reload("test")
                while not closed():  # the probe's connection is closed
                    await anyio.sleep(0.02)
            assert result.removed == ("slow",)
            # Cancelled, not timed out: a run that ended at its timeout would have said so.
            assert not [r for r in caplog.records if "slow" in r.getMessage()]
            assert "slow" not in agent.recorder.states
            assert 'check="slow"' not in metrics_of(agent)


async def test_reload_endpoint_needs_the_token(tmp_path: Path) -> None:
    app = web.Application()
    app.router.add_get("/ok", ok)
    async with serve(app) as port:
        path = tmp_path / "checks.yml"
        write(path, [http("api", port)])
        async with running(path, VANTAGE_API_TOKEN=TOKEN) as agent:
            write(path, [http("api", port), http("added", port)])
            url = f"http://127.0.0.1:{agent.server.port}/-/reload"
            import aiohttp

            async with aiohttp.ClientSession() as session:
                async with session.post(url) as response:
                    assert response.status == 401
                assert agent.scheduler.names == ["api"]
                async with session.post(url, headers={"Authorization": "Bearer wrong"}) as response:
                    assert response.status == 401
                async with session.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                    assert response.status == 405  # a change is asked for with POST only
                async with session.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
                    assert response.status == 200
                    body = await response.json()
            assert body["status"] == "reloaded" and body["added"] == ["added"]
            assert agent.scheduler.names == ["api", "added"]


# ---------------------------------------------------------------- as a process


class FileAgent:
    """``vantage run`` with ``VANTAGE_CHECKS_FILE``, in a subprocess."""

    def __init__(self, path: Path, **env: str) -> None:
        self.port = free_port()
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "VANTAGE_CHECKS_FILE": str(path),
            "VANTAGE_PORT": str(self.port),
            "VANTAGE_HOST": "127.0.0.1",
            "VANTAGE_LOG_FORMAT": "text",
            "VANTAGE_API_TOKEN": TOKEN,
            "OTEL_TRACES_EXPORTER": "none",
            **env,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run"],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = ""

    def get(self, path: str) -> str:
        with urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
            return str(response.read().decode())

    def post(self, path: str, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = Request(f"http://127.0.0.1:{self.port}{path}", method="POST", headers=headers)
        try:
            with urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except HTTPError as exc:
            body = exc.read()
            return exc.code, json.loads(body) if body.startswith(b"{") else {"text": body.decode()}

    def runs(self) -> dict[str, int]:
        """Each check's run count, from ``/api/checks``."""
        request = Request(
            f"http://127.0.0.1:{self.port}/api/checks", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        with urlopen(request, timeout=10) as response:
            return {check["name"]: check["runs"] for check in json.loads(response.read())["checks"]}

    def metric(self, family: str) -> dict[str, float]:
        try:
            return samples(self.get("/metrics"), family)
        except OSError:
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        self.output += out


@contextmanager
def file_agent(path: Path, **env: str) -> Iterator[FileAgent]:
    agent = FileAgent(path, **env)
    try:
        wait_until(lambda: agent.metric("vantage_config_last_reload_successful"), timeout=30)
        yield agent
    finally:
        agent.stop()


@contextmanager
def target() -> Iterator[int]:
    app = web.Application()
    app.router.add_get("/ok", ok)
    with thread_server(app) as port:
        yield port


def test_sighup_applies_a_changed_file(tmp_path: Path) -> None:
    path = tmp_path / "checks.yml"
    with target() as port:
        write(path, [http("one", port), http("two", port)])
        with file_agent(path, VANTAGE_RELOAD_POLL_INTERVAL="0") as agent:
            wait_until(lambda: set(agent.metric("probe_success")) == {"one", "two"})
            write(path, [http("one", port), http("three", port)])
            agent.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: set(agent.metric("probe_success")) == {"one", "three"})
            assert agent.metric("vantage_config_last_reload_successful") == {"": 1.0}
            runs = agent.metric("probe_runs_total")
            assert "two" not in runs
        assert "checks reloaded (SIGHUP): 2 checks; added three; removed two" in agent.output


def test_post_reload_with_a_broken_file_keeps_the_checks(tmp_path: Path) -> None:
    path = tmp_path / "checks.yml"
    with target() as port:
        write(path, [http("one", port)])
        with file_agent(path, VANTAGE_RELOAD_POLL_INTERVAL="0") as agent:
            write(path, [http("one", port), {"name": "Bad Name", "type": "http", "target": "x"}])
            assert agent.post("/-/reload", token=None)[0] == 401
            status, body = agent.post("/-/reload")
            assert status == 500 and body["status"] == "failed"
            assert "checks[1]" in body["error"]
            wait_until(lambda: agent.metric("vantage_config_last_reload_successful") == {"": 0.0})
            wait_until(lambda: set(agent.metric("probe_success")) == {"one"})
            write(path, [http("one", port), http("two", port)])
            status, body = agent.post("/-/reload")
            assert status == 200 and body["added"] == ["two"]
            wait_until(lambda: agent.metric("vantage_config_last_reload_successful") == {"": 1.0})
        assert "the checks were not reloaded (POST /-/reload); the 1 running checks are kept" in agent.output


def test_the_reload_metrics_travel_over_otlp(tmp_path: Path) -> None:
    path = tmp_path / "checks.yml"
    with target() as port, otlp_http_receiver() as (endpoint, received):
        write(path, [http("one", port)])
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
            "VANTAGE_RELOAD_POLL_INTERVAL": "0",
        }
        with file_agent(path, **env) as agent:
            wait_until(lambda: received.points("vantage.config.last_reload_successful"))
            assert received.metric_units()["vantage.config.last_reload_success_timestamp"] == "s"
            write(path, "checks: {}")  # not a list of checks
            status, body = agent.post("/-/reload")
            assert status == 500 and "checks" in body["error"]
            wait_until(lambda: received.points("vantage.config.last_reload_successful")[-1][1] == 0.0)


async def test_the_scheduler_drops_queued_runs_cancels_going_ones_and_adds_while_ticking() -> None:
    """On a fake clock, one slot: a removed check's run that waits for the slot never starts, a
    removed check's run that holds it is cancelled and frees it, and an added check ticks."""
    clock = FakeClock()
    checks = [sleep_check(name, 10, seconds=3600) for name in ("a", "b", "c")]
    agent, probe = make_agent(checks, clock, VANTAGE_CONCURRENCY="1")
    scheduler = agent.scheduler
    async with anyio.create_task_group() as tg:
        tg.start_soon(scheduler.run)
        for _ in range(1000):  # every check came due once within its 10 s interval
            if len(scheduler._waiting) == 2:
                break
            await clock.advance(0.01)
        going = [name for name, count in probe.active_per_check.items() if count]
        queued = [item.entry.check.name for item in scheduler._waiting]
        assert len(going) == 1 and len(queued) == 2

        assert await scheduler.remove([queued[0]], drain=5) == []
        assert [item.entry.check.name for item in scheduler._waiting] == [queued[1]]
        assert await scheduler.remove(going, drain=5) == []  # cancelled, not left to its 9 s timeout
        await clock.advance(0.01)
        assert probe.active_per_check[going[0]] == 0
        assert probe.active_per_check[queued[1]] == 1  # the slot it freed went to the next in line
        assert queued[0] not in probe.starts
        assert scheduler.names == [queued[1]]

        extra = load_config(
            {"VANTAGE_CHECKS": yaml.safe_dump({"checks": [sleep_check("d", 10, seconds=0)]}), **ENV},
            registry=agent.config.registry,
        ).entries
        agent.recorder.register(extra)
        scheduler.add(extra)
        due = scheduler.due("d")
        assert due is not None and due - clock.monotonic() <= 10
        await clock.advance(20)
        assert len(probe.starts["d"]) >= 1
        tg.cancel_scope.cancel()


def swap(directory: Path, stamp: str, checks: list[dict[str, Any]]) -> None:
    """Update a ConfigMap-style volume as the kubelet does: a new timestamped directory, a new
    ``..data`` link renamed over the old one, the old directory removed."""
    fresh = directory / f"..2026_11_29_{stamp}"
    fresh.mkdir()
    (fresh / "checks.yml").write_text(yaml.safe_dump({"checks": checks}))
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    (directory / "..data_tmp").symlink_to(fresh.name)
    os.replace(directory / "..data_tmp", directory / "..data")
    if old is not None:
        for item in (directory / old).iterdir():
            item.unlink()
        (directory / old).rmdir()


def test_a_configmap_symlink_swap_is_picked_up_without_a_signal(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    with target() as port:
        swap(volume, "12_00_00.1", [http("one", port)])
        (volume / "checks.yml").symlink_to("..data/checks.yml")
        with file_agent(volume / "checks.yml", VANTAGE_RELOAD_POLL_INTERVAL="200ms") as agent:
            wait_until(lambda: set(agent.metric("probe_success")) == {"one"})
            swap(volume, "12_01_00.2", [http("one", port), http("two", port)])
            wait_until(lambda: set(agent.metric("probe_success")) == {"one", "two"})
            swap(volume, "12_02_00.3", [http("two", port)])
            wait_until(lambda: set(agent.metric("probe_success")) == {"two"})
        assert "checks reloaded" in agent.output and "changed; " not in agent.output


def test_every_worker_reloads_the_same_set(tmp_path: Path) -> None:
    path = tmp_path / "checks.yml"
    names = [f"c{i}" for i in range(6)]
    with target() as port:
        write(path, [http(name, port) for name in names[:4]])
        with file_agent(path, VANTAGE_WORKERS="2", VANTAGE_RELOAD_POLL_INTERVAL="0") as agent:
            wait_until(lambda: set(agent.metric("probe_success")) == set(names[:4]))
            wait_until(lambda: min(agent.runs().values()) >= 5)
            write(path, [http(name, port) for name in names[2:]])
            status, body = agent.post("/-/reload")
            runs = agent.runs()
            assert status == 200 and body["status"] == "reloaded", body
            assert len({worker["digest"] for worker in body["workers"]}) == 1
            # The unchanged checks, in whichever worker runs them, went on counting their runs.
            assert runs["c2"] >= 5 and runs["c3"] >= 5
            wait_until(lambda: set(agent.metric("probe_success")) == set(names[2:]))

            duplicate = {"name": "c0", "type": "http", "target": "x"}
            write(path, [*(http(name, port) for name in names), duplicate])
            status, body = agent.post("/-/reload")
            assert status == 500 and body["status"] == "failed"
            # Every worker refused it, kept its checks and says so.
            wait_until(lambda: agent.metric("vantage_config_last_reload_successful") == {"0": 0.0, "1": 0.0})
            assert set(agent.metric("probe_success")) == set(names[2:])

            write(path, [http(name, port) for name in names[:3]])
            agent.proc.send_signal(signal.SIGHUP)
            wait_until(lambda: set(agent.metric("probe_success")) == set(names[:3]))
            wait_until(lambda: agent.metric("vantage_config_last_reload_successful") == {"0": 1.0, "1": 1.0})
