"""The grpc probe against a local gRPC health server (plaintext and TLS), and without its extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import grpc
import pytest
import trustme
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agent.app import build_agent
from agent.errors import ConfigError
from agent.sdk import Reason

from .helpers import ROOT, FakeClock, config_from
from .test_http_probe import TELEMETRY_ENV, run_checks

pytestmark = pytest.mark.anyio

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Guarded(grpc.ServerInterceptor):
    """Turns away calls without the expected ``authorization`` metadata."""

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if ("authorization", "Bearer s3cret-token") in (details.invocation_metadata or ()):
            return continuation(details)

        def deny(request: Any, context: grpc.ServicerContext) -> Any:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

        return grpc.unary_unary_rpc_method_handler(deny)


@contextmanager
def health_server(
    credentials: grpc.ServerCredentials | None = None, interceptors: tuple[Any, ...] = ()
) -> Iterator[int]:
    servicer = health.HealthServicer()
    servicer.set("payments.v1.Charges", SERVING)
    servicer.set("payments.v1.Refunds", NOT_SERVING)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield port
    finally:
        server.stop(grace=None).wait(10)


def grpc_check(name: str, port: int, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "grpc",
        "target": f"127.0.0.1:{port}",
        "interval": "10s",
        "timeout": "3s",
        "settings": settings,
    }


def statuses(result: Any) -> dict[str, float]:
    return {s.labels["serving_status"]: s.value for s in result.samples}


async def test_health_plaintext() -> None:
    with health_server() as port, health_server(interceptors=(Guarded(),)) as guarded:
        results, spans = await run_checks(
            [
                grpc_check("server", port),
                grpc_check("charges", port, service="payments.v1.Charges"),
                grpc_check("refunds", port, service="payments.v1.Refunds"),
                grpc_check("unknown", port, service="payments.v1.Nope"),
                grpc_check("no-token", guarded),
                grpc_check("token", guarded, metadata={"Authorization": "Bearer s3cret-token"}),
            ]
        )
    for name in ("server", "charges", "token"):
        assert results[name].success, (name, results[name].message)
    charges = results["charges"]
    assert {
        k: charges.values[k] for k in ("probe.grpc.ssl", "probe.grpc.status_code", "probe.ip_protocol")
    } == {
        "probe.grpc.ssl": 0,
        "probe.grpc.status_code": 0,
        "probe.ip_protocol": 4,
    }
    assert charges.values["probe.dns.lookup_time"] >= 0
    assert not [s for s in charges.samples if s.metric.startswith(("probe.tls", "probe.ssl"))]
    assert statuses(charges) == {"UNKNOWN": 0, "SERVING": 1, "NOT_SERVING": 0, "SERVICE_UNKNOWN": 0}
    assert set(charges.phases) == {"resolve", "check"}
    refunds = results["refunds"]
    assert refunds.reason is Reason.ASSERTION and refunds.message == "payments.v1.Refunds is NOT_SERVING"
    assert statuses(refunds)["NOT_SERVING"] == 1
    unknown = results["unknown"]
    assert unknown.reason is Reason.ASSERTION
    assert unknown.values["probe.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert statuses(unknown)["SERVICE_UNKNOWN"] == 1
    assert results["no-token"].reason is Reason.AUTH
    assert results["no-token"].message == "UNAUTHENTICATED: missing or wrong token"
    call = next(s for s in spans if s.name == "grpc.health.v1.Health/Check" and s.attributes)
    assert call.attributes is not None and call.attributes["rpc.system"] == "grpc"


async def test_health_over_tls(ca: trustme.CA, ca_file: Path) -> None:
    cert = ca.issue_cert("health.test")
    credentials = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())]
    )
    with health_server(credentials) as port:
        results, _ = await run_checks(
            [
                grpc_check(
                    "tls",
                    port,
                    tls=True,
                    tls_options={"ca_file": str(ca_file), "server_name": "health.test"},
                ),
                grpc_check("untrusted", port, tls=True, tls_options={"server_name": "health.test"}),
                grpc_check("plaintext-to-tls", port),
            ]
        )
    assert results["tls"].success, results["tls"].message
    assert results["tls"].values["probe.grpc.ssl"] == 1
    assert results["untrusted"].reason is Reason.TLS, results["untrusted"].message
    assert results["untrusted"].values["probe.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]
    assert results["untrusted"].values["probe.grpc.ssl"] == 0  # the handshake did not complete
    plain = results["plaintext-to-tls"]
    assert plain.reason in (Reason.CONNECT, Reason.PROTOCOL), plain.message
    assert plain.values["probe.grpc.ssl"] == 0  # the connection did no TLS, whatever was configured
    # The handshake's own figures, as the tls probe reads them.
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    good = results["tls"]
    assert good.values["probe.ssl.earliest_cert_expiry"] == leaf.not_valid_after_utc.timestamp()
    assert "probe.ssl.last_chain_expiry_timestamp" in good.values
    labels = {
        s.metric: dict(s.labels) for s in good.samples if s.metric.startswith(("probe.tls", "probe.ssl"))
    }
    assert labels["probe.tls.version_info"] == {"version": "TLS 1.3"}
    assert labels["probe.ssl.last_chain_info"]["subjectalternative"] == "health.test"
    assert labels["probe.ssl.last_chain_info"]["serialnumber"] == format(leaf.serial_number, "x")


async def test_insecure_skips_verification(tmp_path: Path) -> None:
    """blackbox's insecure_skip_verify: an untrusted certificate for another name is accepted, and
    its chain is read but never reported as verified."""
    stranger = trustme.CA()  # trusted by nobody
    cert = stranger.issue_cert("elsewhere.test")
    credentials = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())]
    )
    with health_server(credentials) as port:
        results, _ = await run_checks(
            [
                grpc_check("insecure", port, tls=True, tls_options={"insecure": True}),
                grpc_check("verifying", port, tls=True),
            ]
        )
    insecure = results["insecure"]
    assert insecure.success, insecure.message
    assert insecure.values["probe.grpc.ssl"] == 1
    assert "probe.ssl.earliest_cert_expiry" in insecure.values
    assert "probe.ssl.last_chain_expiry_timestamp" not in insecure.values
    assert results["verifying"].reason is Reason.TLS, results["verifying"].message


async def test_refused() -> None:
    with health_server() as port:
        pass
    results, _ = await run_checks([grpc_check("closed", port)])
    assert results["closed"].reason is Reason.CONNECT, results["closed"].message
    assert results["closed"].values["probe.grpc.status_code"] == grpc.StatusCode.UNAVAILABLE.value[0]


@pytest.mark.slow  # runs the agent as a subprocess
def test_without_the_extra_the_type_is_unavailable() -> None:
    # A process in which grpc_health cannot be imported, as after a plain `pip install vantage`.
    blocker = "import sys; sys.modules['grpc_health'] = None; from agent.cli import main; sys.exit(main())"
    env = {**os.environ, "VANTAGE_CHECKS": json.dumps([grpc_check("health", 50051)])}
    listed = subprocess.run(
        [sys.executable, "-c", blocker, "plugins"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    line = next(line for line in listed.stdout.splitlines() if line.startswith("grpc:"))
    assert "unavailable" in line and "pip install 'vantage[grpc]'" in line
    validated = subprocess.run(
        [sys.executable, "-c", blocker, "validate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert validated.returncode == 2
    assert "check 'health' (checks[0]), field 'type'" in validated.stderr
    assert "pip install 'vantage[grpc]'" in validated.stderr


def test_settings_are_checked_at_load() -> None:
    config_from([grpc_check("a", 1, tls=True, tls_options={"insecure": True})])  # now honoured
    with pytest.raises(ConfigError, match="'x-token' holds a character headers cannot carry"):
        config_from([grpc_check("a", 1, metadata={"x-token": "abc\r\nx-evil: 1"})])
    with pytest.raises(ConfigError, match="is not a gRPC metadata name"):
        config_from([grpc_check("a", 1, metadata={"grpc-timeout": "1S"})])
    with pytest.raises(ConfigError, match="is not host:port"):
        config_from([{"name": "a", "type": "grpc", "target": "health.example"}])


class Hanging(grpc.ServerInterceptor):
    """Holds every call until released, telling the test when one has arrived."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        def hang(request: Any, context: grpc.ServicerContext) -> Any:
            self.entered.set()
            self.release.wait(30)
            context.abort(grpc.StatusCode.UNAVAILABLE, "released")

        return grpc.unary_unary_rpc_method_handler(hang)


async def test_a_call_cut_by_the_run_timeout_ends_its_client_span() -> None:
    hanging = Hanging()
    clock = FakeClock()
    exporter = InMemorySpanExporter()
    with health_server(interceptors=(hanging,)) as port:
        check = {**grpc_check("slow", port), "timeout": "5s"}
        agent = build_agent(
            config_from([check]), TELEMETRY_ENV, clock=clock, span_processors=[SimpleSpanProcessor(exporter)]
        )
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent.scheduler.run_once)
                # The call is at the server: the run's deadline (on the fake clock) cuts it now,
                # long before gRPC's own deadline of 5 real seconds.
                assert await anyio.to_thread.run_sync(hanging.entered.wait, 10)
                await clock.advance(5)
        finally:
            hanging.release.set()
            await agent.http.aclose()
    result = agent.recorder.states["slow"].last
    assert result is not None and result.reason is Reason.TIMEOUT, result
    (client,) = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert client.name == "grpc.health.v1.Health/Check"
    assert client.attributes is not None and client.attributes["error.type"] == "timeout"
    assert client.status.status_code is StatusCode.ERROR


async def test_ip_fallback() -> None:
    with health_server() as port:
        results, _ = await run_checks(
            [
                grpc_check("strict", port, ip_family="ipv6"),
                grpc_check("fallback", port, ip_family="ipv6", ip_fallback=True),
            ]
        )
    assert results["strict"].reason is Reason.DNS, results["strict"].message
    assert results["strict"].values["probe.grpc.ssl"] == 0
    assert results["fallback"].success, results["fallback"].message
    assert results["fallback"].values["probe.ip_protocol"] == 4


async def test_a_server_that_does_not_speak_grpc() -> None:
    """An HTTP/1.1 server's answer to the HTTP/2 preface."""
    import asyncio

    async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(24)
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http1, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        results, _ = await run_checks([grpc_check("http1", port)])
    finally:
        server.close()
        await server.wait_closed()
    result = results["http1"]
    assert result.reason is Reason.PROTOCOL, result.message
    assert result.message == (
        f"the server at 127.0.0.1:{port} does not speak gRPC's HTTP/2: it answered 'HTTP/1.1 400 Bad Request'"
    )


async def test_client_certificate(ca: trustme.CA, ca_file: Path, tmp_path: Path) -> None:
    """mTLS: the server requires a certificate from the client's CA."""
    server_cert = ca.issue_cert("health.test")
    client = ca.issue_cert("vantage.client")
    client.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    credentials = grpc.ssl_server_credentials(
        [(server_cert.private_key_pem.bytes(), server_cert.cert_chain_pems[0].bytes())],
        root_certificates=ca.cert_pem.bytes(),
        require_client_auth=True,
    )
    options = {"ca_file": str(ca_file), "server_name": "health.test"}
    with health_server(credentials) as port:
        results, _ = await run_checks(
            [
                grpc_check(
                    "mtls", port, tls=True, tls_options={**options, "cert_file": str(tmp_path / "client.pem")}
                ),
                grpc_check("anonymous", port, tls=True, tls_options=options),
            ]
        )
    assert results["mtls"].success, results["mtls"].message
    assert not results["anonymous"].success
    assert results["anonymous"].reason is Reason.TLS, results["anonymous"].message
    assert results["anonymous"].values["probe.grpc.ssl"] == 0  # the server did not accept the handshake
