"""The adapters to the private parts of dependencies, exercised against the installed versions.

Each adapter module says what it reaches into (Python's ``ssl``, the OpenTelemetry SDK, the
``requests``/urllib3/``http.client`` stack; and the one line of libcurl's text the HTTP client
reads). Each test here goes through the reach-in with the
real library and a real local peer, and fails naming the dependency, its version and the attribute
when an upgrade moves or changes it: an adapter that silently falls back would otherwise only show
as a wrong phase, a shorter chain, a zero count or a backend that holds the exporter's thread.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pycurl
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
from agent.net.curl import CurlMulti, CurlRequest
from agent.sdk.http import TLSOptions
from agent.telemetry import _requests as requests_adapter
from agent.telemetry._otel_sdk import CountingBatchSpanProcessor, metric_preferences, otlp_http_sender
from agent.telemetry.providers import ExportStats

from .helpers import otlp_http_receiver, serve, thread_server

PYTHON = f"Python {sys.version_info.major}.{sys.version_info.minor}"
LIBCURL = pycurl.version
OTEL_SDK = f"opentelemetry-sdk {otel_sdk_version}"
STACK = f"requests {requests.__version__}, urllib3 {urllib3.__version__}, {PYTHON}"


def _hello_app() -> web.Application:
    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


# ---------------------------------------------------------------- libcurl's handshake line (curl.py)


@pytest.mark.anyio
async def test_libcurl_still_reports_the_handshake_in_the_line_the_client_reads(
    ca: trustme.CA, ca_file: Path
) -> None:
    """Pins the TLS version and cipher of an https hop: pycurl has no ``CURLINFO_TLS_SSL_PTR``, so
    ``agent/net/curl.py`` reads them from libcurl's informational line "SSL connection using
    TLSv1.3 / TLS_AES_256_GCM_SHA384 ..."; a libcurl that rewords it would leave them unknown."""
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    async with serve(_hello_app(), ssl_context=server_context) as port:
        result = await CurlMulti.of_running_loop().perform(
            CurlRequest("GET", f"https://127.0.0.1:{port}/", tls=TLSOptions(ca_file=ca_file))
        )
    assert result.status == 200
    assert result.tls_version in ("TLSv1.2", "TLSv1.3"), (
        f"{LIBCURL}: the handshake line no longer reads 'SSL connection using <version> / <cipher>'"
    )
    assert result.tls_cipher, f"{LIBCURL}: no cipher in the handshake line"


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


def test_encoded_metrics_go_through_the_otlp_http_exporters_client(caplog: pytest.LogCaptureFixture) -> None:
    """Pins ``otlp_http_sender``: the OTLP/HTTP metric exporter's ``_client.export(bytes)`` sends
    the bytes as they are to its endpoint, and nothing goes once the exporter is shut down."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, ResourceMetrics, ScopeMetrics

    request = ExportMetricsServiceRequest(
        resource_metrics=[ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[Metric(name="m")])])]
    )
    with otlp_http_receiver() as (endpoint, received):
        exporter = OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics")
        with caplog.at_level(logging.WARNING, logger="vantage.telemetry"):
            send = otlp_http_sender(exporter)
        assert send is not None, f"{OTEL_SDK}: OTLPMetricExporter._client.export is gone"
        assert send(request.SerializeToString())
        assert received.metrics == [request], f"{OTEL_SDK}: _client.export(bytes) sent something else"
        exporter.shutdown()
        assert not send(request.SerializeToString()) and len(received.metrics) == 1


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
