"""The HTTP client the agent hands to probes: fresh connections, timed phases, capped bodies.

Each request is one or more hops (redirects are followed here, not inside aiohttp, so that every
hop gets its own client span, its own phases and a loop check). Per hop the phases are cut at
consecutive marks, so that they add up to the hop's total exactly::

    start ─resolve─► resolved ─connect─► tcp up ─tls─► handshake ─processing─► headers ─transfer─► end

A phase that did not happen on a hop (no DNS for an IP literal, no TLS for http://) is zero.
What a probe sees of it (``HttpExchange``, ``HttpFailure``, ``TLSOptions``, ``TLSInfo``, the
``HttpClient`` protocol) is defined in ``agent/sdk/http.py``. Library exceptions are translated
to a ``Reason`` by :mod:`agent.sdk.failures`.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace, TracebackType
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver
from multidict import CIMultiDict
from yarl import URL

from agent.net._aiohttp import TimedConnector
from agent.net._ssl import sent_chain, verified_chain
from agent.sdk.assertions import clip
from agent.sdk.failures import cancellation, map_exception
from agent.sdk.http import HttpExchange, HttpFailure, TLSInfo, TLSOptions, tls_context
from agent.sdk.reasons import Reason
from agent.sdk.urls import redact_url

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.sdk.probe import Clock, ProbeContext

__all__ = ["HttpClient", "HttpClientFactory", "RequestRecord", "tls_info"]

PHASES = ("resolve", "connect", "tls", "processing", "transfer")
_REDIRECTS = {301, 302, 303, 307, 308}
_MESSAGE_LIMIT = 500
_TLS_VERSIONS = {
    "TLSv1": "TLS 1.0",
    "TLSv1.1": "TLS 1.1",
    "TLSv1.2": "TLS 1.2",
    "TLSv1.3": "TLS 1.3",
}


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One physical request, for the ``http.client.request.duration`` metric."""

    method: str
    scheme: str
    host: str
    port: int
    duration: float
    status: int | None
    error_type: str | None
    protocol_version: str | None


@dataclass(slots=True)
class _HopMarks:
    """Times (and the handshake) of one hop, written by the trace hooks and the connector."""

    start: float
    resolved: float | None = None
    connect_started: float | None = None
    tcp_connected: float | None = None
    connected: float | None = None
    tls: TLSInfo | None = None


_current_marks: contextvars.ContextVar[_HopMarks | None] = contextvars.ContextVar("vantage_hop", default=None)


def _note_tcp_up(clock: Clock) -> None:
    # The connector calls this and _note_handshake in the task of the request the connection is
    # for, so the hop's marks are in reach through the context even though the session is shared.
    marks = _current_marks.get()
    if marks is not None:
        marks.tcp_connected = clock.monotonic()


def _note_handshake(transport: asyncio.Transport) -> None:
    # Read the handshake now: a small response releases its connection before the caller looks.
    marks = _current_marks.get()
    ssl_object = transport.get_extra_info("ssl_object")
    if marks is not None and ssl_object is not None:
        marks.tls = tls_info(ssl_object)


def _trace_config(clock: Clock) -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()

    async def on_dns_end(_: Any, ctx: SimpleNamespace, __: Any) -> None:
        ctx.trace_request_ctx.resolved = clock.monotonic()

    async def on_create_start(_: Any, ctx: SimpleNamespace, __: Any) -> None:
        ctx.trace_request_ctx.connect_started = clock.monotonic()

    async def on_create_end(_: Any, ctx: SimpleNamespace, __: Any) -> None:
        ctx.trace_request_ctx.connected = clock.monotonic()

    config.on_dns_resolvehost_end.append(on_dns_end)
    config.on_connection_create_start.append(on_create_start)
    config.on_connection_create_end.append(on_create_end)
    return config


class HttpClientFactory:
    """Makes the HTTP clients of probe runs and owns their sessions (the SDK's ``HttpClientFactory``).

    Fresh-connection clients share one session per TLS setting and address family, which closes
    every connection after its request and caches no DNS: creating a session and connector per
    run cost more CPU than the request itself. ``fresh=False`` checks get a pooled session each.
    """

    def __init__(
        self,
        *,
        user_agent: str,
        resolver: Callable[[], AbstractResolver] | None = None,
    ) -> None:
        self.user_agent = user_agent
        self._resolver = resolver
        self._sessions: dict[tuple[str | None, TLSOptions, str], aiohttp.ClientSession] = {}

    def client(self, ctx: ProbeContext, *, tls: TLSOptions | None, fresh: bool, ip_family: str) -> HttpClient:
        return HttpClient(self, ctx, tls or TLSOptions(), fresh=fresh, ip_family=ip_family)

    def _session(
        self, ctx: ProbeContext, tls: TLSOptions, fresh: bool, ip_family: str
    ) -> aiohttp.ClientSession:
        key = (None if fresh else ctx.check.name, tls, ip_family)
        if (session := self._sessions.get(key)) is not None and not session.closed:
            return session
        clock = ctx.clock
        connector = TimedConnector(
            on_tcp_up=lambda: _note_tcp_up(clock),
            on_connected=_note_handshake,
            ssl=tls_context(tls),
            family={"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}.get(ip_family, 0),
            use_dns_cache=not fresh,
            force_close=fresh,
            limit=0 if fresh else 10,
            resolver=self._resolver() if self._resolver else None,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            trace_configs=[_trace_config(ctx.clock)],
            headers={"User-Agent": self.user_agent},
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=True,
        )
        self._sessions[key] = session
        return session

    def tls_info(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
        """Version, cipher and certificate chains of a finished handshake (``ctx.tls_info``)."""
        return tls_info(ssl_object)

    async def aclose(self) -> None:
        """Close every session."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


class HttpClient:
    """An HTTP client for one run (the SDK's ``HttpClient``); use as ``async with ctx.http() as client``."""

    def __init__(
        self,
        factory: HttpClientFactory,
        ctx: ProbeContext,
        tls: TLSOptions,
        *,
        fresh: bool,
        ip_family: str,
    ) -> None:
        self._ctx = ctx
        self._tls = tls
        self._session = factory._session(ctx, tls, fresh, ip_family)

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Sessions belong to the factory; a fresh connection was closed after its request.
        return None

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
    ) -> HttpExchange:
        """Send a request, following redirects, and read at most ``max_body`` bytes of the body.

        Raises :class:`HttpFailure` when no response could be had; a response of any status,
        even with a cut body, is an :class:`HttpExchange`.
        """
        ctx, clock = self._ctx, self._ctx.clock
        method = method.upper()
        current = URL(url)
        if params:
            current = current.update_query(
                [(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])]
            )
        sent_headers = CIMultiDict(headers or {})
        body: bytes | None = data.encode() if isinstance(data, str) else data
        phases = dict.fromkeys(PHASES, 0.0)
        started = clock.monotonic()
        visited: list[URL] = []
        while True:
            visited.append(current)
            response, hop_body, truncated, tls_info = await self._hop(
                method, current, sent_headers, body, phases, max_body
            )
            location = response.headers.get("Location")
            if not (follow_redirects and response.status in _REDIRECTS and location):
                return HttpExchange(
                    method=method,
                    url=current,
                    status=response.status,
                    headers=response.headers,
                    body=hop_body,
                    truncated=truncated,
                    http_version=_version(response),
                    redirects=len(visited) - 1,
                    phases=phases,
                    duration=clock.monotonic() - started,
                    tls=tls_info,
                    links=_links(response),
                )
            if len(visited) > max_redirects:
                loop = " → ".join(redact_url(str(u), ctx.redact) for u in visited[-3:])
                raise HttpFailure(
                    Reason.REDIRECTS, f"gave up after {max_redirects} redirects (… {loop})", phases
                )
            try:
                target = current.join(URL(location))
            except ValueError:
                raise HttpFailure(Reason.PROTOCOL, "redirect to an invalid Location", phases) from None
            if target.scheme not in ("http", "https"):
                raise HttpFailure(
                    Reason.PROTOCOL, f"redirect to unsupported scheme {target.scheme!r}", phases
                )
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = ("HEAD" if method == "HEAD" else "GET"), None
                for name in ("Content-Type", "Content-Length"):
                    sent_headers.popall(name, None)
            if target.origin() != current.origin():
                # Credentials stay with the origin they were meant for, as browsers do.
                for name in ("Authorization", "Cookie", "Proxy-Authorization"):
                    sent_headers.popall(name, None)
            current = target

    async def _hop(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        body: bytes | None,
        phases: dict[str, float],
        max_body: int,
    ) -> tuple[aiohttp.ClientResponse, bytes, bool, TLSInfo | None]:
        ctx, clock = self._ctx, self._ctx.clock
        port = url.port or (443 if url.scheme == "https" else 80)
        span = ctx.tracer.start_span(
            method,
            client=True,
            attributes={
                "http.request.method": method,
                "url.full": redact_url(str(url), ctx.redact),
                "url.scheme": url.scheme,
                "server.address": url.host or "",
                "server.port": port,
            },
        )
        hop_headers = CIMultiDict(headers)
        span.inject(hop_headers)
        marks = _HopMarks(start=clock.monotonic())
        token = _current_marks.set(marks)
        status: int | None = None
        version: str | None = None
        error_type: str | None = None
        ctx.stage = f"waiting for the response of {method} {url.host}"
        try:
            try:
                response = await self._session.request(
                    method,
                    url,
                    headers=hop_headers,
                    data=body,
                    allow_redirects=False,
                    trace_request_ctx=marks,
                    ssl=tls_context(self._tls),
                    server_hostname=self._tls.server_name,
                )
            except BaseException as exc:
                self._close_phases(
                    marks,
                    url.scheme == "https",
                    None,
                    clock.monotonic(),
                    phases,
                )
                if isinstance(exc, Exception):
                    reason, message = map_exception(exc)
                    error_type = reason.value
                    # Redacted, then cut: the library's words may quote a whole line of the target's.
                    message = clip(message, _MESSAGE_LIMIT, ctx.redact)
                    span.fail(reason.value, message)
                    raise HttpFailure(reason, message, phases) from exc
                raise
            headers_at = clock.monotonic()
            status = response.status
            version = _version(response)
            tls_info = marks.tls if url.scheme == "https" else None
            ctx.stage = f"reading the body of {method} {url.host}"
            try:
                chunks, size, truncated = [], 0, False
                async for chunk in response.content.iter_chunked(64 * 1024):
                    room = max_body - size
                    if len(chunk) > room:
                        chunks.append(chunk[:room])
                        truncated = True
                        break
                    chunks.append(chunk)
                    size += len(chunk)
            except Exception as exc:
                self._close_phases(
                    marks,
                    url.scheme == "https",
                    headers_at,
                    clock.monotonic(),
                    phases,
                )
                reason, message = map_exception(exc)
                error_type = reason.value
                message = clip(message, _MESSAGE_LIMIT, ctx.redact)
                span.fail(reason.value, message)
                raise HttpFailure(reason, message, phases) from exc
            finally:
                response.release() if not truncated else response.close()
            end = clock.monotonic()
            hop_phases = self._close_phases(marks, url.scheme == "https", headers_at, end, phases)
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("network.protocol.version", version)
            for name, seconds in hop_phases.items():
                span.set_attribute(f"vantage.http.phase.{name}", round(seconds, 6))
            if truncated:
                span.add_event("body_truncated", {"vantage.http.body.read": max_body})
            if status >= 400:
                error_type = str(status)
                span.fail(str(status), f"HTTP {status}")
            return response, b"".join(chunks), truncated, tls_info
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: the run's timeout, or the agent stopping
                error_type, message = cancellation()
                span.fail(error_type, message)
            raise
        finally:
            _current_marks.reset(token)
            end_time = clock.monotonic()
            ctx.requests.append(
                RequestRecord(
                    method,
                    url.scheme,
                    url.host or "",
                    port,
                    end_time - marks.start,
                    status,
                    error_type,
                    version,
                )
            )
            span.end()

    @staticmethod
    def _close_phases(
        marks: _HopMarks,
        tls: bool,
        headers_at: float | None,
        end: float,
        total: dict[str, float],
    ) -> dict[str, float]:
        """Cut one hop into consecutive phases and add them to ``total``."""
        resolved = marks.resolved or marks.connect_started or marks.start
        if tls:
            connected = min(marks.tcp_connected or marks.connected or resolved, end)
        else:
            connected = min(marks.connected or marks.tcp_connected or resolved, end)
        handshake = min(marks.connected or connected, end) if tls else connected
        headers = headers_at if headers_at is not None else end
        cuts = [marks.start, min(resolved, end), connected, handshake, max(headers, handshake), end]
        hop = {name: max(0.0, cuts[i + 1] - cuts[i]) for i, name in enumerate(PHASES)}
        for name, seconds in hop.items():
            total[name] += seconds
        return hop


def _links(response: aiohttp.ClientResponse) -> dict[str, str]:
    out: dict[str, str] = {}
    for rels, link in response.links.items():
        for rel in str(rels).lower().split():  # rel="deprecation alternate" names two relations
            out.setdefault(rel, str(link.get("url", "")))
    return out


def _version(response: aiohttp.ClientResponse) -> str:
    version = response.version
    return f"{version.major}.{version.minor}" if version is not None else "1.1"


def tls_info(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
    """Version, cipher and certificate chains of a finished handshake."""
    version = _TLS_VERSIONS.get(ssl_object.version() or "", ssl_object.version() or "unknown")
    cipher = (ssl_object.cipher() or ("",))[0]
    return TLSInfo(
        version=version,
        cipher=cipher,
        sent_chain=sent_chain(ssl_object),
        verified_chain=verified_chain(ssl_object),
    )
