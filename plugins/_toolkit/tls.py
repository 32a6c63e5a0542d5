"""TLS metrics shared by the probes that complete a handshake (``http``, ``tls``, ``tcp``, ``grpc``),
under blackbox_exporter's names, and what they read off a certificate.

``tls_values`` turns a handshake (``TLSInfo``) into the same figures and samples for every probe;
``socket_tls_info`` reads one from an ``ssl.SSLObject`` of a probe's own socket, keeping the
verified chain only when the handshake did verify (``probe_ssl_last_chain_expiry_timestamp_seconds``
is then absent in ``insecure`` mode, never a value that looks verified).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, replace
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from agent.sdk import MetricSpec, ProbeContext, Sample, TLSInfo

__all__ = [
    "TLS_METRICS",
    "Certificate",
    "chain_info",
    "describe",
    "handshake_values",
    "socket_tls_info",
    "tls_values",
]

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
    MetricSpec.gauge(
        "probe.ssl.last_chain_info",
        "",
        "The leaf certificate the server sent",
        "fingerprint_sha256",
        "subject",
        "issuer",
        "subjectalternative",
        "serialnumber",
    ),
)


@dataclass(frozen=True, slots=True)
class Certificate:
    """The parts of a certificate that dashboards, alerts and pins look at."""

    subject: str
    issuer: str
    sans: tuple[str, ...]
    """Every subjectAltName: DNS names, then IP addresses."""
    dns_names: tuple[str, ...]
    """The DNS names among them: what blackbox_exporter's ``subjectalternative`` label lists."""
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
        dns_names = tuple(names.get_values_for_type(x509.DNSName))
        sans = dns_names + tuple(str(ip) for ip in names.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        sans = dns_names = ()
    return Certificate(
        subject=cert.subject.rfc4514_string(),
        issuer=cert.issuer.rfc4514_string(),
        sans=sans,
        dns_names=dns_names,
        serial=format(cert.serial_number, "x"),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_before=cert.not_valid_before_utc.timestamp(),
        not_after=cert.not_valid_after_utc.timestamp(),
    )


def chain_info(leaf: Certificate) -> Sample:
    """``probe.ssl.last_chain_info`` of the leaf the server sent, labelled as blackbox_exporter:
    ``subjectalternative`` is the DNS names (Go's ``DNSNames``, no IP addresses), and
    ``serialnumber`` (hex), which blackbox 0.23 does not have yet and later versions add."""
    labels = {
        "fingerprint_sha256": leaf.fingerprint_sha256,
        "subject": leaf.subject,
        "issuer": leaf.issuer,
        "subjectalternative": ",".join(leaf.dns_names),
        "serialnumber": leaf.serial,
    }
    return Sample("probe.ssl.last_chain_info", 1.0, labels, series="leaf")


def tls_values(info: TLSInfo) -> tuple[dict[str, float], tuple[Sample, ...]]:
    """The shared TLS metrics of one handshake.

    ``probe.ssl.last_chain_expiry_timestamp`` only when a chain was verified: blackbox_exporter
    0.23 reports Go's zero time (-62135596800) there in ``insecure_skip_verify`` mode; this leaves
    the series out instead, so no alert on it can read an unverified chain as a verified one.
    """
    values: dict[str, float] = {}
    if info.earliest_expiry is not None:
        values["probe.ssl.earliest_cert_expiry"] = info.earliest_expiry
    if info.last_chain_expiry is not None:
        values["probe.ssl.last_chain_expiry_timestamp"] = info.last_chain_expiry
    samples = [Sample("probe.tls.version_info", 1.0, {"version": info.version}, series="tls")]
    if info.sent_chain:
        try:
            samples.append(chain_info(describe(info.sent_chain[0])))
        except ValueError:
            pass  # a leaf that does not parse has no labels to give
    return values, tuple(samples)


def socket_tls_info(ctx: ProbeContext, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
    """What the handshake on a probe's own socket showed (``ctx.tls_info``), with no verified chain
    unless the context verified the server.

    OpenSSL builds a chain even when told not to verify (``CERT_NONE``, the ``insecure`` option)
    and hands it out as the "verified" chain; a self-signed leaf would then look verified.
    """
    info = ctx.tls_info(ssl_object)
    if ssl_object.context.verify_mode != ssl.CERT_REQUIRED and info.verified_chain:
        return replace(info, verified_chain=())
    return info


def handshake_values(
    ctx: ProbeContext, ssl_object: ssl.SSLObject | ssl.SSLSocket | None
) -> tuple[dict[str, float], tuple[Sample, ...]]:
    """The shared TLS metrics of the handshake on a probe's own socket (none without one): for the
    probes that start TLS themselves (``tcp``, its ``starttls`` turn, ``grpc``)."""
    if ssl_object is None:
        return {}, ()
    return tls_values(socket_tls_info(ctx, ssl_object))
