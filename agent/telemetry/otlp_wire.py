"""OTLP metrics encoded by the agent itself, for the ``otlp_proto_http`` exporter.

The SDK's encoder (``encode_metrics``) builds a protobuf message for every data point and every
attribute of it at each collection: three quarters of the CPU of a collection of 10,000 checks.
This module writes the same ``ExportMetricsServiceRequest`` in the protobuf wire format directly
from the values the collection reads (agent/telemetry/collection.py): a series' attributes are
encoded once per batch for each attribute mapping (a check's attributes are one mapping shared by
all its series, a phase's or a sample's own one mapping shared by the series of every check), and
a data point is a few fixed-width fields around them. The resource and the scope are encoded once,
by the SDK's own encoder. It writes what the SDK's encoder writes (a gauge's points without a
start time, ``as_int`` for an integer value, a histogram's sum, min and max always present), which
``tests/test_metric_export.py`` checks by decoding both with the official ``opentelemetry-proto``
messages.

Field numbers are those of opentelemetry-proto's ``metrics/v1/metrics.proto`` and
``collector/metrics/v1/metrics_service.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.sdk.metrics.export import MetricsData, ResourceMetrics, ScopeMetrics
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["GAUGE", "HISTOGRAM", "SUM", "Encoder"]

_fixed64 = struct.Struct("<Q").pack
_sfixed64 = struct.Struct("<q").pack
_double = struct.Struct("<d").pack

# The tag bytes: (field number << 3) | wire type (0 varint, 1 64-bit, 2 length-delimited).
_POINT = b"\x0a"  # Gauge, Sum, Histogram: data_points = 1
_NUMBER_ATTRS = b"\x3a"  # NumberDataPoint.attributes = 7
_HISTOGRAM_ATTRS = b"\x4a"  # HistogramDataPoint.attributes = 9
_START, _TIME = b"\x11", b"\x19"  # start_time_unix_nano = 2, time_unix_nano = 3 (fixed64)
_AS_DOUBLE, _AS_INT = b"\x21", b"\x31"  # NumberDataPoint.as_double = 4, as_int = 6 (sfixed64)
_COUNT, _SUM = b"\x21", b"\x29"  # HistogramDataPoint.count = 4 (fixed64), sum = 5 (double)
_BUCKETS, _BOUNDS = b"\x32", b"\x3a"  # bucket_counts = 6, explicit_bounds = 7 (packed)
_MIN, _MAX = b"\x59", b"\x61"  # min = 11, max = 12 (double)
_PAIRS = 100_000  # attribute pairs remembered at most (a check's name and target are its own)
GAUGE, SUM, HISTOGRAM = b"\x2a", b"\x3a", b"\x4a"  # Metric.gauge = 5, sum = 7, histogram = 9


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    return tag + _varint(len(payload)) + payload


def _any(value: Any) -> AnyValue:
    """An attribute value as the SDK's encoder has it (bool before int: a bool is an int)."""
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, Sequence):
        return AnyValue(array_value=ArrayValue(values=[_any(v) for v in value]))
    raise TypeError(f"an attribute value of type {type(value).__name__}")


def _pair(key: str, value: Any) -> bytes:
    """An attribute as an encoded ``KeyValue`` with its length in front (the tag goes before)."""
    if value.__class__ is str:  # most of them: written directly
        name, text = key.encode(), value.encode()
        any_value = b"\x0a" + _varint(len(text)) + text  # AnyValue.string_value = 1
        encoded = b"\x0a" + _varint(len(name)) + name + b"\x12" + _varint(len(any_value)) + any_value
    else:
        encoded = KeyValue(key=key, value=_any(value)).SerializeToString()
    return _varint(len(encoded)) + encoded


class Encoder:
    """Writes export requests; keep one per collection (it remembers the attribute mappings it
    encoded, by identity, keeping them alive so that an identity is not reused, and each pair)."""

    def __init__(self, resource: bytes, scope: bytes, resource_schema: str, scope_schema: str) -> None:
        self._resource, self._scope = resource, scope
        self._resource_schema, self._scope_schema = resource_schema, scope_schema
        self._attrs: dict[tuple[int, bytes], tuple[Mapping[str, Any], bytes]] = {}
        self._pairs: dict[tuple[str, Any], bytes] = {}

    @classmethod
    def envelope(cls, resource: Resource, scope: InstrumentationScope) -> tuple[bytes, bytes, str, str]:
        """The resource and the scope encoded by the SDK's encoder, once (``Encoder(*envelope)``)."""
        data = MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, [], "")], "")])
        (resource_metrics,) = encode_metrics(data).resource_metrics
        (scope_metrics,) = resource_metrics.scope_metrics
        return (
            resource_metrics.resource.SerializeToString(),
            scope_metrics.scope.SerializeToString(),
            resource_metrics.schema_url,
            scope_metrics.schema_url,
        )

    def _attributes(self, tag: bytes, attrs: Mapping[str, Any], extra: Mapping[str, Any] | None) -> bytes:
        if extra is not None and not attrs.keys().isdisjoint(extra):
            return self._encode(tag, {**attrs, **extra})  # extra's win
        out = self._encoded(tag, attrs)
        return out if extra is None else out + self._encoded(tag, extra)

    def _encoded(self, tag: bytes, attrs: Mapping[str, Any]) -> bytes:
        known = self._attrs.get((id(attrs), tag))
        if known is not None and known[0] is attrs:
            return known[1]
        encoded = self._encode(tag, attrs)
        self._attrs[(id(attrs), tag)] = (attrs, encoded)
        return encoded

    def _encode(self, tag: bytes, attrs: Mapping[str, Any]) -> bytes:
        out = []
        pairs = self._pairs
        for item in attrs.items():
            try:
                pair = pairs.get(item)
            except TypeError:  # a sequence: not kept
                pair = None
            if pair is None:
                try:
                    pair = _pair(*item)
                except (TypeError, ValueError):
                    continue  # as the SDK's encoder does: the attribute is left out
                if len(pairs) < _PAIRS:
                    try:
                        pairs[item] = pair
                    except TypeError:
                        pass
            out.append(tag + pair)
        return b"".join(out)

    def number(
        self,
        attrs: Mapping[str, Any],
        extra: Mapping[str, Any] | None,
        start: int | None,
        now: int,
        value: float,
    ) -> bytes:
        """One ``NumberDataPoint`` as a data point of a gauge or sum (``start`` None: a gauge's)."""
        body = self._attributes(_NUMBER_ATTRS, attrs, extra)
        if start is not None:
            body += _START + _fixed64(start)
        body += _TIME + _fixed64(now)
        if isinstance(value, int):
            body += _AS_INT + _sfixed64(value)
        else:
            body += _AS_DOUBLE + _double(value)
        return _field(_POINT, body)

    def histogram(
        self,
        attrs: Mapping[str, Any],
        start: int,
        now: int,
        count: int,
        total: float,
        counts: Sequence[int],
        bounds: Sequence[float],
        low: float,
        high: float,
    ) -> bytes:
        """One ``HistogramDataPoint`` as a data point of a histogram."""
        body = self._attributes(_HISTOGRAM_ATTRS, attrs, None)
        body += _START + _fixed64(start) + _TIME + _fixed64(now)
        if count:
            body += _COUNT + _fixed64(count)
        body += _SUM + _double(total)
        if counts:
            body += _field(_BUCKETS, struct.pack(f"<{len(counts)}Q", *counts))
        if bounds:
            body += _field(_BOUNDS, struct.pack(f"<{len(bounds)}d", *bounds))
        body += _MIN + _double(low) + _MAX + _double(high)
        return _field(_POINT, body)

    @staticmethod
    def metric(
        name: str, description: str, unit: str, kind: bytes, points: list[bytes], temporality: int = 0
    ) -> bytes:
        """One ``Metric``: ``kind`` is :data:`GAUGE`, :data:`SUM` (monotonic) or :data:`HISTOGRAM`;
        ``temporality`` the ``AggregationTemporality`` of a sum or a histogram."""
        body = _field(b"\x0a", name.encode()) if name else b""
        if description:
            body += _field(b"\x12", description.encode())
        if unit:
            body += _field(b"\x1a", unit.encode())
        data = b"".join(points)
        if kind != GAUGE:
            data += b"\x10" + _varint(temporality)  # aggregation_temporality = 2
        if kind == SUM:
            data += b"\x18\x01"  # is_monotonic = 3
        return body + _field(kind, data)

    def request(self, metrics: list[bytes]) -> bytes:
        """The ``ExportMetricsServiceRequest`` of the agent's resource and scope with ``metrics``."""
        scope_metrics = _field(b"\x0a", self._scope) + b"".join(_field(b"\x12", m) for m in metrics)
        if self._scope_schema:
            scope_metrics += _field(b"\x1a", self._scope_schema.encode())
        resource_metrics = _field(b"\x0a", self._resource) + _field(b"\x12", scope_metrics)
        if self._resource_schema:
            resource_metrics += _field(b"\x1a", self._resource_schema.encode())
        return _field(b"\x0a", resource_metrics)
