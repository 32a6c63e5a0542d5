"""The shared TLS metrics read the same in every probe that completes a handshake (http, tcp, tls,
grpc) against the same server, and say nothing verified-looking of a chain that was not verified."""

from __future__ import annotations

import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.sdk import ProbeResult, Reason

from .helpers import serve
from .test_http_probe import http_check, run_checks
from .test_tls_probe import blocking_tls_server

pytestmark = pytest.mark.anyio

LAST_CHAIN = "probe.ssl.last_chain_expiry_timestamp"
EARLIEST = "probe.ssl.earliest_cert_expiry"


def check(kind: str, name: str, port: int, tls_options: dict[str, Any]) -> dict[str, Any]:
    target = f"127.0.0.1:{port}"
    settings: dict[str, Any] = {"tls": True, "tls_options": tls_options}
    if kind == "http":
        return http_check(name, f"https://{target}/", tls=tls_options)
    if kind == "tls":
        settings = {"tls": tls_options}
    return {
        "name": name,
        "type": kind,
        "target": target,
        "interval": "10s",
        "timeout": "3s",
        "settings": settings,
    }


def leaf_labels(result: ProbeResult) -> dict[str, str]:
    (sample,) = [s for s in result.samples if s.metric == "probe.ssl.last_chain_info"]
    return dict(sample.labels)


def negotiated(result: ProbeResult) -> str:
    (sample,) = [s for s in result.samples if s.metric == "probe.tls.version_info"]
    return sample.labels["version"]


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


async def hello(_: web.Request) -> web.Response:
    return web.Response(text="hello")


async def test_http_tcp_and_tls_report_the_same_handshake(ca: trustme.CA, ca_file: Path) -> None:
    cert = ca.issue_cert("127.0.0.1", "vendor.test")
    app = web.Application()
    app.router.add_get("/", hello)
    verified = {"ca_file": str(ca_file)}
    insecure = {"insecure": True}
    async with serve(app, ssl_context=server_context(cert)) as port:
        results, _ = await run_checks(
            [check(kind, f"{kind}-verified", port, verified) for kind in ("http", "tcp", "tls")]
            + [check(kind, f"{kind}-insecure", port, insecure) for kind in ("http", "tcp", "tls")]
        )
    leaf = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    expected_leaf = {
        "fingerprint_sha256": leaf.fingerprint(hashes.SHA256()).hex(),
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "subjectalternative": "vendor.test",  # DNS names only, as blackbox_exporter's label
        "serialnumber": format(leaf.serial_number, "x"),
    }
    chain_expiry = min(leaf.not_valid_after_utc, ca_cert.not_valid_after_utc).timestamp()
    for kind in ("http", "tcp", "tls"):
        good, blind = results[f"{kind}-verified"], results[f"{kind}-insecure"]
        assert good.success and blind.success, (kind, good.message, blind.message)
        for result in (good, blind):
            assert result.values[EARLIEST] == leaf.not_valid_after_utc.timestamp(), kind
            assert leaf_labels(result) == expected_leaf, kind
            assert negotiated(result) == "TLS 1.3", kind
        assert good.values[LAST_CHAIN] == chain_expiry, kind
        # Not verified: no value at all, never one that looks like a verified chain's.
        assert LAST_CHAIN not in blind.values, (kind, blind.values)


async def test_an_untrusted_leaf_has_no_verified_chain_in_insecure_mode(
    tmp_path: Path,
) -> None:
    """OpenSSL builds a "verified" chain even with verification off (here of a leaf from a CA nobody
    trusts); it must not become probe_ssl_last_chain_expiry_timestamp_seconds."""
    stranger = trustme.CA()  # its root is in no trust store the probes use
    cert = stranger.issue_cert("127.0.0.1")
    app = web.Application()
    app.router.add_get("/", hello)
    async with serve(app, ssl_context=server_context(cert)) as port:
        results, _ = await run_checks(
            [check(kind, kind, port, {"insecure": True}) for kind in ("http", "tcp", "tls")]
            + [check("tcp", "tcp-verifying", port, {})]
        )
    for kind in ("http", "tcp", "tls"):
        assert results[kind].success, (kind, results[kind].message)
        assert EARLIEST in results[kind].values, kind
        assert LAST_CHAIN not in results[kind].values, (kind, results[kind].values)
    assert results["tcp-verifying"].reason is Reason.TLS


def old_context(cert: trustme.LeafCert, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A server of one old TLS version; OpenSSL 3 serves it only at security level 0."""
    context = server_context(cert)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    return context


@pytest.mark.parametrize(
    ("wanted", "version"), [("1.0", ssl.TLSVersion.TLSv1), ("1.1", ssl.TLSVersion.TLSv1_1)]
)
async def test_an_old_version_is_allowed_when_asked_for(
    ca: trustme.CA, ca_file: Path, wanted: str, version: ssl.TLSVersion
) -> None:
    """This machine's OpenSSL serves TLS 1.0 and 1.1 on loopback at security level 0; the socket
    probes reach it when ``min_version`` asks for that version, and refuse it otherwise."""
    cert = ca.issue_cert("127.0.0.1")
    with blocking_tls_server(old_context(cert, version)) as port:
        old = {"ca_file": str(ca_file), "min_version": wanted}
        results, _ = await run_checks(
            [check(kind, f"{kind}-old", port, old) for kind in ("tcp", "tls")]
            + [check(kind, f"{kind}-default", port, {"ca_file": str(ca_file)}) for kind in ("tcp", "tls")]
        )
    for kind in ("tcp", "tls"):
        assert results[f"{kind}-old"].success, (kind, results[f"{kind}-old"].message)
        assert negotiated(results[f"{kind}-old"]) == f"TLS {wanted}", kind
        assert results[f"{kind}-old"].values[LAST_CHAIN] > 0, kind
        assert results[f"{kind}-default"].reason is Reason.TLS, (kind, results[f"{kind}-default"].message)


async def test_grpc_reports_the_handshake_as_the_tls_probe_does(ca: trustme.CA, ca_file: Path) -> None:
    grpc = pytest.importorskip("grpc")
    from .test_grpc_probe import grpc_check, health_server

    cert = ca.issue_cert("127.0.0.1")
    credentials = grpc.ssl_server_credentials(
        [(cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())]
    )
    options = {"ca_file": str(ca_file)}
    with health_server(credentials) as port:
        results, _ = await run_checks(
            [grpc_check("grpc", port, tls=True, tls_options=options), check("tls", "tls", port, options)]
        )
    grpc_result, tls_result = results["grpc"], results["tls"]
    assert grpc_result.success and tls_result.success, (grpc_result.message, tls_result.message)
    for name in (EARLIEST, LAST_CHAIN, "probe.ip_protocol", "probe.ip_addr_hash"):
        assert grpc_result.values[name] == tls_result.values[name], name
    assert leaf_labels(grpc_result) == leaf_labels(tls_result)
    assert negotiated(grpc_result) == negotiated(tls_result)


async def test_a_tcp_starttls_turn_reports_its_handshake(ca: trustme.CA, ca_file: Path) -> None:
    import asyncio

    context = server_context(ca.issue_cert("127.0.0.1"))

    async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"220 ready\r\n")
            await reader.readline()  # STARTTLS
            writer.write(b"220 go ahead\r\n")
            await writer.drain()
            await writer.start_tls(context)
            writer.write(b"250 secret ok\r\n")
            await writer.drain()
            await reader.read()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(smtp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dialogue = [
        {"expect": "^220 "},
        {"send": "STARTTLS\r\n"},
        {"expect": "^220 "},
        {"starttls": True},
        {"expect": "^250 "},
    ]
    plain = {"name": "x", "type": "tcp", "target": f"127.0.0.1:{port}", "interval": "10s", "timeout": "3s"}
    try:
        results, _ = await run_checks(
            [
                {
                    **plain,
                    "name": "starttls",
                    "settings": {"tls_options": {"ca_file": str(ca_file)}, "dialogue": dialogue},
                },
                {**plain, "name": "plain", "settings": {"dialogue": dialogue[:3]}},
            ]
        )
    finally:
        server.close()
        await server.wait_closed()
    upgraded = results["starttls"]
    assert upgraded.success, upgraded.message
    assert EARLIEST in upgraded.values and LAST_CHAIN in upgraded.values
    assert negotiated(upgraded) == "TLS 1.3"
    assert leaf_labels(upgraded)["serialnumber"]
    # No handshake, no TLS metrics.
    assert results["plain"].success, results["plain"].message
    assert EARLIEST not in results["plain"].values
    assert not [s for s in results["plain"].samples if s.metric.startswith(("probe.tls", "probe.ssl"))]
