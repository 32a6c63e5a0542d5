"""What a probe sees of HTTP and TLS: the data, and the protocol of the client ``ctx.http()`` gives.

The data (``TLSOptions``, ``TLSInfo``, ``HttpExchange``, ``HttpFailure``) and the pure helper
``tls_context`` (options → ``ssl.SSLContext``, the standard library only) are defined here; the
agent's client, ``agent/net/http.py``, implements ``HttpClient`` and ``HttpClientFactory`` and
imports the data from here. Reading a finished handshake (``tls_info``) reaches into ``ssl``'s
private parts through the agent's adapter, so a probe asks its context: ``ctx.tls_info(ssl_object)``.
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol

from cryptography import x509
from multidict import CIMultiDictProxy
from pydantic import BaseModel, ConfigDict, model_validator
from yarl import URL

from agent.sdk.reasons import Reason

if TYPE_CHECKING:
    from agent.sdk.probe import ProbeContext

__all__ = [
    "HttpClient",
    "HttpClientFactory",
    "HttpExchange",
    "HttpFailure",
    "TLSInfo",
    "TLSOptions",
    "tls_context",
]


class TLSOptions(BaseModel):
    """TLS settings of a check. Verification is on unless ``insecure`` says otherwise."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    insecure: bool = False
    min_version: Literal["1.0", "1.1", "1.2", "1.3"] | None = None

    @model_validator(mode="after")
    def _files(self) -> TLSOptions:
        if self.key_file and not self.cert_file:
            raise ValueError("'key_file' needs 'cert_file'")
        for name in ("ca_file", "cert_file", "key_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {str(path)!r} does not exist or is not a file")
        if self.ca_file or self.cert_file:
            # Loaded once here so that a bad file is a configuration error; without files there is
            # nothing to check, and loading the system's CA bundle would cost every check ~50 ms.
            try:
                tls_context(self)
            except (ssl.SSLError, OSError) as exc:
                raise ValueError(f"the TLS files cannot be loaded: {exc}") from None
        return self


@lru_cache(maxsize=256)
def tls_context(options: TLSOptions) -> ssl.SSLContext:
    """The client TLS context for ``options``; the same options share one context."""
    context = ssl.create_default_context(cafile=str(options.ca_file) if options.ca_file else None)
    if options.cert_file:
        context.load_cert_chain(str(options.cert_file), str(options.key_file) if options.key_file else None)
    if options.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if options.min_version in ("1.0", "1.1"):
        # Asked for on purpose: Python's deprecation of the old versions is not the user's to see,
        # and OpenSSL 3 refuses their SHA-1 signatures above security level 0 (as the HTTP client).
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = (
                ssl.TLSVersion.TLSv1 if options.min_version == "1.0" else ssl.TLSVersion.TLSv1_1
            )
    elif options.min_version:
        context.minimum_version = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}[
            options.min_version
        ]
    return context


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What a TLS handshake showed."""

    version: str
    """``TLS 1.3``, ``TLS 1.2``, ..."""
    cipher: str
    sent_chain: tuple[bytes, ...]
    """The certificates the server sent (DER), leaf first, whether or not they were verified."""
    verified_chain: tuple[bytes, ...]
    """The chain the client verified (DER), leaf to root; empty when nothing was verified."""

    @property
    def earliest_expiry(self) -> float | None:
        """Earliest ``notAfter`` among the certificates the server sent (epoch seconds)."""
        return _earliest_expiry(self.sent_chain)

    @property
    def last_chain_expiry(self) -> float | None:
        """Earliest ``notAfter`` in the chain the client verified (epoch seconds)."""
        return _earliest_expiry(self.verified_chain)


@dataclass(slots=True)
class HttpExchange:
    """A finished request: the final response and the sum of every hop's phases."""

    method: str
    url: URL
    status: int
    headers: CIMultiDictProxy[str]
    """Every header of the final response, a name that came more than once kept each time."""
    body: bytes
    truncated: bool
    http_version: str
    """``1.0``, ``1.1``, ``2`` or ``3``."""
    redirects: int
    phases: dict[str, float]
    duration: float
    tls: TLSInfo | None = None
    links: dict[str, str] = field(default_factory=dict)
    """``Link`` header targets by relation (``rel="deprecation"`` → URL)."""
    address: str = ""
    """The IP address the first hop connected to, the target's (libcurl's primary IP; through a
    proxy, the proxy's)."""
    lookup_time: float = 0.0
    """Seconds spent resolving the first hop's host name (0 for an IP literal)."""

    @property
    def content_length(self) -> int:
        """The body's length as the ``Content-Length`` header declares it, as Go's client (and so
        blackbox_exporter) reads it: -1 when there is none or the body is chunked, 0 for a status
        that has no body (1xx, 204, 304)."""
        if self.status < 200 or self.status in (204, 304):
            return 0
        if "Transfer-Encoding" in self.headers:
            return -1
        declared = self.headers.get("Content-Length", "").strip()
        return int(declared) if declared.isdigit() else -1

    @property
    def body_length(self) -> int:
        """Bytes of the body read, decoded from its Content-Encoding (up to the body cap)."""
        return len(self.body)


class HttpFailure(Exception):
    """A request that produced no usable response; carries its reason and the phases so far.

    ``response`` is the last response received when there was one that could not be used: the
    redirect that was not followed once ``max_redirects`` were. ``address`` is the IP address
    the first hop tried (a refused connection, a failed handshake), "" when none is known (the name
    did not resolve, a proxy connected in its place).
    """

    def __init__(
        self,
        reason: Reason,
        message: str,
        phases: Mapping[str, float] | None = None,
        *,
        response: HttpExchange | None = None,
        address: str = "",
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.phases = dict(phases or {})
        self.response = response
        self.address = address


class HttpClient(Protocol):
    """An HTTP client for one run; use as ``async with ctx.http() as client``.

    Its requests are timed by phase, traced as client spans with ``traceparent``, capped in body
    size, and their failures arrive as :class:`HttpFailure`."""

    async def __aenter__(self) -> HttpClient: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | list[str]] | None = None,
        data: bytes | str | None = None,
        follow_redirects: bool = True,
        max_redirects: int = 10,
        max_body: int = 1 << 20,
        proxy_url: str | None = None,
        on_cut: Callable[[str, float], None] | None = None,
    ) -> HttpExchange:
        """Send a request, following redirects, and read at most ``max_body`` bytes of the body.

        ``proxy_url`` (``http://`` or ``https://``, credentials in it allowed and redacted) sends
        this request through a proxy, CONNECT for https targets, instead of the client's own.
        ``on_cut`` is called when the request is cancelled (the run's timeout) on its first hop,
        with what it had found: the address connected to or tried ("" if none) and the seconds
        of its name lookup.
        Raises :class:`HttpFailure` when no response could be had; a response of any status,
        even with a cut body, is an :class:`HttpExchange`.
        """
        ...


class HttpClientFactory(Protocol):
    """Makes the HTTP clients of probe runs (``ProbeContext.http``) and reads TLS handshakes
    (``ProbeContext.tls_info``); the agent's is ``agent/net/http.py``."""

    def client(
        self,
        ctx: ProbeContext,
        *,
        tls: TLSOptions | None,
        fresh: bool,
        ip_family: str,
        proxy_url: str | None = None,
    ) -> HttpClient:
        """A client for one run of ``ctx``'s check; ``proxy_url`` sends its requests through a proxy."""
        ...

    def tls_info(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
        """Version, cipher and certificate chains of a finished handshake."""
        ...


@lru_cache(maxsize=1024)
def _earliest_expiry(chain: tuple[bytes, ...]) -> float | None:
    expiries = []
    for der in chain:
        try:
            expiries.append(x509.load_der_x509_certificate(der).not_valid_after_utc.timestamp())
        except ValueError:
            continue
    return min(expiries) if expiries else None
