"""Processes that die: a killed worker is restarted, a killed supervisor takes its workers with it,
and a start that cannot work (a port already taken, a bad exporter in worker mode) is one clear line
and exit status 2."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..helpers import AgentProcess, free_port, wait_until
from ..test_process import _up, get

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CHECKS = [
    {"name": f"c{i}", "type": "tcp", "target": "127.0.0.1:9", "interval": "500ms", "timeout": "400ms"}
    for i in range(4)
]


def children(pid: int) -> list[int]:
    listed = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return sorted(int(child) for child in listed)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def runs(agent: AgentProcess) -> float:
    status, text = get(agent.url("/metrics"))
    assert status == 200, text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "probe_runs"
        for sample in family.samples
        if sample.name == "probe_runs_total"
    )


@contextlib.contextmanager
def workers_agent(**env: str) -> Iterator[AgentProcess]:
    agent = AgentProcess(
        CHECKS,
        {"VANTAGE_WORKERS": "2", "VANTAGE_SHUTDOWN_TIMEOUT": "3s", "VANTAGE_LOG_FORMAT": "text", **env},
    )
    try:
        wait_until(lambda: _up(agent) and get(agent.url("/healthz"))[0] == 200, timeout=40)
        wait_until(lambda: len(children(agent.proc.pid)) == 2, timeout=10)
        yield agent
    finally:
        agent.kill()


def test_a_killed_worker_is_restarted_and_its_checks_go_on() -> None:
    with workers_agent() as agent:
        first = children(agent.proc.pid)
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: not alive(first[0]), timeout=10)
        # Until it is back the agent says it is unhealthy; then it is whole again.
        wait_until(
            lambda: (then := children(agent.proc.pid)) and len(then) == 2 and then != first, timeout=20
        )
        wait_until(lambda: get(agent.url("/healthz"))[0] == 200, timeout=20)
        before = runs(agent)
        wait_until(lambda: runs(agent) > before + 4, timeout=10)
        families = {f.name: f for f in text_string_to_metric_families(get(agent.url("/metrics"))[1])}
        assert [s.value for s in families["vantage_worker_restarts"].samples] == [1.0]
        assert agent.stop() == 0
    assert "exited with status -9; restarting it in 1s (restart 1)" in agent.output, agent.output


def test_a_killed_supervisor_takes_its_workers_with_it() -> None:
    with workers_agent() as agent:
        workers = children(agent.proc.pid)
        agent.proc.kill()  # SIGKILL: no chance to pass anything on
        agent.proc.communicate()
        wait_until(lambda: not any(alive(pid) for pid in workers), timeout=10)


def test_the_supervisor_and_its_workers_stop_within_the_budget() -> None:
    with workers_agent() as agent:
        workers = children(agent.proc.pid)
        started = time.monotonic()
        agent.proc.send_signal(signal.SIGTERM)
        agent.proc.communicate(timeout=3 + 1.5)
        print(f"supervisor exited {time.monotonic() - started:.2f}s after SIGTERM (budget 3s)")
        assert agent.proc.returncode == 0
        assert not any(alive(pid) for pid in workers)


def vantage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


CHECK = "checks: [{name: a, type: tcp, target: '127.0.0.1:9', interval: 1s}]"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_already_in_use_is_one_line_and_status_2(workers: str) -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        result = vantage(
            "run",
            VANTAGE_CHECKS=CHECK,
            VANTAGE_PORT=str(port),
            VANTAGE_HOST="127.0.0.1",
            VANTAGE_WORKERS=workers,
        )
    assert result.returncode == 2, result.stderr
    assert f"VANTAGE_PORT: port {port}" in result.stderr
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr


def test_an_inbound_port_already_in_use_names_its_variable() -> None:
    hook = (
        "checks: [{name: h, type: heartbeat, target: nightly-job, interval: 1m,"
        " settings: {token: '${T}', period: 1m}}]"
    )
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        result = vantage(
            "run",
            VANTAGE_CHECKS=hook,
            T="heartbeat-token-0123",
            VANTAGE_PORT=str(free_port()),
            VANTAGE_HOST="127.0.0.1",
            VANTAGE_INBOUND_PORT=str(port),
        )
    assert result.returncode == 2, result.stderr
    assert f"VANTAGE_INBOUND_PORT: port {port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_worker_mode_validates_exporters_as_a_single_process_does() -> None:
    single = vantage("run", VANTAGE_CHECKS=CHECK, VANTAGE_PORT="0", OTEL_TRACES_EXPORTER="nosuch")
    workers = vantage(
        "run", VANTAGE_CHECKS=CHECK, VANTAGE_PORT="0", OTEL_TRACES_EXPORTER="nosuch", VANTAGE_WORKERS="2"
    )
    assert single.returncode == workers.returncode == 2, workers.stderr
    assert "OTEL_TRACES_EXPORTER: unknown exporter 'nosuch'" in workers.stderr
    assert "Traceback" not in workers.stderr


def test_make_run_refuses_to_probe_someone_elses_server_on_the_sandbox_port() -> None:
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip("make run's virtual environment is not there")
    try:
        held = socket.create_server(("127.0.0.1", 8099))
    except OSError:
        held = None  # taken already, by someone else: the script must refuse all the same
    try:
        result = subprocess.run(
            [str(ROOT / "examples" / "run.sh")],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "VANTAGE_PORT": str(free_port())},
        )
    finally:
        if held is not None:
            held.close()
    assert result.returncode == 1
    assert "port 8099 on 127.0.0.1 is taken by another program" in result.stderr
    assert "agent on http" not in result.stdout
