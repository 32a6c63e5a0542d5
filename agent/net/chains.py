"""The chain a verified handshake stands on, rebuilt from the certificates the server sent.

libcurl verifies the server (OpenSSL, with the check's CA file or the system's bundle) but pycurl
hands back only the certificates the server *sent* (``CURLINFO_CERTINFO``), not the chain OpenSSL
built. ``TLSInfo.verified_chain`` (and so ``probe_ssl_last_chain_expiry_timestamp``, the earliest
``notAfter`` of that chain) needs the chain up to the trusted root: it is built again here with
``cryptography``'s path builder (``x509.verification``) over the same trust store, once per chain
(cached by the chain's bytes, the CA file and the name).

OpenSSL has judged the chain already; this only finds it. So the path builder's extension policies
are relaxed to what building a path needs (a CA has basicConstraints, the leaf a subjectAltName
that names the server): the web-PKI defaults would refuse, for one, the critical subjectAltName that
private CAs such as trustme's write. A chain that still cannot be built (a leaf with a common name
and no subjectAltName) gives an empty verified chain: its expiry is then unknown rather than wrong.
"""

from __future__ import annotations

import ipaddress
import ssl
from functools import lru_cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

__all__ = ["build_verified_chain"]

_SYSTEM_CA = ssl.get_default_verify_paths()
_CA_POLICY = ExtensionPolicy.permit_all().require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
_LEAF_POLICY = ExtensionPolicy.permit_all().require_present(
    x509.SubjectAlternativeName, Criticality.AGNOSTIC, None
)


def build_verified_chain(sent: tuple[bytes, ...], ca_file: Path | None, name: str) -> tuple[bytes, ...]:
    """The chain (DER, leaf to root) from ``sent`` (leaf first) to a root of ``ca_file`` or of the
    system's bundle, for the server ``name`` (a host name or an IP address); empty if none."""
    if not sent or not name:
        return ()
    return _build(sent, str(ca_file) if ca_file else None, name)


@lru_cache(maxsize=1024)
def _build(sent: tuple[bytes, ...], ca_file: str | None, name: str) -> tuple[bytes, ...]:
    store = _store(ca_file)
    if store is None:
        return ()
    try:
        leaf, *intermediates = (x509.load_der_x509_certificate(der) for der in sent)
        subject: x509.DNSName | x509.IPAddress
        try:
            subject = x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
        except ValueError:
            subject = x509.DNSName(name.rstrip("."))
        builder = (
            PolicyBuilder().store(store).extension_policies(ca_policy=_CA_POLICY, ee_policy=_LEAF_POLICY)
        )
        verifier = builder.build_server_verifier(subject)
        chain = verifier.verify(leaf, intermediates)
    except (VerificationError, ValueError):
        return ()
    return tuple(cert.public_bytes(Encoding.DER) for cert in chain)


@lru_cache(maxsize=16)
def _store(ca_file: str | None) -> Store | None:
    """The trust store of ``ca_file``, or of the system's bundle (the one libcurl is given)."""
    files: list[Path] = []
    if ca_file:
        files.append(Path(ca_file))
    elif _SYSTEM_CA.cafile:
        files.append(Path(_SYSTEM_CA.cafile))
    elif _SYSTEM_CA.capath:
        files.extend(path for path in sorted(Path(_SYSTEM_CA.capath).iterdir()) if path.is_file())
    certs: list[x509.Certificate] = []
    for path in files:
        try:
            certs.extend(x509.load_pem_x509_certificates(path.read_bytes()))
        except (OSError, ValueError):
            continue
    return Store(certs) if certs else None
