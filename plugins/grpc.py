"""The ``grpc`` probe: the standard gRPC health-checking protocol (``grpc.health.v1.Health/Check``),
plaintext or TLS, on a fresh connection each run.

The call is made on the probe's own socket, speaking HTTP/2 (``h2``) with the TLS context every
socket probe builds (``tls_context``): so ``tls_options.insecure`` skips verification as
blackbox_exporter's ``insecure_skip_verify`` does, the TLS metrics (``probe_ssl_*``,
``probe_tls_version_info``) come from the handshake the call went over, and ``probe_grpc_ssl`` says
whether that connection did TLS. gRPC's library offers neither from the client side.

Its dependencies are an optional extra: ``pip install 'vantage[grpc]'``. Without them the type is
listed as unavailable by ``vantage plugins`` and a check that uses it fails validation, saying so.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any
from urllib.parse import unquote

from pydantic import Field, field_validator

from agent.sdk import (
    AttributeValue,
    Check,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Sample,
    SpanHandle,
    TLSOptions,
    tls_context,
)

from ._toolkit.net import (
    IP_METRICS,
    LOOKUP_TIME,
    IpFamily,
    ResolveFailed,
    cancellation,
    ip_values,
    map_exception,
    resolve,
    split_host_port,
)
from ._toolkit.tls import TLS_METRICS, handshake_values

try:
    import grpc
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
    from grpc_health.v1 import health_pb2
except ImportError as exc:  # pragma: no cover - exercised by a test in a process without them
    raise ImportError(
        f"the grpc probe needs grpcio, grpcio-health-checking and h2 ({exc}); "
        "install them with: pip install 'vantage[grpc]'"
    ) from exc

__all__ = ["GrpcProbe", "GrpcSettings"]

_PATH = "/grpc.health.v1.Health/Check"
_METADATA_KEY = re.compile(r"[0-9a-z_.-]+")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")  # printable ASCII: what a metadata value may be
_MAX_MESSAGE = 64 * 1024  # a health response is a few bytes; more is not a health server
_CODES = {code.value[0]: code for code in grpc.StatusCode}
# gRPC's mapping of an HTTP status that came without a grpc-status (doc/http-grpc-status-mapping.md).
_HTTP_CODES = {
    400: grpc.StatusCode.INTERNAL,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.UNIMPLEMENTED,
    429: grpc.StatusCode.UNAVAILABLE,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.UNAVAILABLE,
}
# HTTP/2 RST_STREAM error codes, as gRPC reads them.
_RESET_CODES = {
    7: grpc.StatusCode.UNAVAILABLE,
    8: grpc.StatusCode.CANCELLED,
    11: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class ServingStatus(StrEnum):
    """The serving statuses of ``grpc.health.v1.HealthCheckResponse``, by their protocol names."""

    UNKNOWN = "UNKNOWN"
    SERVING = "SERVING"
    NOT_SERVING = "NOT_SERVING"
    SERVICE_UNKNOWN = "SERVICE_UNKNOWN"


class GrpcSettings(ProbeSettings):
    """Settings of a ``grpc`` check; the target is ``host:port``."""

    service: str = ""
    """The service to ask about; empty asks about the server as a whole."""
    tls: bool = False
    tls_options: TLSOptions = Field(default_factory=TLSOptions)
    """CA, client certificate (mTLS), ``server_name``, ``insecure`` (blackbox's ``insecure_skip_verify``)."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Request metadata (``authorization: Bearer ${TOKEN}``); keys in lower case."""

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        for key, item in value.items():
            if not _METADATA_KEY.fullmatch(key.lower()) or key.lower().startswith("grpc-"):
                raise ValueError(
                    f"metadata key {key!r} is not a gRPC metadata name (0-9 a-z _ . -, not grpc-*)"
                )
            if not _METADATA_VALUE.fullmatch(item):
                raise ValueError(f"the value of metadata {key!r} holds a character headers cannot carry")
        return value

    ip_family: IpFamily = "auto"
    ip_fallback: bool = False
    """Resolve in the other IP family when the name has no address in ``ip_family``
    (blackbox_exporter's ``ip_protocol_fallback``)."""


class GrpcProbe(Probe[GrpcSettings]):
    """Asks a gRPC server's health service whether a service is serving."""

    name = "grpc"
    Settings = GrpcSettings
    phase_metric = "probe.grpc.duration"
    metrics = (
        MetricSpec.gauge("probe.grpc.duration", "s", "Duration of the gRPC probe by phase", "phase"),
        MetricSpec.gauge("probe.grpc.status_code", "", "gRPC status code of the health check call"),
        MetricSpec.gauge(
            "probe.grpc.healthcheck_response",
            "",
            "1 for the serving status the server reported, 0 for the others",
            "serving_status",
        ),
        MetricSpec.gauge(
            "probe.grpc.ssl", "", "1 if the call's connection completed a TLS handshake, else 0"
        ),
        *TLS_METRICS,
        *IP_METRICS,
        LOOKUP_TIME,
    )

    def validate_target(self, target: str) -> None:
        split_host_port(target)

    async def run(self, check: Check, settings: GrpcSettings, ctx: ProbeContext) -> ProbeResult:
        host, port = split_host_port(check.target)
        clock = ctx.clock
        started = clock.monotonic()
        ctx.stage = f"resolving {host}"
        try:
            infos = await resolve(host, port, settings.ip_family, fallback=settings.ip_fallback)
        except ResolveFailed as exc:
            lookup = {"probe.dns.lookup_time": clock.monotonic() - started, "probe.grpc.ssl": 0.0}
            return ProbeResult.failure(exc.reason, exc.message, values=lookup)
        address = str(infos[0][4][0])
        phases = {"resolve": clock.monotonic() - started}
        call = _Call(
            values={"probe.dns.lookup_time": phases["resolve"], **ip_values(address), "probe.grpc.ssl": 0.0}
        )
        attributes: dict[str, AttributeValue] = {
            "rpc.system": "grpc",
            "rpc.service": "grpc.health.v1.Health",
            "rpc.method": "Check",
            "server.address": host,
            "server.port": port,
            "network.peer.address": address,
        }
        ctx.stage = f"waiting for the health of {settings.service or 'the server'} from {host}:{port}"
        span = ctx.tracer.start_span("grpc.health.v1.Health/Check", client=True, attributes=attributes)
        known: ServingStatus | None = None
        try:
            response = await _health_check(call, address, host, port, settings, check.timeout, ctx)
        except (OSError, EOFError) as exc:
            # Not reached, or the connection broke: gRPC's UNAVAILABLE, as its libraries say it.
            reason, message = map_exception(exc, host=host, port=port, handshake=call.handshaking)
            code, error_type = grpc.StatusCode.UNAVAILABLE, reason.value
        except h2.exceptions.ProtocolError as exc:
            code, error_type, reason = grpc.StatusCode.INTERNAL, "protocol", Reason.PROTOCOL
            message = f"the server at {host}:{port} does not speak gRPC's HTTP/2: {exc}"
        except grpc.aio.AioRpcError as exc:
            code, error_type = exc.code(), exc.code().name
            reason, message = map_exception(exc, host=host, port=port)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            known = ServingStatus.SERVICE_UNKNOWN if code is grpc.StatusCode.NOT_FOUND else None
        except BaseException as exc:
            _end_interrupted(span, exc)
            raise
        else:
            code = grpc.StatusCode.OK
        call.values["probe.grpc.status_code"] = float(code.value[0])
        phases["check"] = clock.monotonic() - started - phases["resolve"]
        if code is not grpc.StatusCode.OK:
            span.fail(error_type, ctx.redact(message))
            span.end()
            return ProbeResult.failure(
                reason,
                ctx.redact(message),
                phases=phases,
                values=call.values,
                samples=(*_statuses(known), *call.samples),
                attributes=attributes,
            )
        span.set_attribute("rpc.grpc.status_code", 0)
        span.end()
        status = ServingStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        return _judge(status, settings, phases, call, attributes)


@dataclass(slots=True)
class _Call:
    """What one run learnt of the connection, whatever became of the call."""

    values: dict[str, float]
    samples: tuple[Sample, ...] = ()
    handshaking: bool = False
    """The TLS handshake is running, as far as the client can tell: a close now is a TLS failure,
    not a connect failure."""


async def _health_check(
    call: _Call,
    address: str,
    host: str,
    port: int,
    settings: GrpcSettings,
    deadline: float,
    ctx: ProbeContext,
) -> Any:
    """One ``Health/Check`` call on a fresh connection, given ``deadline`` seconds (the check's timeout).

    Raises what the socket, TLS or HTTP/2 raised, or ``grpc.aio.AioRpcError`` for a call the server
    answered with another status than ``OK``."""
    reader, writer = await asyncio.open_connection(address, port, limit=_MAX_MESSAGE)
    try:
        name = host
        if settings.tls:
            name = settings.tls_options.server_name or host
            # Until the server's first HTTP/2 frame: with TLS 1.3 a server judges the client's
            # certificate after the client has finished, and a refusal arrives as a close.
            call.handshaking = True
            await writer.start_tls(_grpc_context(settings.tls_options), server_hostname=name)
            figures, call.samples = handshake_values(ctx, writer.get_extra_info("ssl_object"))
            call.values.update(figures)
        request = health_pb2.HealthCheckRequest(service=settings.service).SerializeToString()
        metadata = [(key.lower(), value) for key, value in settings.metadata.items()]
        headers = [
            (":method", "POST"),
            (":scheme", "https" if settings.tls else "http"),
            (":path", _PATH),
            (":authority", f"[{name}]:{port}" if ":" in name else f"{name}:{port}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", _timeout(deadline)),
            ("user-agent", "vantage-grpc"),
            *metadata,
        ]
        message = b"\x00" + len(request).to_bytes(4, "big") + request
        body = await _exchange(call, reader, writer, headers, message)
    finally:
        writer.close()
    return health_pb2.HealthCheckResponse.FromString(body)


async def _exchange(
    call: _Call,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    headers: list[tuple[str, str]],
    message: bytes,
) -> bytes:
    """Send one unary request on a new HTTP/2 connection and return the response message, or raise
    ``grpc.aio.AioRpcError`` with the status the server (or its HTTP/2) gave."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, headers)
    conn.send_data(stream, message, end_stream=True)
    writer.write(conn.data_to_send())
    await writer.drain()
    response: dict[str, str] = {}
    trailers: dict[str, str] = {}
    body = bytearray()
    opening = b""  # what the server sent first, while none of it made an HTTP/2 frame
    while True:
        data = await reader.read(_MAX_MESSAGE)
        if not data:
            if opening:
                # Its first line as text ("HTTP/1.0 400 Bad Request"), not a bytes repr.
                first = opening.split(b"\r\n", 1)[0][:60].decode("ascii", "replace")
                raise h2.exceptions.ProtocolError(f"it answered {first!r}")
            raise ConnectionResetError("the server closed the connection before answering the call")
        events = conn.receive_data(data)
        opening = b"" if events else (opening + data)[:64]
        if events and call.handshaking:
            call.handshaking = False
            call.values["probe.grpc.ssl"] = 1.0  # the server speaks over the TLS it accepted
        for event in events:
            if isinstance(event, h2.events.ResponseReceived):
                response = dict(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.TrailersReceived):
                trailers = dict(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                body += event.data or b""
                if len(body) > _MAX_MESSAGE:
                    raise _status(grpc.StatusCode.INTERNAL, "the response is larger than 64 KiB")
                conn.acknowledge_received_data(event.flow_controlled_length or 0, stream)
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                code = _RESET_CODES.get(int(event.error_code or 0), grpc.StatusCode.INTERNAL)
                raise _status(code, f"the server reset the stream ({event.error_code!s})")
            elif isinstance(event, h2.events.ConnectionTerminated):
                if event.error_code == 0 and (event.last_stream_id or 0) >= stream:
                    continue  # a graceful GOAWAY that lets this call finish
                raise _status(
                    grpc.StatusCode.UNAVAILABLE,
                    f"the server closed the connection (GOAWAY {event.error_code!s})",
                )
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                return _message(response, trailers, bytes(body))
        writer.write(conn.data_to_send())
        await writer.drain()


def _message(response: dict[str, str], trailers: dict[str, str], body: bytes) -> bytes:
    """The response message of a finished call, or its status as ``AioRpcError``."""
    http_status = response.get(":status", "")
    ending = trailers or response  # a "Trailers-Only" response carries its status in the headers
    if "grpc-status" not in ending:
        if http_status != "200":
            code = _HTTP_CODES.get(int(http_status) if http_status.isdigit() else 0, grpc.StatusCode.UNKNOWN)
            raise _status(code, f"HTTP status {http_status or 'missing'}, not a gRPC response")
        raise _status(grpc.StatusCode.INTERNAL, "the response has no grpc-status")
    value = ending["grpc-status"]
    code = _CODES.get(int(value), grpc.StatusCode.UNKNOWN) if value.isdigit() else grpc.StatusCode.UNKNOWN
    if code is not grpc.StatusCode.OK:
        raise _status(code, unquote(ending.get("grpc-message", "")))
    if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
        raise _status(grpc.StatusCode.INTERNAL, "the response is not one uncompressed gRPC message")
    return body[5:]


def _timeout(seconds: float) -> str:
    """A ``grpc-timeout`` value: at most 8 digits, in milliseconds or, past that, seconds."""
    millis = max(1, int(seconds * 1000))
    return f"{millis}m" if millis < 10**8 else f"{min(int(seconds), 10**8 - 1)}S"


def _status(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@lru_cache(maxsize=64)
def _grpc_context(options: TLSOptions) -> ssl.SSLContext:
    """``tls_context(options)`` offering HTTP/2 by ALPN, as gRPC servers require (its own context:
    the shared one is not the place for ALPN)."""
    context = tls_context.__wrapped__(options)
    context.set_alpn_protocols(["h2"])
    return context


def _end_interrupted(span: SpanHandle, exc: BaseException) -> None:
    """End the call's span when the run is cancelled (its timeout, or the agent stopping) or a
    bug raised: a span is never left open."""
    if isinstance(exc, Exception):
        span.fail(Reason.INTERNAL.value, type(exc).__name__)
    else:
        span.fail(*cancellation())
    span.end()


def _judge(
    status: ServingStatus,
    settings: GrpcSettings,
    phases: dict[str, float],
    call: _Call,
    attributes: dict[str, AttributeValue],
) -> ProbeResult:
    """A call that was answered: success only when the server says ``SERVING``."""
    serving = status is ServingStatus.SERVING
    return ProbeResult(
        success=serving,
        reason=None if serving else Reason.ASSERTION,
        message="" if serving else f"{settings.service or 'the server'} is {status}",
        phases=phases,
        values=call.values,
        samples=(*_statuses(status), *call.samples),
        attributes={**attributes, "vantage.grpc.serving_status": status.value},
    )


def _statuses(current: ServingStatus | None) -> tuple[Sample, ...]:
    return tuple(
        Sample(
            "probe.grpc.healthcheck_response",
            1.0 if status is current else 0.0,
            {"serving_status": status.value},
        )
        for status in ServingStatus
    )
