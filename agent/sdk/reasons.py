"""The fixed set of failure reasons."""

from __future__ import annotations

import enum

__all__ = ["Reason"]


class Reason(enum.StrEnum):
    """Why a run failed. The set is fixed so that dashboards and alerts can rely on it."""

    DNS = "dns"
    CONNECT = "connect"
    TLS = "tls"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    ASSERTION = "assertion"
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    SCHEMA = "schema"
    NOT_DELIVERED = "not_delivered"
    SIGNATURE = "signature"
    STALE = "stale"
    JOB_FAILED = "job_failed"
    VENDOR_OUTAGE = "vendor_outage"
    RUNTIME_EXCEEDED = "runtime_exceeded"
    """A heartbeat's job ran longer than its ``max_runtime`` (still running, or ended late)."""
    RUNTIME_SHORT = "runtime_short"
    """A heartbeat's job reported success sooner than its ``min_runtime``: it has likely done nothing."""
    REDIRECTS = "redirects"
    PROTOCOL = "protocol"
    INTERNAL = "internal"
