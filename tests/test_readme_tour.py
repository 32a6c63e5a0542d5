"""The README's tour quotes the log lines the agent really prints: this runs the tour (the sandbox
vendor and ``vantage run`` on examples/checks.yaml, as ``make run`` does), then Ctrl-C, and finds
every quoted line in what the agent wrote, modulo times of day, durations and ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .helpers import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_PORT = 8099  # as the README and examples/checks.yaml spell it
SECRETS = {
    "SANDBOX_API_KEY": "sk_test_sandbox",
    "SANDBOX_CLIENT_SECRET": "sandbox-client-secret",
    "SANDBOX_WEBHOOK_SECRET": "whsec_sandbox_0123456789",
    "SANDBOX_JOB_TOKEN": "sandbox-job-token-0123",
}
_CLOCK = re.compile(r"^\d{2}:\d{2}:\d{2}\.\d{3} ")
_DURATION = re.compile(r"\b\d+(?:\.\d+)?(?:µs|ms|s|m|h)\b")
_VERSION = re.compile(r"\bvantage \d+\.\d+\.\d+\S*")
_LISTENING = re.compile(r"listening on port \d+")


def quoted_lines() -> list[str]:
    """The log lines in the README's tour: the first fenced block of "A five-minute tour"."""
    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## A five-minute tour") :]
    block = tour.split("```\n", 2)[1]
    return [line for line in block.splitlines() if line.strip()]


def normal(line: str, sandbox_port: int = SANDBOX_PORT) -> str:
    """A log line without what differs from run to run: the time of day, durations, the version
    and the ports."""
    line = _CLOCK.sub("", line.strip()).replace(f"127.0.0.1:{sandbox_port}", f"127.0.0.1:{SANDBOX_PORT}")
    line = _LISTENING.sub("listening on port <port>", _VERSION.sub("vantage <version>", line))
    return _DURATION.sub("<duration>", line)


def test_the_quoted_lines_are_log_lines() -> None:
    lines = quoted_lines()
    assert len(lines) >= 8
    for line in lines:
        assert _CLOCK.match(line) and re.search(r" (INFO|WARNING|ERROR) +vantage", line), line
    # The normalisation cannot make two different lines alike.
    assert normal(lines[3]) != normal(lines[4])


def test_the_readme_tour_shows_what_the_agent_prints(tmp_path: Path) -> None:
    sandbox_port, agent_port = free_port(), free_port()
    checks = (ROOT / "examples" / "checks.yaml").read_text()
    checks_file = tmp_path / "checks.yaml"
    checks_file.write_text(checks.replace(f"127.0.0.1:{SANDBOX_PORT}", f"127.0.0.1:{sandbox_port}"))
    agent_url = f"http://127.0.0.1:{agent_port}"
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        **SECRETS,
        "SANDBOX_PORT": str(sandbox_port),
        "AGENT_URL": agent_url,
    }
    sandbox = subprocess.Popen(
        [sys.executable, "examples/sandbox.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    agent: subprocess.Popen[str] | None = None
    printed: list[str] = []
    try:
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run"],
            cwd=ROOT,
            env={
                **env,
                "VANTAGE_CHECKS_FILE": str(checks_file),
                "VANTAGE_LOG_RUNS": "true",
                "VANTAGE_LOG_FORMAT": "text",
                "VANTAGE_HOST": "127.0.0.1",
                "VANTAGE_PORT": str(agent_port),
                "VANTAGE_PUBLIC_URL": agent_url,
                "OTEL_TRACES_EXPORTER": "none",
                "OTEL_METRICS_EXPORTER": "prometheus",
            },
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        reader = threading.Thread(target=lambda: printed.extend(agent.stderr or ()), daemon=True)
        reader.start()
        wanted = {normal(line) for line in quoted_lines()}
        before_stop = {line for line in wanted if "SIGINT" not in line and "vantage stopped" not in line}
        deadline = time.monotonic() + 40  # the slowest quoted line comes after about 12s
        while time.monotonic() < deadline and agent.poll() is None:
            seen = {normal(line, sandbox_port) for line in list(printed)}
            if before_stop <= seen:
                break
            time.sleep(0.2)
        agent.send_signal(signal.SIGINT)
        assert agent.wait(timeout=20) == 0
        reader.join(timeout=5)
    finally:
        for process in (agent, sandbox):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
        if agent is not None and agent.stderr is not None:
            agent.stderr.close()
    seen = {normal(line, sandbox_port) for line in printed}
    missing = sorted(wanted - seen)
    assert not missing, "the README quotes lines the agent did not print:\n" + "\n".join(
        [*missing, "--- the agent printed:", *printed]
    )
