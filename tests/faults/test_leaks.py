"""No spelling of any secret leaves the agent: on success and on every failure kind, in every output.

The real agent runs as processes (``vantage run`` with JSON and with text logs, ``vantage once``,
and ``vantage validate``/``run`` on a configuration that a secret makes invalid) with secrets full
of what encoders change (``+``, ``=``, ``/``, a space, non-ASCII, quotes, a backslash). They are
sent as a bearer header, an API key in the query, a Basic password, an OAuth client secret, a
``settings.query`` value and an OTLP exporter header, to local targets that answer 200, echo what
they were sent, answer 401, present an untrusted certificate, hang, or answer garbage that quotes
the request back. Everything the agent writes is scanned: the OTLP request bodies, ``/metrics``,
``/api/checks``, ``/readyz``, logs and the CLI's output.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import re
import socketserver
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import trustme
import yaml
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from ..helpers import AgentProcess, thread_server, wait_until
from ..test_process import get

pytestmark = pytest.mark.slow

SECRETS = {
    "BEARER": 'K9bearQ+=/é"\\x1',
    "API_KEY": 'K9apikQ+=/é"\\x2',
    "BASIC_PASSWORD": "K9basiQ'+=/é\"\\x3",
    "QUERY_SECRET": 'K9querQ +=/é"\\x4',
    "CLIENT_SECRET": 'K9oautQ+=/é"\\x5',
    "OTLP_KEY": 'K9otlpQ+=/é"\\x6',
    "API_TOKEN": 'K9tokeQ+=/"\\x7',  # sent by this test as a header: ASCII only
    "BAD_VALUE": 'K9badvQ+=/é"\\x8',
}
BASIC_USER, CLIENT_ID = "probe", "vantage"
TIMEOUT = "600ms"


def spellings(secret: str, *, user: str | None = None) -> set[str]:
    """Every way ``secret`` could be written: raw, URL-, form-, JSON- and Python-escaped, base64.

    With ``user``, also HTTP Basic's base64 of ``user:secret``, which does not contain the base64
    of the secret. The leading run of letters and digits (7 or more here) is a spelling too: it is
    the same in every escaped form, so a partial, mixed or truncated spelling is caught by it.
    """
    found = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
    }
    stem = re.match(r"[A-Za-z0-9]*", secret)
    if stem and len(stem.group()) >= 7:
        found.add(stem.group())
    for value in (secret, f"{user}:{secret}") if user is not None else (secret,):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(value.encode()).decode()
            found |= {text, text.rstrip("=")}
    return found


SPELLINGS = {
    name: spellings(secret, user=BASIC_USER if name == "BASIC_PASSWORD" else None)
    for name, secret in SECRETS.items()
}
# OAuth's client authentication (RFC 6749 2.3.1) form-encodes the id and the secret, then Basic.
SPELLINGS["CLIENT_SECRET"] |= spellings(quote(SECRETS["CLIENT_SECRET"], safe=""), user=quote(CLIENT_ID))


# ---------------------------------------------------------------- targets


@contextlib.contextmanager
def tcp_server(respond: Callable[[bytes, threading.Event], bytes | None]) -> Iterator[int]:
    """A raw TCP server on loopback: reads a request head, sends what ``respond`` makes of it."""
    stop = threading.Event()

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.settimeout(5)
            head = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    chunk = self.request.recv(4096)
                    if not chunk:
                        return
                    head += chunk
                answer = respond(head, stop)
                if answer:
                    self.request.sendall(answer)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def garbage(head: bytes, _: threading.Event) -> bytes:
    """Not HTTP: a status line that quotes the request line and its credential back."""
    lines = head.split(b"\r\n")
    auth = next(
        (ln.split(b":", 1)[1].strip() for ln in lines if ln.lower().startswith(b"authorization:")), b""
    )
    return b"HTTP/1.1 abc " + lines[0] + b" " + auth + b"\r\n\r\n"


def hang(_: bytes, stop: threading.Event) -> None:
    stop.wait(10)


@dataclass
class Targets:
    plain: int
    tls: int
    garbage: int
    hang: int
    seen: list[dict[str, str]] = field(default_factory=list)


@contextlib.contextmanager
def targets() -> Iterator[Targets]:
    seen: list[dict[str, str]] = []

    def note(request: web.Request) -> dict[str, str]:
        got = {"auth": request.headers.get("Authorization", ""), **request.query}
        seen.append(got)
        return got

    async def ok(request: web.Request) -> web.Response:
        note(request)
        return web.json_response({"ok": True})

    async def echo(request: web.Request) -> web.Response:
        # What an httpbin-like API does; kept short so that no assertion shows it cut.
        note(request)
        return web.json_response(
            {"auth": request.headers.get("Authorization", ""), "q": request.query_string}
        )

    async def denied(request: web.Request) -> web.Response:
        note(request)
        return web.json_response(
            {"error": "denied"}, status=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/echo", echo)
    app.router.add_get("/denied", denied)
    untrusted = trustme.CA()  # not the agent's: every handshake fails verification
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    untrusted.issue_cert("127.0.0.1").configure_cert(server_ctx)
    with (
        thread_server(app) as plain,
        thread_server(web.Application(), ssl_context=server_ctx) as tls,
        tcp_server(garbage) as bad,
        tcp_server(hang) as hung,
    ):
        yield Targets(plain, tls, bad, hung, seen)


@dataclass
class Otlp:
    endpoint: str
    bodies: list[tuple[str, bytes]]
    keys: list[str]


@contextlib.contextmanager
def otlp_receiver() -> Iterator[Otlp]:
    """Keeps every OTLP/HTTP request body as sent, whatever the signal."""
    bodies: list[tuple[str, bytes]] = []
    keys: list[str] = []

    async def export(request: web.Request) -> web.Response:
        bodies.append((request.path, await request.read()))
        keys.append(request.headers.get("x-vantage-key", ""))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 << 20)
    app.router.add_post("/{signal:.*}", export)
    with thread_server(app) as port:
        yield Otlp(f"http://127.0.0.1:{port}", bodies, keys)


# ---------------------------------------------------------------- the checks


def credential_sets() -> dict[str, dict[str, Any]]:
    bearer = {
        "headers": {"Authorization": "Bearer ${BEARER}"},
        "auth": {"type": "api_key", "name": "api_key", "in": "query", "value": "${API_KEY}"},
        "query": {"sig": "${QUERY_SECRET}"},
    }
    basic = {
        "auth": {"type": "basic", "username": BASIC_USER, "password": "${BASIC_PASSWORD}"},
        "query": {"sig": "${QUERY_SECRET}"},
    }
    return {"bearer": bearer, "basic": basic}


def checks_for(t: Targets) -> tuple[list[dict[str, Any]], dict[str, str | None]]:
    """The checks, and the reason each must end with (None: success)."""
    plain = f"http://127.0.0.1:{t.plain}"
    kinds: dict[str, tuple[str, str | None, dict[str, Any]]] = {
        "ok": (f"{plain}/ok", None, {}),
        "echo": (
            f"{plain}/echo",
            "assertion",
            {
                "assert": [
                    {"source": "body", "op": "contains", "value": "never-there"},
                    {"source": "body", "path": "$.auth", "op": "eq", "value": "x"},
                    {"source": "body", "path": "$.q", "op": "eq", "value": "x"},
                ]
            },
        ),
        "denied": (f"{plain}/denied", "auth", {}),
        "tls": (f"https://127.0.0.1:{t.tls}/ok", "tls", {}),
        "hang": (f"http://127.0.0.1:{t.hang}/hang", "timeout", {}),
        "garbage": (f"http://127.0.0.1:{t.garbage}/garbage", "protocol", {}),
    }
    checks, expected = [], {}
    for set_name, credentials in credential_sets().items():
        for kind, (target, reason, extra) in kinds.items():
            name = f"{set_name}-{kind}"
            checks.append(
                {
                    "name": name,
                    "type": "http",
                    "target": target,
                    "interval": "1s",
                    "timeout": TIMEOUT,
                    "settings": {**credentials, **extra},
                }
            )
            expected[name] = reason
    oauth = {
        "type": "oauth2_client_credentials",
        "token_url": f"http://127.0.0.1:{t.garbage}/token",
        "client_id": CLIENT_ID,
        "client_secret": "${CLIENT_SECRET}",
    }
    checks.append(
        {
            "name": "oauth-garbage",
            "type": "http",
            "target": f"{plain}/ok",
            "interval": "1s",
            "timeout": TIMEOUT,
            "settings": {"auth": oauth},
        }
    )
    expected["oauth-garbage"] = "auth"
    return checks, expected


BAD_CHECKS: list[dict[str, Any]] = [
    {"name": "bad-interval", "type": "http", "target": "http://127.0.0.1:9/", "interval": "${BAD_VALUE}"},
    {"name": "bad-target", "type": "http", "target": "${BAD_VALUE}"},
    {
        "name": "bad-token-url",
        "type": "http",
        "target": "http://127.0.0.1:9/",
        "settings": {
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": "${BAD_VALUE}",
                "client_id": CLIENT_ID,
                "client_secret": "${CLIENT_SECRET}",
            }
        },
    },
    {
        "name": "bad-redirects",
        "type": "http",
        "target": "http://127.0.0.1:9/",
        "settings": {"max_redirects": "${BAD_VALUE}"},
    },
]


# ---------------------------------------------------------------- the run


@dataclass
class Capture:
    outputs: dict[str, bytes] = field(default_factory=dict)
    expected: dict[str, str | None] = field(default_factory=dict)
    states: dict[str, dict[str, Any]] = field(default_factory=dict)
    """``/api/checks`` of each agent, by check name."""
    exits: dict[str, int] = field(default_factory=dict)
    targets_saw: list[dict[str, str]] = field(default_factory=list)
    otlp_keys: list[str] = field(default_factory=list)
    otlp_traces: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)


def environment(otlp: Otlp, **extra: str) -> dict[str, str]:
    return {
        **SECRETS,
        "VANTAGE_API_TOKEN": SECRETS["API_TOKEN"],
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        # The OpenTelemetry spec has header values percent-encoded in the variable.
        "OTEL_EXPORTER_OTLP_HEADERS": f"x-vantage-key={quote(SECRETS['OTLP_KEY'], safe='')}",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **extra,
    }


def command(args: list[str], checks: list[dict[str, Any]], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        env={"PATH": os.environ.get("PATH", ""), "VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def fetch(agent: AgentProcess, path: str) -> tuple[int, str]:
    return get(agent.url(path), SECRETS["API_TOKEN"])


def reasons(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    try:
        status, text = fetch(agent, "/api/checks")
    except OSError:
        return {}
    if status != 200:
        return {}
    return {state["name"]: state for state in json.loads(text)["checks"]}


def settled(agent: AgentProcess, expected: dict[str, str | None]) -> dict[str, dict[str, Any]] | None:
    states = reasons(agent)
    for name, reason in expected.items():
        last = (states.get(name) or {}).get("last")
        if not last or last["reason"] != reason:
            return None
    return states


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    result = Capture()
    with targets() as t, otlp_receiver() as otlp:
        checks, result.expected = checks_for(t)
        agents = {
            fmt: AgentProcess(checks, environment(otlp, VANTAGE_LOG_FORMAT=fmt)) for fmt in ("json", "text")
        }
        runs = {
            f"once-{fmt}": command(["once"], checks, environment(otlp, VANTAGE_LOG_FORMAT=fmt))
            for fmt in ("json", "text")
        }
        bad_env = environment(otlp, VANTAGE_LOG_FORMAT="json")
        runs |= {f"bad-{cmd}": command([cmd], BAD_CHECKS, bad_env) for cmd in ("validate", "run")}
        try:
            for fmt, agent in agents.items():
                states = wait_until(functools.partial(settled, agent, result.expected), timeout=20)
                result.states |= {f"{fmt}:{name}": state for name, state in states.items()}
                for path in ("/api/checks", "/metrics", "/readyz", "/healthz"):
                    status, text = fetch(agent, path)
                    assert status == 200, (path, text)
                    result.outputs[f"run-{fmt} {path}"] = text.encode()
            wait_until(lambda: len({p for p, _ in otlp.bodies}) >= 2, timeout=10)
        finally:
            for fmt, agent in agents.items():
                try:
                    result.exits[f"run-{fmt}"] = agent.stop(timeout=30)
                except subprocess.TimeoutExpired:
                    agent.kill()
                result.outputs[f"run-{fmt} output"] = agent.output.encode()
            for name, proc in runs.items():
                try:
                    out, err = proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                result.exits[name] = proc.returncode
                result.outputs[f"{name} stdout"], result.outputs[f"{name} stderr"] = out, err
        result.targets_saw = list(t.seen)
        result.otlp_keys = list(otlp.keys)
        for path, body in otlp.bodies:
            result.outputs[f"otlp {path}"] = result.outputs.get(f"otlp {path}", b"") + body
            if path == "/v1/traces":
                result.otlp_traces.append(trace_service_pb2.ExportTraceServiceRequest.FromString(body))
    yield result


# ---------------------------------------------------------------- the tests


def test_each_scenario_reached_the_failure_kind_it_claims(capture: Capture) -> None:
    for fmt in ("json", "text"):
        for name, reason in capture.expected.items():
            last = capture.states[f"{fmt}:{name}"]["last"]
            assert last["reason"] == reason and last["success"] == (reason is None), (fmt, name, last)
    error_types = {
        attribute.value.string_value
        for request in capture.otlp_traces
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
        for attribute in span.attributes
        if attribute.key == "error.type"
    }
    assert {"assertion", "auth", "tls", "timeout", "protocol"} <= error_types
    for fmt in ("json", "text"):
        table = capture.outputs[f"once-{fmt} stdout"].decode()
        assert capture.exits[f"once-{fmt}"] == 1, table
        for name, reason in capture.expected.items():
            assert re.search(
                rf"^{name}\s+http\s+{'FAIL' if reason else 'ok'}\s+{reason or ''}", table, re.M
            ), (
                name,
                table,
            )
    for cmd in ("validate", "run"):
        error = capture.outputs[f"bad-{cmd} stderr"].decode()
        assert capture.exits[f"bad-{cmd}"] == 2, error
        assert "field 'interval'" in error and "field 'target'" in error, error
        assert "field 'settings.auth" in error and "field 'settings.max_redirects'" in error, error


def test_the_secrets_were_really_sent(capture: Capture) -> None:
    """The scan means something only if the secrets went out, and came back where they could leak."""
    saw = capture.targets_saw
    assert any(s["auth"] == f"Bearer {SECRETS['BEARER']}" for s in saw)
    assert any(
        s.get("api_key") == SECRETS["API_KEY"] and s.get("sig") == SECRETS["QUERY_SECRET"] for s in saw
    )
    pair = base64.b64encode(f"{BASIC_USER}:{SECRETS['BASIC_PASSWORD']}".encode()).decode()
    assert any(s["auth"] == f"Basic {pair}" for s in saw)
    # http.client sends a header value as Latin-1; the receiver read it as UTF-8, bad bytes escaped.
    sent = {key.encode("utf-8", "surrogateescape") for key in capture.otlp_keys}
    assert SECRETS["OTLP_KEY"].encode("latin-1") in sent
    # ...and the agent had them to write: the echo answers quote them back.
    for fmt in ("json", "text"):
        for name in ("bearer-echo", "basic-echo"):
            state = capture.states[f"{fmt}:{name}"]["last"]
            shown = state["message"] + "".join(a["actual"] for a in state["assertions"])
            assert "<redacted>" in shown, (name, state)
        # The garbage answers quote them too, but libcurl's words about a bad status line quote
        # nothing of it: what the agent writes is only that the response was malformed.
        for name in ("bearer-garbage", "basic-garbage", "oauth-garbage"):
            state = capture.states[f"{fmt}:{name}"]["last"]
            assert "malformed HTTP response" in state["message"], (name, state)


@pytest.mark.parametrize("secret", sorted(SECRETS))
def test_no_spelling_of_a_secret_leaves_the_agent(capture: Capture, secret: str) -> None:
    assert capture.outputs
    leaks = [
        (where, spelling)
        for where, data in capture.outputs.items()
        for spelling in SPELLINGS[secret]
        if spelling.encode() in data
    ]
    assert not leaks, leaks
