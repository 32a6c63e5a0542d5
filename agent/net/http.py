"""The HTTP client the agent hands to probes: libcurl underneath, timed phases, capped bodies.

Each request is one or more hops (redirects are followed here, not inside libcurl, so that every
hop gets its own client span, its own phases, its own ``RequestRecord`` and the agent's rules on
credentials). One hop is one ``CurlMulti.perform`` (:mod:`agent.net.curl`), whose phases are
libcurl's own timings, cut at consecutive marks so that they add up to the hop's total::

    start ─resolve─► looked up ─connect─► TCP up ─tls─► handshake ─processing─► first byte ─transfer─► end

A phase that did not happen on a hop (no lookup for an IP literal, no TLS for http://, nothing
but processing and transfer on a reused connection) is zero; a request's phases are the sums over
its hops. What a probe sees of it (``HttpExchange``, ``HttpFailure``, ``TLSOptions``, ``TLSInfo``,
the ``HttpClient`` protocol) is defined in ``agent/sdk/http.py``; libcurl's errors are translated
to a ``Reason`` by :func:`agent.sdk.failures.map_curl_error`.

Fresh-connection requests (the default) share the event loop's ``CurlMulti`` and keep nothing;
``fresh=False`` clients share the factory's own ``CurlMulti`` per loop, whose connection and DNS
caches are libcurl's, closed by ``aclose``.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import ipaddress
import re
import ssl
import urllib.request
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from agent.net._ssl import sent_chain, verified_chain
from agent.net.chains import build_verified_chain
from agent.net.curl import CurlMulti, CurlRequest, CurlResult
from agent.sdk.assertions import clip
from agent.sdk.durations import plural
from agent.sdk.failures import cancellation
from agent.sdk.http import HttpExchange, HttpFailure, TLSInfo, TLSOptions
from agent.sdk.reasons import Reason
from agent.sdk.urls import redact_url

if TYPE_CHECKING:
    from agent.sdk.probe import ProbeContext

__all__ = ["HttpClient", "HttpClientFactory", "RequestRecord", "tls_info"]

PHASES = ("resolve", "connect", "tls", "processing", "transfer")
_PHASE_ATTRIBUTES = {name: f"vantage.http.phase.{name}" for name in PHASES}
_LINE_BREAK = re.compile("[\r\n\0]")
_REDIRECTS = {301, 302, 303, 307, 308}
_MESSAGE_LIMIT = 500
_TLS_VERSIONS = {
    "TLSv1": "TLS 1.0",
    "TLSv1.0": "TLS 1.0",
    "TLSv1.1": "TLS 1.1",
    "TLSv1.2": "TLS 1.2",
    "TLSv1.3": "TLS 1.3",
}
_NO_TLS = TLSOptions()  # frozen: one instance serves every client given none
_KEPT_CONNECTIONS = 256
"""Idle connections the ``fresh=False`` clients keep in all (libcurl closes the oldest beyond)."""
_KEPT_HANDSHAKES = 1024
"""How many kept-alive connections' handshakes are remembered, for the hops that reuse them."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One physical request, for the ``http.client.request.duration`` metric (and the status
    page's debug view, which shows the response headers, redacted)."""

    method: str
    scheme: str
    host: str
    port: int
    duration: float
    status: int | None
    error_type: str | None
    protocol_version: str | None
    response_headers: tuple[tuple[str, str], ...] = ()


class HttpClientFactory:
    """Makes the HTTP clients of probe runs (the SDK's ``HttpClientFactory``).

    ``resolve`` maps names to addresses for tests (``{"vendor.test": "127.0.0.1"}``): with it, a
    name it does not hold fails as a DNS failure and no query is ever sent; without it, libcurl
    looks names up with the system's resolver.
    """

    def __init__(
        self,
        *,
        user_agent: str,
        resolve: Mapping[str, str] | None = None,
    ) -> None:
        self.user_agent = user_agent
        self.resolve: dict[str, str] | None = dict(resolve) if resolve is not None else None
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CurlMulti] = (
            weakref.WeakKeyDictionary()
        )
        # A reused connection makes no handshake: its hops report the one that opened it, found
        # by the connection's addresses and ports.
        self._handshakes: OrderedDict[tuple[str, int, str, int], TLSInfo] = OrderedDict()

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
        return HttpClient(self, ctx, tls or _NO_TLS, fresh=fresh, ip_family=ip_family, proxy_url=proxy_url)

    def tls_info(self, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> TLSInfo:
        """Version, cipher and certificate chains of a finished handshake (``ctx.tls_info``)."""
        return tls_info(ssl_object)

    async def aclose(self) -> None:
        """Close every kept-alive connection."""
        pools = list(self._pools.values())
        self._pools = weakref.WeakKeyDictionary()
        self._handshakes.clear()
        for multi in pools:
            multi.close()

    def _multi(self, pooled: bool) -> CurlMulti:
        if not pooled:
            return CurlMulti.of_running_loop()
        loop = asyncio.get_running_loop()
        multi = self._pools.get(loop)
        if multi is None:
            multi = self._pools[loop] = CurlMulti(loop, max_connections=_KEPT_CONNECTIONS)
        return multi

    def _remember(self, connection: tuple[str, int, str, int], info: TLSInfo) -> None:
        self._handshakes[connection] = info
        self._handshakes.move_to_end(connection)
        while len(self._handshakes) > _KEPT_HANDSHAKES:
            self._handshakes.popitem(last=False)

    def _recall(self, connection: tuple[str, int, str, int]) -> TLSInfo | None:
        return self._handshakes.get(connection)


class _CookieJar:
    """The cookies of one request's redirect chain, as blackbox_exporter keeps a jar per probe:
    a cookie set on a redirect is sent on to the target when its domain and path rules allow
    (the standard library's ``http.cookiejar``, made only once a response sets one)."""

    __slots__ = ("_jar",)

    def __init__(self) -> None:
        self._jar: http.cookiejar.CookieJar | None = None

    def take(self, url: URL, headers: CIMultiDictProxy[str]) -> None:
        if "Set-Cookie" not in headers and "Set-Cookie2" not in headers:
            return
        if self._jar is None:
            self._jar = http.cookiejar.CookieJar()
        self._jar.extract_cookies(_CookieResponse(headers), urllib.request.Request(str(url)))  # type: ignore[arg-type]

    def headers_for(self, url: URL, headers: CIMultiDict[str]) -> CIMultiDict[str]:
        """``headers``, with the jar's cookies for ``url`` added to the request's own."""
        if self._jar is None or not len(self._jar):
            return headers
        request = urllib.request.Request(str(url))
        self._jar.add_cookie_header(request)
        found = request.get_header("Cookie")
        if not found:
            return headers
        merged = CIMultiDict(headers)
        own = merged.popall("Cookie", [])
        merged["Cookie"] = "; ".join([*own, found])
        return merged


class _CookieResponse:
    """What ``http.cookiejar`` reads of a response: its headers, through ``info().get_all``."""

    __slots__ = ("_headers",)

    def __init__(self, headers: CIMultiDictProxy[str]) -> None:
        self._headers = headers

    def info(self) -> _CookieResponse:
        return self

    def get_all(self, name: str, default: list[str] | None = None) -> list[str] | None:
        return self._headers.getall(name, default)


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
        proxy_url: str | None = None,
    ) -> None:
        self._factory = factory
        self._ctx = ctx
        self._tls = tls
        self._pooled = not fresh
        self._ip_family = ip_family
        self._proxy_url = proxy_url

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Kept-alive connections belong to the factory; a fresh one was closed after its request.
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
        proxy_url: str | None = None,
    ) -> HttpExchange:
        """Send a request, following redirects, and read at most ``max_body`` bytes of the body.

        ``proxy_url`` (``http://user:password@proxy:3128``) overrides the client's proxy for this
        request; https targets are reached through a CONNECT tunnel. A cookie a response sets along
        the redirect chain goes on to the hops its rules allow. At ``max_redirects`` the
        :class:`HttpFailure` (reason ``redirects``) carries the last response as ``response``.
        Raises :class:`HttpFailure` when no response could be had; a response of any status, even
        with a cut body, is an :class:`HttpExchange`.
        """
        ctx, clock = self._ctx, self._ctx.clock
        method = method.upper()
        proxy = proxy_url or self._proxy_url
        if proxy:
            _learn_proxy_secrets(proxy, ctx)
            try:
                proxy = str(URL(proxy))  # percent-encoded: libcurl takes ASCII, and decodes user info
            except ValueError:
                raise HttpFailure(Reason.PROTOCOL, "invalid proxy URL") from None
        try:
            current = URL(url)
        except ValueError:
            raise HttpFailure(Reason.PROTOCOL, "invalid URL") from None
        if params:
            current = current.update_query(
                [(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])]
            )
        sent_headers = CIMultiDict(headers or {})
        body: bytes | None = data.encode() if isinstance(data, str) else data
        phases = dict.fromkeys(PHASES, 0.0)
        started = clock.monotonic()
        visited: list[URL] = []
        cookies = _CookieJar()
        lookup_time, address = 0.0, ""
        while True:
            visited.append(current)
            hop_headers = cookies.headers_for(current, sent_headers)
            result, tls = await self._hop(method, current, hop_headers, body, phases, max_body, proxy)
            if len(visited) == 1:  # the target's own name and address, as blackbox_exporter reports
                lookup_time, address = result.phases.get("resolve", 0.0), result.connection[2]
            response_headers = CIMultiDictProxy(CIMultiDict(result.headers))
            location = response_headers.get("Location")
            redirected = result.status in _REDIRECTS and bool(location)
            cookies.take(current, response_headers)
            if not (follow_redirects and redirected) or len(visited) > max_redirects:
                exchange = HttpExchange(
                    method=method,
                    url=current,
                    status=result.status,
                    headers=response_headers,
                    body=result.body,
                    truncated=result.truncated,
                    http_version=result.http_version,
                    # As blackbox_exporter (Go's CheckRedirect) counts: every redirect received, the
                    # one not followed (follow_redirects off, or the limit reached) included.
                    redirects=len(visited) if redirected else len(visited) - 1,
                    phases=phases,
                    duration=clock.monotonic() - started,
                    tls=tls,
                    links=_links(response_headers, current),
                    address=address,
                    lookup_time=lookup_time,
                )
                if not (follow_redirects and redirected):
                    return exchange
                loop = " → ".join(redact_url(str(u), ctx.redact) for u in visited[-3:])
                raise HttpFailure(
                    Reason.REDIRECTS,
                    f"gave up after {plural(max_redirects, 'redirect')} (… {loop})",
                    phases,
                    response=exchange,
                )
            assert location is not None
            try:
                target = current.join(URL(location))
            except ValueError:
                raise HttpFailure(Reason.PROTOCOL, "redirect to an invalid Location", phases) from None
            if target.scheme not in ("http", "https"):
                raise HttpFailure(
                    Reason.PROTOCOL, f"redirect to unsupported scheme {target.scheme!r}", phases
                )
            if result.status == 303 or (result.status in (301, 302) and method == "POST"):
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
        proxy: str | None,
    ) -> tuple[CurlResult, TLSInfo | None]:
        ctx, clock = self._ctx, self._ctx.clock
        text = str(url)
        scheme = url.scheme
        host = url.host or ""
        port = url.port or (443 if scheme == "https" else 80)
        span = ctx.tracer.start_span(
            method,
            client=True,
            attributes={
                "http.request.method": method,
                "url.full": redact_url(text, ctx.redact),
                "url.scheme": scheme,
                "server.address": host,
                "server.port": port,
            },
        )
        hop_headers = CIMultiDict(headers)
        hop_headers.setdefault("User-Agent", self._factory.user_agent)
        span.inject(hop_headers)
        started = clock.monotonic()
        status: int | None = None
        version: str | None = None
        error_type: str | None = None
        response_headers: tuple[tuple[str, str], ...] = ()
        # Host, port and path (not the query, where keys travel), as a person finds the request
        # in the check: "waiting for the response of GET 127.0.0.1:8099/v1/hang".
        shown = ctx.redact(f"{method} {f'[{host}]' if ':' in host else host}:{port}{url.path}")
        ctx.stage = f"waiting for the response of {shown}"

        def headers_in() -> None:
            ctx.stage = f"reading the body of {shown}"

        try:
            try:
                _check_headers(hop_headers)
                resolve = self._resolve_entries(url, port, proxy)
                result = await self._factory._multi(self._pooled).perform(
                    CurlRequest(
                        method,
                        text,
                        headers=list(hop_headers.items()),
                        body=body,
                        max_body=max_body,
                        tls=self._tls,
                        pool=self._pooled,
                        resolve=resolve,
                        ip_family=self._ip_family,
                        proxy=proxy,
                        on_headers=headers_in,
                    )
                )
            except HttpFailure as failure:
                for name in PHASES:
                    phases[name] += failure.phases.get(name, 0.0)
                error_type = failure.reason.value
                # Redacted, then cut: libcurl's words may quote what the target or proxy sent.
                message = clip(failure.message, _MESSAGE_LIMIT, ctx.redact)
                span.fail(error_type, message)
                raise HttpFailure(failure.reason, message, phases) from None
            status, version = result.status, result.http_version
            response_headers = tuple(result.headers)
            for name, seconds in result.phases.items():
                phases[name] += seconds
            tls = self._tls_info(result, url) if result.tls_used else None
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("network.protocol.version", version)
            for name, seconds in result.phases.items():
                span.set_attribute(_PHASE_ATTRIBUTES[name], round(seconds, 6))
            if result.truncated:
                span.add_event("body_truncated", {"vantage.http.body.read": max_body})
            if status >= 400:
                error_type = str(status)
                span.fail(str(status), f"HTTP {status}")
            return result, tls
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: the run's timeout, or the agent stopping
                error_type, message = cancellation()
                span.fail(error_type, message)
            raise
        finally:
            ctx.requests.append(
                RequestRecord(
                    method,
                    scheme,
                    host,
                    port,
                    clock.monotonic() - started,
                    status,
                    error_type,
                    version,
                    response_headers,
                )
            )
            span.end()

    def _resolve_entries(self, url: URL, port: int, proxy: str | None) -> tuple[str, ...]:
        """``CURLOPT_RESOLVE`` entries from the factory's map of names, when it has one.

        A name the map does not hold fails here as a lookup would, so that a test never sends a
        query off the machine. Through a proxy the proxy looks the target up: only the proxy's own
        name is answered from the map.
        """
        names = self._factory.resolve
        if names is None:
            return ()
        entries: list[str] = []
        wanted = [(url.host or "", port)] if not proxy else []
        if proxy:
            proxy_url = URL(proxy)
            wanted.append((proxy_url.host or "", proxy_url.port or 80))
        for name, name_port in wanted:
            if _is_address(name):
                continue
            address = names.get(name)
            if address is None:
                raise HttpFailure(Reason.DNS, f"DNS lookup of {name} failed: Name or service not known")
            entries.append(f"{name}:{name_port}:{f'[{address}]' if ':' in address else address}")
        return tuple(entries)

    def _tls_info(self, result: CurlResult, url: URL) -> TLSInfo | None:
        """The handshake behind an https hop: this hop's own, or the one that opened its connection."""
        if result.tls_version is None and not result.cert_chain:
            return self._factory._recall(result.connection)
        tls = self._tls
        version = result.tls_version or ""
        info = TLSInfo(
            version=_TLS_VERSIONS.get(version, version or "unknown"),
            cipher=result.tls_cipher or "",
            sent_chain=result.cert_chain,
            verified_chain=()
            if tls.insecure
            else build_verified_chain(result.cert_chain, tls.ca_file, tls.server_name or url.host or ""),
        )
        if self._pooled:
            self._factory._remember(result.connection, info)
        return info


def _check_headers(headers: CIMultiDict[str]) -> None:
    # libcurl sends header lines as given: a line break inside one would start a header (or a
    # request) of the value's choosing.
    search = _LINE_BREAK.search
    for name, value in headers.items():
        if search(name) or search(value):
            raise HttpFailure(Reason.PROTOCOL, f"the header {name.strip()!r} holds a line break")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _learn_proxy_secrets(proxy: str, ctx: ProbeContext) -> None:
    """The credentials of a proxy URL are secrets, in every spelling they are sent in."""
    try:
        parsed = URL(proxy)
    except ValueError:
        return
    password = parsed.password  # decoded by yarl, as libcurl decodes it before sending
    if password:
        user = parsed.user or ""
        ctx.redact.add(password)
        # Proxy-Authorization: Basic base64(user:password) does not contain base64(password).
        ctx.redact.add(f"{user}:{password}")


def _links(headers: CIMultiDictProxy[str], base: URL) -> dict[str, str]:
    """``Link`` header targets by relation, resolved against the response's URL."""
    values = headers.getall("Link", [])
    if not values:
        return {}
    from requests.utils import parse_header_links  # only for responses that have the header

    out: dict[str, str] = {}
    for link in parse_header_links(", ".join(values)):
        target = link.get("url", "")
        try:
            target = str(base.join(URL(target)))
        except ValueError:
            pass
        for rel in link.get("rel", "").lower().split():  # rel="deprecation alternate" names two
            out.setdefault(rel, target)
    return out


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
