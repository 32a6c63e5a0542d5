"""The ``grpc`` probe: the standard gRPC health-checking protocol (``grpc.health.v1.Health/Check``),
plaintext or TLS, on a fresh connection each run.

Its dependencies are an optional extra: ``pip install 'vantage[grpc]'``. Without them the type is
listed as unavailable by ``vantage plugins`` and a check that uses it fails validation, saying so.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

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
)

from ._toolkit.net import IpFamily, ResolveFailed, cancellation, map_exception, resolve, split_host_port

try:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
except ImportError as exc:  # pragma: no cover - exercised by a test in a process without them
    raise ImportError(
        f"the grpc probe needs grpcio and grpcio-health-checking ({exc}); "
        "install them with: pip install 'vantage[grpc]'"
    ) from exc

__all__ = ["GrpcProbe", "GrpcSettings"]


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
    """CA, client certificate (mTLS) and ``server_name``; ``insecure`` is not available to gRPC."""
    metadata: dict[str, str] = Field(default_factory=dict)
    """Request metadata (``authorization: Bearer ${TOKEN}``); keys in lower case."""
    ip_family: IpFamily = "auto"

    @model_validator(mode="after")
    def _no_insecure(self) -> GrpcSettings:
        if self.tls_options.insecure:
            raise ValueError("gRPC cannot skip certificate verification; give the server's CA as 'ca_file'")
        return self


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
        MetricSpec.gauge("probe.grpc.ssl", "", "1 if the call used TLS, else 0"),
    )

    def validate_target(self, target: str) -> None:
        split_host_port(target)

    async def run(self, check: Check, settings: GrpcSettings, ctx: ProbeContext) -> ProbeResult:
        host, port = split_host_port(check.target)
        clock = ctx.clock
        started = clock.monotonic()
        ctx.stage = f"resolving {host}"
        try:
            infos = await resolve(host, port, settings.ip_family)
        except ResolveFailed as exc:
            return ProbeResult.failure(exc.reason, exc.message)
        address = str(infos[0][4][0])
        phases = {"resolve": clock.monotonic() - started}
        values: dict[str, float] = {"probe.grpc.ssl": 1.0 if settings.tls else 0.0}
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
        try:
            response = await _health_check(address, host, port, settings, check.timeout)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            phases["check"] = clock.monotonic() - started - phases["resolve"]
            values["probe.grpc.status_code"] = float(code.value[0])
            reason, message = map_exception(exc, host=host, port=port)
            span.set_attribute("rpc.grpc.status_code", code.value[0])
            span.fail(code.name, ctx.redact(message))
            span.end()
            known = ServingStatus.SERVICE_UNKNOWN if code is grpc.StatusCode.NOT_FOUND else None
            return ProbeResult.failure(
                reason,
                ctx.redact(message),
                phases=phases,
                values=values,
                samples=_statuses(known),
                attributes=attributes,
            )
        except BaseException as exc:
            _end_interrupted(span, exc)
            raise
        span.set_attribute("rpc.grpc.status_code", 0)
        span.end()
        phases["check"] = clock.monotonic() - started - phases["resolve"]
        values["probe.grpc.status_code"] = 0.0
        status = ServingStatus(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
        return _judge(status, settings, phases, values, attributes)


async def _health_check(address: str, host: str, port: int, settings: GrpcSettings, deadline: float) -> Any:
    """One ``Health/Check`` call on a fresh channel, given ``deadline`` seconds (the check's timeout)."""
    metadata = [(key.lower(), value) for key, value in settings.metadata.items()]
    async with _channel(address, host, port, settings) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return await stub.Check(
            health_pb2.HealthCheckRequest(service=settings.service),
            timeout=deadline,
            metadata=metadata,
        )


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
    values: dict[str, float],
    attributes: dict[str, AttributeValue],
) -> ProbeResult:
    """A call that was answered: success only when the server says ``SERVING``."""
    serving = status is ServingStatus.SERVING
    return ProbeResult(
        success=serving,
        reason=None if serving else Reason.ASSERTION,
        message="" if serving else f"{settings.service or 'the server'} is {status}",
        phases=phases,
        values=values,
        samples=_statuses(status),
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


def _channel(address: str, host: str, port: int, settings: GrpcSettings) -> Any:
    ip = ipaddress.ip_address(address)
    target = f"ipv6:[{address}]:{port}" if ip.version == 6 else f"ipv4:{address}:{port}"
    name = (settings.tls_options.server_name or host) if settings.tls else host
    options: list[tuple[str, Any]] = [
        ("grpc.default_authority", f"{name}:{port}"),
        # A new connection each run, measured from scratch: no subchannel shared with other checks.
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.enable_retries", 0),
    ]
    if not settings.tls:
        return grpc.aio.insecure_channel(target, options=options)
    tls = settings.tls_options
    options.append(("grpc.ssl_target_name_override", name))
    credentials = grpc.ssl_channel_credentials(
        root_certificates=tls.ca_file.read_bytes() if tls.ca_file else None,
        private_key=(tls.key_file or tls.cert_file).read_bytes() if tls.cert_file else None,
        certificate_chain=tls.cert_file.read_bytes() if tls.cert_file else None,
    )
    return grpc.aio.secure_channel(target, credentials, options=options)
