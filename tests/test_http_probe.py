"""The http probe against real local servers: plain HTTP, TLS from trustme, and misbehaving ones."""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from aiohttp import web
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agent.app import build_agent
from agent.sdk import ProbeResult, Reason

from .helpers import FakeClock, config_from, serve

pytestmark = pytest.mark.anyio

TELEMETRY_ENV = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "prometheus"}


async def run_checks(
    checks: list[dict[str, Any]], names: dict[str, str] | None = None, **env: str
) -> tuple[dict[str, ProbeResult], list[ReadableSpan]]:
    """Run each check once through the real scheduler, recorder and tracer provider."""
    config = config_from(checks, **env)
    exporter = InMemorySpanExporter()
    agent = build_agent(
        config,
        TELEMETRY_ENV,
        resolve=names,
        span_processors=[SimpleSpanProcessor(exporter)],
    )
    try:
        await agent.scheduler.run_once()
    finally:
        await agent.http.aclose()
    results = {name: state.last for name, state in agent.recorder.states.items() if state.last}
    return results, list(exporter.get_finished_spans())


def http_check(name: str, target: str, timeout: str = "3s", **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "http",
        "target": target,
        "interval": "10s",
        "timeout": timeout,
        "settings": settings,
    }


def vendor_app(seen: list[web.Request] | None = None) -> web.Application:
    async def ok(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        await asyncio.sleep(0.05)
        return web.json_response(
            {"object": "list", "data": [{"id": "ch_1", "amount": 5}]},
            headers={"X-Echo": request.headers.get("Authorization", "")},
        )

    async def status(request: web.Request) -> web.Response:
        return web.json_response({"error": "nope"}, status=int(request.match_info["code"]))

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query.get("to", "/ok"))

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop2" if request.path == "/loop1" else "/loop1")

    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(10_000):
            await response.write(b"x")
            await asyncio.sleep(0.05)
        return response

    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/json"
        await response.prepare(request)
        chunk = b"x" * 65536
        for _ in range(16 * 1024):  # 1 GiB if anyone read it all
            await response.write(chunk)
        return response

    async def cors(request: web.Request) -> web.Response:
        headers = {}
        if request.headers.get("Origin") == "https://shop.example":
            headers["Access-Control-Allow-Origin"] = "https://shop.example"
        return web.Response(text="ok", headers=headers)

    app = web.Application()
    app.router.add_route("*", "/ok", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/moved", moved)
    app.router.add_get("/loop1", loop)
    app.router.add_get("/loop2", loop)
    app.router.add_get("/hang", hang)
    app.router.add_get("/trickle", trickle)
    app.router.add_get("/huge", huge)
    app.router.add_get("/cors", cors)
    return app


async def test_success_with_assertions_phases_and_spans() -> None:
    seen: list[web.Request] = []
    async with serve(vendor_app(seen)) as port:
        results, spans = await run_checks(
            [
                http_check(
                    "api",
                    f"http://127.0.0.1:{port}/ok?limit=1",
                    method="POST",
                    json={"a": 1},
                    headers={"X-Trace": "yes"},
                    **{
                        "assert": [
                            {"source": "status", "op": "in", "value": [200]},
                            {
                                "source": "header",
                                "name": "Content-Type",
                                "op": "matches",
                                "value": "^application/json",
                            },
                            {"source": "body", "path": "$.data[0].id", "op": "eq", "value": "ch_1"},
                            {
                                "source": "body",
                                "op": "schema",
                                "value": {"type": "object", "required": ["data"]},
                            },
                            {"source": "response_time", "op": "lt", "value": "2s"},
                        ]
                    },
                )
            ]
        )
    result = results["api"]
    assert result.success, result.message
    assert [a.passed for a in result.assertions] == [True] * 5
    assert result.values["probe.http.status_code"] == 200
    assert result.values["probe.http.ssl"] == 0
    assert set(result.phases) == {"resolve", "connect", "tls", "processing", "transfer"}
    assert all(v >= 0 for v in result.phases.values())
    assert result.phases["tls"] == 0
    assert result.phases["processing"] >= 0.05  # the server thinks for 50ms before answering
    assert result.duration is not None and sum(result.phases.values()) <= result.duration
    request = seen[0]
    assert request.method == "POST" and request.query["limit"] == "1"
    assert request.headers["X-Trace"] == "yes" and request.headers["Content-Type"] == "application/json"

    root = next(s for s in spans if s.name == "check api")
    client = next(s for s in spans if s.kind is SpanKind.CLIENT)
    assert client.parent is not None and client.parent.span_id == root.context.span_id
    assert client.attributes["http.request.method"] == "POST"
    assert client.attributes["http.response.status_code"] == 200
    assert client.attributes["url.full"] == f"http://127.0.0.1:{port}/ok?limit="
    assert root.attributes["vantage.result"] == "success"
    assert root.status.status_code is StatusCode.OK
    # The W3C trace context travelled with the request and names the client span.
    traceparent = request.headers["traceparent"]
    assert traceparent.split("-")[1] == f"{root.context.trace_id:032x}"
    assert traceparent.split("-")[2] == f"{client.context.span_id:016x}"


@pytest.mark.parametrize(
    ("path", "settings", "reason", "fragment"),
    [
        ("/status/503", {}, Reason.HTTP_STATUS, "HTTP 503 (expected 2xx)"),
        (
            "/status/404",
            {"assert": [{"source": "status", "op": "eq", "value": 200}]},
            Reason.HTTP_STATUS,
            "HTTP 404 (expected status eq 200)",
        ),
        ("/status/401", {}, Reason.AUTH, "HTTP 401: the credential was rejected"),
        ("/status/403", {}, Reason.AUTH, "HTTP 403: the credential was accepted but lacks the permission"),
        (
            "/ok",
            {"assert": [{"source": "body", "path": "$.data[0].id", "op": "eq", "value": "ch_2"}]},
            Reason.ASSERTION,
            'expected body $.data[0].id eq "ch_2", got ch_1',
        ),
        (
            "/ok",
            {
                "assert": [
                    {"source": "body", "op": "schema", "value": {"type": "object", "required": ["has_more"]}}
                ]
            },
            Reason.SCHEMA,
            "'has_more' is a required property",
        ),
        (
            "/ok",
            {"assert": [{"source": "header", "name": "X-Missing", "op": "exists"}]},
            Reason.ASSERTION,
            "not present",
        ),
        ("/loop1", {}, Reason.REDIRECTS, "gave up after 10 redirects"),
        ("/hang", {}, Reason.TIMEOUT, "waiting for the response"),
        ("/trickle", {}, Reason.TIMEOUT, "reading the body"),
    ],
)
async def test_failure_reasons(path: str, settings: dict[str, Any], reason: Reason, fragment: str) -> None:
    async with serve(vendor_app()) as port:
        results, spans = await run_checks(
            [http_check("c", f"http://127.0.0.1:{port}{path}", timeout="1s", **settings)]
        )
    result = results["c"]
    assert not result.success
    assert result.reason is reason
    assert fragment in result.message
    root = next(s for s in spans if s.name == "check c")
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes["error.type"] == reason.value


async def test_connection_refused_and_dns_failure() -> None:
    async with serve(vendor_app()) as port:
        pass  # the port is closed again: nothing listens there now
    results, _ = await run_checks(
        [
            http_check("refused", f"http://127.0.0.1:{port}/"),
            http_check("nxdomain", "http://no-such-vendor.test/"),
        ],
        names={},
    )
    assert results["refused"].reason is Reason.CONNECT
    # libcurl's errno in a person's words, not its "Failed to connect ... Could not connect to server".
    assert results["refused"].message == f"connection refused by 127.0.0.1:{port}"
    # As blackbox_exporter reports a run that got no response: zeros, not absent figures.
    refused = results["refused"].values
    for name in ("status_code", "content_length", "uncompressed_body_length", "redirects", "version", "ssl"):
        assert refused[f"probe.http.{name}"] == 0, name
    assert refused["probe.failed_due_to_regex"] == 0
    assert results["nxdomain"].reason is Reason.DNS
    assert "no-such-vendor.test" in results["nxdomain"].message


async def test_redirects_followed_counted_or_not_followed() -> None:
    seen: list[web.Request] = []
    async with serve(vendor_app(seen)) as port:
        base = f"http://127.0.0.1:{port}"
        results, spans = await run_checks(
            [
                http_check(
                    "follow", f"{base}/moved?to=/moved%3Fto%3D/ok", headers={"Authorization": "Bearer t0ken"}
                ),
                http_check(
                    "nofollow",
                    f"{base}/moved",
                    follow_redirects=False,
                    **{"assert": [{"source": "status", "op": "eq", "value": 302}]},
                ),
            ]
        )
    assert results["follow"].success
    assert results["follow"].values["probe.http.redirects"] == 2
    assert results["nofollow"].success
    # As blackbox_exporter counts (Go's CheckRedirect): the redirect received and not followed.
    assert results["nofollow"].values["probe.http.redirects"] == 1
    # Same origin: the credential is kept on every hop. Three client spans for the followed check.
    assert seen[0].headers["Authorization"] == "Bearer t0ken"
    follow_root = next(s for s in spans if s.name == "check follow")
    hops = [
        s for s in spans if s.kind is SpanKind.CLIENT and s.context.trace_id == follow_root.context.trace_id
    ]
    assert len(hops) == 3


async def test_credentials_dropped_on_cross_origin_redirect() -> None:
    seen: list[web.Request] = []
    async with serve(vendor_app(seen)) as other, serve(vendor_app()) as port:
        results, _ = await run_checks(
            [
                http_check(
                    "x",
                    f"http://127.0.0.1:{port}/moved?to=http://localhost:{other}/ok",
                    headers={"Authorization": "Bearer t0ken"},
                )
            ],
            names={"localhost": "127.0.0.1"},
        )
    assert results["x"].success, results["x"].message
    assert "Authorization" not in seen[0].headers


async def test_huge_body_is_cut_not_buffered() -> None:
    async with serve(vendor_app()) as port:
        results, _ = await run_checks(
            [
                http_check(
                    "huge",
                    f"http://127.0.0.1:{port}/huge",
                    max_body="64KiB",
                    **{"assert": [{"source": "body", "path": "$.x", "op": "exists"}]},
                ),
                http_check("huge-ok", f"http://127.0.0.1:{port}/huge", max_body="64KiB"),
            ]
        )
    assert results["huge-ok"].success
    # No Content-Length (chunked): -1, as blackbox_exporter says; the bytes read are the cut.
    assert results["huge-ok"].values["probe.http.content_length"] == -1
    assert results["huge-ok"].values["probe.http.uncompressed_body_length"] == 64 * 1024
    assert results["huge-ok"].attributes["vantage.http.body_truncated"] is True
    assert results["huge"].reason is Reason.ASSERTION
    assert "cut at 65536 bytes" in results["huge"].message


async def test_origin_header_shows_cors() -> None:
    async with serve(vendor_app()) as port:
        rule = {
            "source": "header",
            "name": "Access-Control-Allow-Origin",
            "op": "eq",
            "value": "https://shop.example",
        }
        results, _ = await run_checks(
            [
                http_check(
                    "good",
                    f"http://127.0.0.1:{port}/cors",
                    origin="https://shop.example",
                    **{"assert": [rule]},
                ),
                http_check(
                    "bad",
                    f"http://127.0.0.1:{port}/cors",
                    origin="https://evil.example",
                    **{"assert": [rule]},
                ),
            ]
        )
    assert results["good"].success
    assert results["bad"].reason is Reason.ASSERTION


# ---------------------------------------------------------------- TLS


def server_context(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if client_ca is not None:
        client_ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def test_tls_verified_with_custom_ca_and_cert_metrics(ca: trustme.CA, ca_file: Path) -> None:
    not_after = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=30)
    cert = ca.issue_cert("vendor.test", not_after=not_after)
    async with serve(vendor_app(), ssl_context=server_context(cert)) as port:
        results, _ = await run_checks(
            [
                http_check("good", f"https://vendor.test:{port}/ok", tls={"ca_file": str(ca_file)}),
                http_check("untrusted", f"https://vendor.test:{port}/ok"),
                http_check("wrong-host", f"https://other.test:{port}/ok", tls={"ca_file": str(ca_file)}),
                http_check("insecure", f"https://other.test:{port}/ok", tls={"insecure": True}),
            ],
            names={"vendor.test": "127.0.0.1", "other.test": "127.0.0.1"},
        )
    good = results["good"]
    assert good.success, good.message
    assert good.values["probe.http.ssl"] == 1
    assert good.values["probe.ssl.earliest_cert_expiry"] == not_after.timestamp()
    assert good.values["probe.ssl.last_chain_expiry_timestamp"] == not_after.timestamp()
    assert good.samples[0].labels["version"].startswith("TLS 1.")
    assert good.phases["tls"] > 0 and good.phases["connect"] > 0 and good.phases["resolve"] > 0
    assert results["untrusted"].reason is Reason.TLS
    assert "unable to get local issuer certificate" in results["untrusted"].message
    assert results["wrong-host"].reason is Reason.TLS
    # libcurl's words: "SSL: no alternative certificate subject name matches target hostname ..."
    assert "subject name matches target hostname 'other.test'" in results["wrong-host"].message
    assert results["insecure"].success


async def test_expired_certificate_is_a_tls_failure(ca: trustme.CA, ca_file: Path) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    cert = ca.issue_cert("vendor.test", not_before=past - dt.timedelta(days=30), not_after=past)
    async with serve(vendor_app(), ssl_context=server_context(cert)) as port:
        results, _ = await run_checks(
            [http_check("expired", f"https://vendor.test:{port}/ok", tls={"ca_file": str(ca_file)})],
            names={"vendor.test": "127.0.0.1"},
        )
    assert results["expired"].reason is Reason.TLS
    assert "expired" in results["expired"].message


async def test_client_certificate_mtls(ca: trustme.CA, ca_file: Path, tmp_path: Path) -> None:
    client_ca = trustme.CA()
    client = client_ca.issue_cert("agent.test")
    cert_file, key_file = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    context = server_context(ca.issue_cert("vendor.test"), client_ca=client_ca)
    async with serve(vendor_app(), ssl_context=context) as port:
        target = f"https://vendor.test:{port}/ok"
        results, _ = await run_checks(
            [
                http_check(
                    "with-cert",
                    target,
                    tls={"ca_file": str(ca_file), "cert_file": str(cert_file), "key_file": str(key_file)},
                ),
                http_check("without-cert", target, tls={"ca_file": str(ca_file)}),
            ],
            names={"vendor.test": "127.0.0.1"},
        )
    assert results["with-cert"].success, results["with-cert"].message
    assert not results["without-cert"].success
    assert results["without-cert"].reason in (Reason.TLS, Reason.PROTOCOL, Reason.CONNECT)


async def test_fresh_connection_per_run_unless_pooled() -> None:
    peers: list[tuple[str, Any]] = []

    async def who(request: web.Request) -> web.Response:
        peers.append(
            (request.query["c"], request.transport.get_extra_info("peername") if request.transport else None)
        )
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/who", who)
    async with serve(app) as port:
        config = config_from(
            [
                http_check("fresh", f"http://127.0.0.1:{port}/who?c=fresh"),
                http_check("pooled", f"http://127.0.0.1:{port}/who?c=pooled", fresh_connection=False),
            ]
        )
        agent = build_agent(config, TELEMETRY_ENV)
        try:
            for _ in range(3):
                await agent.scheduler.run_once()
        finally:
            await agent.http.aclose()
    by_check: dict[str, set[Any]] = {}
    for check, peer in peers:
        by_check.setdefault(check, set()).add(peer)
    assert len(by_check["fresh"]) == 3  # a new connection (new source port) every run
    assert len(by_check["pooled"]) == 1  # one kept-alive connection
    assert all(state.last and state.last.success for state in agent.recorder.states.values())


async def test_a_request_cut_by_the_run_timeout_ends_its_client_span_as_a_timeout() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.Response(text="too late")

    app = web.Application()
    app.router.add_get("/slow", hang)
    clock = FakeClock()
    exporter = InMemorySpanExporter()
    async with serve(app) as port:
        check = http_check("slow", f"http://127.0.0.1:{port}/slow", timeout="5s")
        agent = build_agent(
            config_from([check]), TELEMETRY_ENV, clock=clock, span_processors=[SimpleSpanProcessor(exporter)]
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.scheduler.run_once)
                await entered.wait()  # the request is at the server: the run's deadline cuts it now
                await clock.advance(5)
        finally:
            release.set()
            await agent.http.aclose()
    result = agent.recorder.states["slow"].last
    assert result is not None and result.reason is Reason.TIMEOUT, result
    (client,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert client.attributes is not None and client.attributes["error.type"] == "timeout"
    assert client.status.status_code is StatusCode.ERROR
    # The run's own span says the same.
    (root,) = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert root.attributes is not None and root.attributes["error.type"] == "timeout"


async def test_a_header_holding_a_line_break_is_not_sent() -> None:
    # libcurl sends header lines as given: a CR, LF or NUL inside a name or value would start a
    # line of the header's choosing, so the request is refused before anything is sent.
    seen: list[web.Request] = []
    async with serve(vendor_app(seen)) as port:
        target = f"http://127.0.0.1:{port}/"
        checks = [
            http_check(f"evil-{i}", target, headers={"X-Note": f"a{char}Injected: 1"})
            for i, char in enumerate(("\r\n", "\n", "\0"))
        ]
        results, _ = await run_checks(checks)
    for i in range(3):
        result = results[f"evil-{i}"]
        assert result.reason is Reason.PROTOCOL and "'X-Note' holds a line break" in result.message
    assert seen == []
