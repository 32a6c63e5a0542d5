"""TLS metrics shared by the probes that complete a handshake (``http``, ``tls``), under
blackbox_exporter's names, and what they read off a certificate."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.sdk import MetricSpec, Sample, TLSInfo

__all__ = ["TLS_METRICS", "Certificate", "describe", "tls_values"]

TLS_METRICS = (
    MetricSpec.gauge(
        "probe.ssl.earliest_cert_expiry",
        "{timestamp}",
        "Earliest expiry of the certificates the server sent, in seconds since the epoch",
    ),
    MetricSpec.gauge(
        "probe.ssl.last_chain_expiry_timestamp",
        "s",
        "Earliest expiry in the verified certificate chain, in seconds since the epoch",
    ),
    MetricSpec.gauge("probe.tls.version_info", "", "The negotiated TLS version", "version"),
)


@dataclass(frozen=True, slots=True)
class Certificate:
    """The parts of a certificate that dashboards, alerts and pins look at."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    serial: str
    fingerprint_sha256: str
    not_before: float
    not_after: float


@lru_cache(maxsize=256)
def describe(der: bytes) -> Certificate:
    """Read a DER certificate; ``ValueError`` when it cannot be parsed."""
    cert = x509.load_der_x509_certificate(der)
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            [*names.get_values_for_type(x509.DNSName)]
            + [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
        )
    except x509.ExtensionNotFound:
        sans = ()
    return Certificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans,
        serial=format(cert.serial_number, "x"),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def tls_values(info: TLSInfo) -> tuple[dict[str, float], tuple[Sample, ...]]:
    """The shared TLS metrics of one handshake."""
    values: dict[str, float] = {}
    if info.earliest_expiry is not None:
        values["probe.ssl.earliest_cert_expiry"] = info.earliest_expiry
    if info.last_chain_expiry is not None:
        values["probe.ssl.last_chain_expiry_timestamp"] = info.last_chain_expiry
    return values, (Sample("probe.tls.version_info", 1.0, {"version": info.version}, series="tls"),)
