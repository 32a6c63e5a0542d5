"""The adapter to the private parts of Python's ``ssl`` module: the one module that reaches into them.

The certificate chains of a handshake (what the server sent, and what the client verified) are
public only from Python 3.13 (``SSLObject.get_unverified_chain`` and ``get_verified_chain``). On
3.11 and 3.12 the same two methods live on the private ``_sslobj`` (the ``_ssl._SSLSocket`` that
an ``SSLObject`` or ``SSLSocket`` wraps), and give ``_ssl.Certificate`` objects, turned into DER
with the private constant ``_ssl.ENCODING_DER``. Without either, only the leaf is known.

``tests/test_adapters.py`` fails, naming the attribute, on a Python that moves or changes them.
"""

from __future__ import annotations

import ssl
from typing import Any

__all__ = ["sent_chain", "verified_chain"]


def sent_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """The certificates the server sent (DER), leaf first, whether or not they were verified."""
    return _chain(ssl_object, "get_unverified_chain")


def verified_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[bytes, ...]:
    """The chain the client verified (DER), leaf to root; empty when nothing was verified."""
    return _chain(ssl_object, "get_verified_chain")


def _chain(ssl_object: Any, method: str) -> tuple[bytes, ...]:
    # Public on Python 3.13+; on 3.10-3.12 the same method lives on the private _sslobj.
    getter = getattr(ssl_object, method, None) or getattr(getattr(ssl_object, "_sslobj", None), method, None)
    if getter is None:
        der = ssl_object.getpeercert(binary_form=True)
        return (der,) if der else ()
    try:
        certs = getter() or []
    except (ssl.SSLError, ValueError):
        return ()
    return tuple(
        c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        for c in certs
    )
