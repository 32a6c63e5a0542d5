"""The adapters to the private parts of dependencies, exercised against the installed versions.

Each adapter module says what it reaches into (aiohttp, Python's ``ssl``, the OpenTelemetry SDK,
the ``requests``/urllib3/``http.client`` stack). Each test here goes through the reach-in with the
real library and a real local peer, and fails naming the dependency, its version and the attribute
when an upgrade moves or changes it: an adapter that silently falls back would otherwise only show
as a wrong phase, a shorter chain, a zero count or a backend that holds the exporter's thread.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import requests
import trustme
import urllib3
from aiohttp import web
from opentelemetry.sdk import metrics as instruments
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ConsoleMetricExporter,
)
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.version import __version__ as otel_sdk_version

from agent.net import _ssl as ssl_adapter
from agent.net._aiohttp import TimedConnector
from agent.telemetry import _requests as requests_adapter
from agent.telemetry._otel_sdk import CountingBatchSpanProcessor, metric_preferences
from agent.telemetry.providers import ExportStats

from .helpers import serve, thread_server

PYTHON = f"Python {sys.version_info.major}.{sys.version_info.minor}"
AIOHTTP = f"aiohttp {aiohttp.__version__}"
OTEL_SDK = f"opentelemetry-sdk {otel_sdk_version}"
STACK = f"requests {requests.__version__}, urllib3 {urllib3.__version__}, {PYTHON}"


def _hello_app() -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


# ---------------------------------------------------------------- aiohttp (_aiohttp.py)


def test_aiohttp_still_has_the_private_method_and_attributes_the_timed_connector_uses() -> None:
    method = getattr(aiohttp.TCPConnector, "_wrap_create_connection", None)
    assert method is not None, f"{AIOHTTP}: TCPConnector._wrap_create_connection is gone"
    parameters = inspect.signature(method).parameters
    for name in ("addr_infos", "req", "timeout", "client_error"):
        assert name in parameters, (
            f"{AIOHTTP}: TCPConnector._wrap_create_connection no longer takes {name!r} "
            f"(it takes {list(parameters)})"
        )


@pytest.mark.anyio
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_the_timed_connector_marks_tcp_up_before_the_handshake(ca: trustme.CA, scheme: str) -> None:
    """Pins TimedConnector: aiohttp calls its ``_wrap_create_connection`` for each new connection,
    and the private attributes it reads are there, so the connect and TLS phases are told apart."""
    calls: list[str] = []
    server_context = None
    client_context = ssl.create_default_context()
    if scheme == "https":
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_context)
        ca.configure_trust(client_context)

    def connected(transport: asyncio.Transport) -> None:
        calls.append("tls" if transport.get_extra_info("ssl_object") is not None else "connected")

    async with serve(_hello_app(), ssl_context=server_context) as port:
        connector = TimedConnector(
            on_tcp_up=lambda: calls.append("tcp up"),
            on_connected=connected,
            ssl=client_context,
            force_close=True,
        )
        async with aiohttp.ClientSession(connector=connector) as session:
            try:
                async with session.get(f"{scheme}://127.0.0.1:{port}/") as response:
                    body = await response.text()
            except AttributeError as exc:
                pytest.fail(f"{AIOHTTP}: TCPConnector no longer has the attribute {exc.name!r}")
    assert body == "hello"
    assert calls == ["tcp up", "tls" if scheme == "https" else "connected"], (
        f"{AIOHTTP} no longer makes its connections through TCPConnector._wrap_create_connection "
        f"(hooks called: {calls})"
    )


@pytest.mark.anyio
async def test_the_timed_connector_raises_the_errors_aiohttp_raises(ca: trustme.CA) -> None:
    """The lines repeated from aiohttp translate errors as aiohttp does: the failure map relies on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    untrusted = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(untrusted)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    async with serve(_hello_app(), ssl_context=untrusted) as port:
        connector = TimedConnector(on_tcp_up=lambda: None, on_connected=lambda _: None, ssl=client_context)
        async with aiohttp.ClientSession(connector=connector) as session:
            with pytest.raises(aiohttp.ClientConnectorError) as refused:
                await session.get(f"http://127.0.0.1:{closed}/")
            assert isinstance(refused.value.os_error, ConnectionRefusedError)
            with pytest.raises(aiohttp.ClientConnectorCertificateError) as untrusted_error:
                await session.get(f"https://127.0.0.1:{port}/")
            assert isinstance(untrusted_error.value.certificate_error, ssl.SSLCertVerificationError)


# ---------------------------------------------------------------- ssl (_ssl.py)


@pytest.mark.anyio
async def test_the_chains_of_a_handshake_are_read_whole(ca: trustme.CA) -> None:
    """Pins the chain readers: on Python before 3.13 through ``SSLObject._sslobj`` and
    ``_ssl.ENCODING_DER``; without them only the leaf would be known, for both chains."""
    leaf = ca.issue_cert("127.0.0.1")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context)
        ssl_object = writer.get_extra_info("ssl_object")
        if sys.version_info < (3, 13):
            inner = getattr(ssl_object, "_sslobj", None)
            assert inner is not None, f"{PYTHON}: ssl.SSLObject._sslobj is gone"
            for method in ("get_unverified_chain", "get_verified_chain"):
                assert callable(getattr(inner, method, None)), f"{PYTHON}: SSLObject._sslobj.{method} is gone"
            assert hasattr(ssl, "_ssl") and hasattr(ssl._ssl, "ENCODING_DER"), (
                f"{PYTHON}: _ssl.ENCODING_DER is gone"
            )
        sent = ssl_adapter.sent_chain(ssl_object)
        verified = ssl_adapter.verified_chain(ssl_object)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    leaf_der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    ca_der = ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode())
    assert sent == (leaf_der,), f"{PYTHON}: the certificates the server sent are not read whole"
    assert verified == (leaf_der, ca_der), f"{PYTHON}: the verified chain is not read whole"


# ---------------------------------------------------------------- the OpenTelemetry SDK (_otel_sdk.py)


class _Blocking(SpanExporter):
    """An exporter stuck in its first export until released, like one waiting on a dead backend."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def export(self, spans: Any) -> SpanExportResult:
        self.entered.set()
        self.release.wait(10)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_spans_dropped_by_the_full_queue_are_counted_exactly(caplog: pytest.LogCaptureFixture) -> None:
    """Pins CountingBatchSpanProcessor: it fails if the SDK stops reporting drops through
    ``BatchSpanProcessor._batch_processor._metrics.drop_items``."""
    stats = ExportStats()
    exporter = _Blocking()
    with caplog.at_level(logging.WARNING, logger="vantage.telemetry"):
        processor = CountingBatchSpanProcessor(
            exporter, stats, max_queue_size=4, max_export_batch_size=1, schedule_delay_millis=10
        )
    assert not caplog.records, (
        f"{OTEL_SDK}: BatchSpanProcessor._batch_processor._metrics.drop_items is gone: "
        + caplog.records[0].getMessage()
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    try:
        tracer.start_span("first").end()
        assert exporter.entered.wait(10)  # the worker holds "first" in a stuck export
        for i in range(10):
            tracer.start_span(f"span {i}").end()
        assert stats.dropped["traces"] == 6, (  # 4 wait in the queue
            f"{OTEL_SDK}: the batch processor no longer reports its drops through "
            f"_batch_processor._metrics.drop_items(count, 'queue_full') (counted {stats.dropped['traces']})"
        )
    finally:
        exporter.release.set()
        provider.shutdown()


def test_an_exporters_preferences_are_read_as_it_was_built_with_them() -> None:
    """Pins ``metric_preferences``: what a third-party exporter was built with is what it reads
    back (the agent takes its temporality from there)."""
    temporality = {instruments.Counter: AggregationTemporality.DELTA}
    aggregation = {instruments.Histogram: ExponentialBucketHistogramAggregation()}
    console = ConsoleMetricExporter(preferred_temporality=temporality, preferred_aggregation=aggregation)
    try:
        assert metric_preferences(console) == (temporality, aggregation)
    except AttributeError as exc:
        pytest.fail(f"{OTEL_SDK}: MetricExporter.{exc.name} is gone")
    assert metric_preferences(ConsoleMetricExporter()) == (None, None)


# ---------------------------------------------------------------- requests, urllib3 (_requests.py)


class _NoCutoff:
    cutoff: float | None = None


@pytest.fixture
def hello_port() -> Iterator[int]:
    with thread_server(_hello_app()) as port:
        yield port


def test_the_deadline_transport_is_the_one_requests_uses(
    hello_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins DeadlineAdapter: requests builds its pools from ``pool_classes_by_scheme``, urllib3 its
    connections from ``ConnectionCls`` (their ``send``), and http.client its response from
    ``response_class`` (reading through its ``fp``); each socket read and write sees the deadline."""
    url = f"http://127.0.0.1:{hello_port}/"
    adapter = requests_adapter.DeadlineAdapter()
    pool = adapter.poolmanager.connection_from_url(url)
    assert isinstance(pool, requests_adapter._HTTPPool), (
        f"{STACK}: PoolManager.pool_classes_by_scheme is no longer where the pools come from"
    )
    sends: list[object] = []
    reads: list[int] = []
    limit_send, readinto = requests_adapter._limit_send, requests_adapter._DeadlineReader.readinto

    def recording_send(sock: socket.socket | None) -> None:
        sends.append(sock)
        limit_send(sock)

    def recording_read(self: Any, buffer: Any) -> int | None:
        reads.append(len(buffer))
        return readinto(self, buffer)

    monkeypatch.setattr(requests_adapter, "_limit_send", recording_send)
    monkeypatch.setattr(requests_adapter._DeadlineReader, "readinto", recording_read)
    with requests.Session() as session:
        session.mount("http://", adapter)
        with requests_adapter.request_deadline(time.monotonic() + 30, _NoCutoff()):
            response = session.get(url, timeout=30)
    assert response.text == "hello"
    assert sends, f"{STACK}: HTTPConnectionPool.ConnectionCls (or HTTPConnection.send) is no longer used"
    assert reads, (
        f"{STACK}: http.client's HTTPConnection.response_class (or HTTPResponse.fp) is no longer "
        "used to read the answer"
    )


def test_a_passed_cutoff_ends_the_request(hello_port: int) -> None:
    """What the transport is for: once the cutoff (or the deadline) passed, a request fails at once."""
    with requests.Session() as session:
        session.mount("http://", requests_adapter.DeadlineAdapter())
        cutoff = _NoCutoff()
        with requests_adapter.request_deadline(time.monotonic() + 30, cutoff):
            cutoff.cutoff = time.monotonic()  # the agent stopping: the cutoff comes first
            with pytest.raises(requests.exceptions.RequestException) as raised:
                session.get(f"http://127.0.0.1:{hello_port}/", timeout=30)
    chain: list[BaseException] = []
    current: BaseException | None = raised.value
    while current is not None and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    assert any(isinstance(e, TimeoutError) for e in chain), f"{STACK}: {raised.value!r}"
