"""What the agent makes of the ``OTEL_*`` environment: validation, the resource, and the telemetry
parts that have no network in them (state-change logging, the SDK's lines).

The dropped-span adapter on the SDK's batch processor is pinned in ``tests/test_adapters.py``.

The hostile backends themselves are in ``tests/faults/test_otlp_backend.py``.
"""

from __future__ import annotations

import logging
import re
import socket

import pytest
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_DELTA

from agent.config.secrets import Redactor
from agent.config.settings import Shard
from agent.errors import ConfigError
from agent.sdk.probe import MetricKind, MetricSpec
from agent.telemetry._otel_sdk import metric_preferences
from agent.telemetry.providers import (
    ExportOutcome,
    ExportStats,
    _otlp_metric_preferences,
    build_resource,
    build_telemetry,
    otel_secrets,
    validate_otel_env,
)

from .helpers import otlp_http_receiver

CREDENTIALS = "dXNlcjpwYXNz"  # base64 of user:pass


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "var",
    ["OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_METRICS_HEADERS"],
)
@pytest.mark.parametrize(
    ("value", "says"),
    [
        (f"Authorization: Basic {CREDENTIALS}", "entry 1 is not name=value (it has a ':' where '=' belongs)"),
        (f"x-tenant=acme,Authorization: Basic {CREDENTIALS}", "entry 2 is not name=value"),
        (
            f"Authorization: Basic={CREDENTIALS}",
            "the name of entry 1 is not an HTTP header name (it has a ':'",
        ),
        (
            f"Authorization=Basic {CREDENTIALS}\u00e9",
            "the value of entry 1 holds characters that must be percent-encoded",
        ),
        (f'Authorization="{CREDENTIALS}"', "the value of entry 1 holds characters"),
        (
            f"Authorization=Basic%{CREDENTIALS}",
            "the value of entry 1 has a '%' that does not start a %XX escape",
        ),
    ],
)
def test_a_malformed_headers_variable_is_named_and_its_value_never_shown(
    var: str, value: str, says: str
) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", var: value}
    for check in (
        validate_otel_env,
        lambda env: build_telemetry(env, build_resource(env, region="l", version="0")),
    ):
        with pytest.raises(ConfigError) as caught:
            check(environ)
        message = str(caught.value)
        assert message.startswith(f"{var}: ") and says in message
        assert CREDENTIALS not in message and "acme" not in message


@pytest.mark.parametrize(
    "value",
    [
        f"Authorization=Basic%20{CREDENTIALS.replace('=', '%3D')}",  # as the specification has it
        f"Authorization=Basic {CREDENTIALS}",  # a bare space, which the Python SDK accepts too
        f" x-tenant = acme , Authorization=Basic%20{CREDENTIALS} ,",
    ],
)
def test_well_formed_headers_are_accepted_and_their_values_become_secrets(value: str) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_EXPORTER_OTLP_HEADERS": value}
    redactor = Redactor()
    telemetry = build_telemetry(environ, build_resource(environ, region="l", version="0"), redactor=redactor)
    telemetry.shutdown(0.1)
    assert CREDENTIALS in otel_secrets(environ)
    for leaked in (f"sent Basic {CREDENTIALS} upstream", f"token {CREDENTIALS}."):
        assert CREDENTIALS not in redactor(leaked)


# ---------------------------------------------------------------- numbers

NUMERIC = [
    "OTEL_METRIC_EXPORT_INTERVAL",
    "OTEL_METRIC_EXPORT_TIMEOUT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_EXPORT_TIMEOUT",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
]


@pytest.mark.parametrize("var", NUMERIC)
def test_a_numeric_variable_that_is_not_a_number_is_named(var: str) -> None:
    # The SDK would log a warning (or nothing) and carry on with its default.
    with pytest.raises(ConfigError, match=rf"^{var}: 'abc' is not a"):
        validate_otel_env({var: "abc"})


def test_the_sampler_argument_is_checked_when_a_ratio_sampler_reads_it() -> None:
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_SAMPLER_ARG: 'abc' is not a number"):
        validate_otel_env(
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "abc"}
        )
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_SAMPLER_ARG: 1.5 is out of range"):
        validate_otel_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"})
    with pytest.raises(ConfigError, match=r"^OTEL_TRACES_SAMPLER: unknown sampler 'sometimes'"):
        validate_otel_env({"OTEL_TRACES_SAMPLER": "sometimes"})
    validate_otel_env({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, "OTEL_METRIC_EXPORT_INTERVAL: 0 is out of range"),
        (
            {"OTEL_BSP_SCHEDULE_DELAY": "1.5"},
            "OTEL_BSP_SCHEDULE_DELAY: '1.5' is not a whole number of milliseconds",
        ),
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "-1"}, "OTEL_BSP_MAX_QUEUE_SIZE: -1 is out of range"),
        (
            {"OTEL_BSP_MAX_QUEUE_SIZE": "10", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "20"},
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE: 20 is larger than the queue (OTEL_BSP_MAX_QUEUE_SIZE, 10)",
        ),
        ({"OTEL_SPAN_EVENT_COUNT_LIMIT": "-3"}, "OTEL_SPAN_EVENT_COUNT_LIMIT: -3 is out of range"),
        ({"OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "10000"}, "reads it in seconds (not milliseconds"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "brotli"}, "OTEL_EXPORTER_OTLP_COMPRESSION: unknown compression"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER: unknown exporter 'zipkin'"),
    ],
)
def test_values_out_of_range_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_otel_env(env)
    assert message in str(caught.value)


def test_valid_numbers_and_unset_limits_pass_and_a_small_queue_gets_a_fitting_batch() -> None:
    environ = {
        "OTEL_METRIC_EXPORT_INTERVAL": "1500.5",
        "OTEL_BSP_MAX_QUEUE_SIZE": "16",  # below the agent's batch of 64: the batch follows it
        "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT": "unset",
        "OTEL_ATTRIBUTE_COUNT_LIMIT": "0",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2.5",
        "OTEL_TRACES_EXPORTER": "console",
    }
    validate_otel_env(environ)
    telemetry = build_telemetry(environ, build_resource(environ, region="l", version="0"))
    telemetry.shutdown(0.1)


# ---------------------------------------------------------------- service.instance.id


def test_the_instance_id_is_the_host_name_and_stays_the_same() -> None:
    environ = {"HOSTNAME": "vantage-eu-0"}
    first = build_resource(environ, region="eu", version="1")
    second = build_resource(environ, region="eu", version="1")
    assert (
        first.attributes["service.instance.id"] == second.attributes["service.instance.id"] == "vantage-eu-0"
    )
    plain = build_resource({}, region="eu", version="1")
    assert plain.attributes["service.instance.id"] == socket.gethostname()
    # The SDK's own attributes are still there.
    assert plain.attributes["telemetry.sdk.language"] == "python"
    assert plain.attributes["service.name"] == "vantage"


def test_each_worker_is_its_own_instance() -> None:
    environ = {"HOSTNAME": "vantage-eu-0"}
    ids = {
        build_resource(environ, region="eu", version="1", worker=Shard(i, 3)).attributes[
            "service.instance.id"
        ]
        for i in range(3)
    }
    assert ids == {"vantage-eu-0-worker-0", "vantage-eu-0-worker-1", "vantage-eu-0-worker-2"}
    single = build_resource(environ, region="eu", version="1", worker=Shard(0, 1))
    assert single.attributes["service.instance.id"] == "vantage-eu-0"


def test_otel_resource_attributes_set_the_instance_id_and_the_service() -> None:
    environ = {
        "HOSTNAME": "vantage-eu-0",
        "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=payments%2Dprobe, deployment.environment.name=prod",
        "OTEL_SERVICE_NAME": "synthetics",
    }
    attributes = build_resource(environ, region="eu", version="1").attributes
    assert attributes["service.instance.id"] == "payments-probe"
    assert attributes["deployment.environment.name"] == "prod"
    assert attributes["service.name"] == "synthetics"
    assert attributes["cloud.region"] == "eu"
    worker = build_resource(environ, region="eu", version="1", worker=Shard(1, 2)).attributes
    assert worker["service.instance.id"] == "payments-probe-worker-1"


# ---------------------------------------------------------------- state changes in the log


def test_the_log_tells_state_changes_and_readyz_the_details(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    stats = ExportStats(clock=lambda: now[0])
    endpoint = "https://otlp.example/v1/traces"
    with caplog.at_level(logging.INFO, logger="vantage.telemetry"):
        stats.succeeded("traces", "otlp", endpoint)
        for _ in range(3):
            stats.failed_with(
                "traces", ExportOutcome("http 503", "HTTP 503 Service Unavailable"), "otlp", endpoint
            )
            now[0] += 5
        failing = stats.snapshot()
        stats.failed_with(
            "traces", ExportOutcome("timeout", "no complete answer within 10s"), "otlp", endpoint
        )
        stats.failed_with(
            "traces", ExportOutcome("timeout", "no complete answer within 10s"), "otlp", endpoint
        )
        stats.succeeded("traces", "otlp", endpoint)
        stats.succeeded("traces", "otlp", endpoint)
    assert [r.getMessage() for r in caplog.records] == [
        f"traces export to {endpoint} failing: http 503",
        f"traces export to {endpoint} failing: timeout",
        f"traces export to {endpoint} recovered after 5 failed exports",
    ]
    assert failing["failing"]["traces"] == {
        "since": 1000.0,
        "failed_exports": 3,
        "cause": "http 503",
        "exporter": "otlp",
        "endpoint": endpoint,
    }
    assert failing["last_error"]["traces"]["time"] == 1010.0
    after = stats.snapshot()
    assert after["failing"] == {}
    assert after["exported"] == {"traces": 3} and after["failed"] == {"traces": 5}
    assert after["last_error"]["traces"]["cause"] == "timeout"


def test_the_sdk_lines_about_each_failed_export_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    environ = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    build_telemetry(environ, build_resource(environ, region="l", version="0")).shutdown(0.1)
    noisy = [
        (
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            "Transient error %s encountered while exporting",
        ),
        (
            "opentelemetry.exporter.otlp.proto.http.metric_exporter",
            "Failed to export %s batch code: %s, reason: %s",
        ),
        ("opentelemetry.exporter.otlp.common.http", "Shutdown in progress, aborting retry."),
        ("opentelemetry.exporter.otlp.proto.grpc.exporter", "Failed to export %s to %s, error code: %s"),
    ]
    with caplog.at_level(logging.INFO):
        for name, message in noisy:
            logging.getLogger(name).warning(message, *(["x"] * message.count("%s")))
        logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter").warning(
            "Exporter already shutdown"
        )
    assert [r.getMessage() for r in caplog.records] == ["Exporter already shutdown"]
    assert not any(re.search("Transient|Failed to export", r.getMessage()) for r in caplog.records)


# ---------------------------------------------------------------- metric temporality and aggregation

_PREFERENCE_VARS = (
    "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
    "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION",
)
_PREFERENCES = [
    {},
    {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"},
    {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": " LowMemory "},
    {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "cumulative"},
    {"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sometimes"},
    {"OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "base2_exponential_bucket_histogram"},
    {"OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "explicit_bucket_histogram"},
    {"OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "Base2_Exponential_Bucket_Histogram"},
]


def _set_environ(monkeypatch: pytest.MonkeyPatch, environ: dict[str, str]) -> None:
    """The OTLP exporters read ``os.environ`` themselves."""
    for var in _PREFERENCE_VARS:
        monkeypatch.delenv(var, raising=False)
    for var, value in environ.items():
        monkeypatch.setenv(var, value)


@pytest.mark.parametrize("environ", _PREFERENCES, ids=lambda e: ",".join(e.values()) or "unset")
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_otlp_metric_preferences_the_agent_passes_are_those_the_sdk_would_pick(
    environ: dict[str, str], protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The agent reads the OTLP temporality and histogram variables itself, to tell the exporter and
    the wrapper that counts its exports the same thing; this fails if the SDK reads them otherwise."""
    _set_environ(monkeypatch, environ)
    if protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

        sdk = metric_preferences(Http())
    else:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        sdk = metric_preferences(Grpc(insecure=True))
    ours = _otlp_metric_preferences(environ, f"otlp_proto_{protocol}")
    assert ours[0] == sdk[0]
    assert ours[1] is not None and sdk[1] is not None
    assert {k: type(v) for k, v in ours[1].items()} == {k: type(v) for k, v in sdk[1].items()}


def test_the_temporality_preference_reaches_the_wire(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With ``DELTA``, a counter is exported as deltas; an exponential histogram preference is
    logged and the histogram goes with its explicit buckets (docs/metrics.md says why)."""
    with otlp_http_receiver() as (endpoint, received):
        environ = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_METRIC_EXPORT_INTERVAL": "3600000",
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "DELTA",
            "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": "base2_exponential_bucket_histogram",
        }
        _set_environ(monkeypatch, environ)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        with caplog.at_level(logging.WARNING, logger="vantage.telemetry"):
            telemetry = build_telemetry(environ, build_resource(environ, region="l", version="0"))
        assert any("base2_exponential_bucket_histogram" in r.getMessage() for r in caplog.records)
        counter = telemetry.tables.declare(MetricSpec("runs", MetricKind.COUNTER, "{run}", "Runs"))
        histogram = telemetry.tables.declare(
            MetricSpec("took", MetricKind.HISTOGRAM, "s", "Took", buckets=(0.1, 1.0))
        )
        try:
            for value in (1, 2):
                counter.add(None, None, {}, value)
                histogram.record(None, None, {}, 0.5)
                assert telemetry.flush(10)
        finally:
            telemetry.shutdown(5)
        metrics = [
            metric
            for request in received.metrics
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        ]
    runs = [m.sum for m in metrics if m.name == "runs"]
    assert [(s.aggregation_temporality, s.data_points[0].as_double) for s in runs[:2]] == [
        (AGGREGATION_TEMPORALITY_DELTA, 1),
        (AGGREGATION_TEMPORALITY_DELTA, 2),
    ]
    assert {m.WhichOneof("data") for m in metrics if m.name == "took"} == {"histogram"}
