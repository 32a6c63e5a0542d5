"""One HTTP hop through libcurl, driven by the running asyncio event loop.

The pattern of Tornado's ``curl_httpclient.py``: pycurl's multi *socket* interface tells us which
sockets to watch (``CURLMOPT_SOCKETFUNCTION`` → ``loop.add_reader``/``add_writer``) and when to wake
(``CURLMOPT_TIMERFUNCTION`` → one ``loop.call_later``); on readiness or on the timer we call
``socket_action`` and collect finished transfers with ``info_read``::

    perform(request) ─► easy handle ─► CurlMulti ─► socket callback ─► loop readers/writers
          ▲                                 │      timer callback  ─► one loop timer
          └── future ◄── info_read ◄────────┴──── socket_action (on readiness, on the timer)

One ``CurlMulti`` per event loop (``CurlMulti.of_running_loop()``) for fresh connections; a client
that keeps connections may own another (``CurlMulti(loop)``, closed with ``close``), whose
connection cache is then its own. ``perform`` is ONE hop: the agent follows redirects itself, a
span per hop. Connections are fresh unless ``pool`` is asked for. libcurl times the phases in C at
the socket; ``CurlResult.phases`` turns its cumulative timings into the agent's five consecutive
phases, which add up to ``CurlResult.duration``.

A body in any content encoding the agent decodes (gzip, deflate, br, zstd) is decoded here as it
arrives (:mod:`agent.net._encoding`), not by libcurl, which refuses the ones it was not built with
(zstd in the wheel's build); the body cap counts decoded bytes. No ``Accept-Encoding`` is sent
unless the request has one, as blackbox_exporter sends none. libcurl speaks
HTTP/2 over TLS when ALPN offers it, and goes through an http(s) proxy when one is given (CONNECT
for https targets); proxies from the environment (``http_proxy``...) are not used. For an https hop
the TLS version and cipher come from libcurl's one informational line about the handshake
("SSL connection using TLSv1.3 / TLS_AES_256_GCM_SHA384 ...", through ``CURLOPT_DEBUGFUNCTION``:
pycurl has no ``CURLINFO_TLS_SSL_PTR``), and the certificates the server sent from
``CURLINFO_CERTINFO``; ``tests/test_adapters.py`` fails if a libcurl release rewords that line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import re
import select
import ssl
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pycurl
from cryptography import x509
from yarl import URL

from agent.net._encoding import BodyDecoder, DecodeError, content_encodings
from agent.sdk.failures import map_curl_error
from agent.sdk.http import HttpFailure, TLSOptions
from agent.sdk.reasons import Reason

__all__ = ["CurlMulti", "CurlRequest", "CurlResult"]

_TLS_VERSIONS = {
    "1.0": pycurl.SSLVERSION_TLSv1_0,
    "1.1": pycurl.SSLVERSION_TLSv1_1,
    "1.2": pycurl.SSLVERSION_TLSv1_2,
    "1.3": pycurl.SSLVERSION_TLSv1_3,
}
_HTTP_VERSIONS = {1: "1.0", 2: "1.1", 3: "2", 30: "3"}
_IDLE_HANDLES = 64  # easy handles kept for reuse, per multi handle
_WRITE_ERROR = 23  # CURLE_WRITE_ERROR: what stopping at the body cap looks like to libcurl
_IP_RESOLVE = {"ipv4": pycurl.IPRESOLVE_V4, "ipv6": pycurl.IPRESOLVE_V6}
_SUPPRESS_CONNECT_HEADERS = 265  # CURLOPT_SUPPRESS_CONNECT_HEADERS, which pycurl does not name
# OpenSSL 3 refuses TLS 1.0 and 1.1 (SHA-1 signatures) at its default security level 1 and above:
# a check that asks for them lowers the level, or the handshake it asked for could never succeed.
_OLD_TLS_CIPHERS = "DEFAULT:@SECLEVEL=0"
# OpenSSL's words for its most common verification results (X509_V_ERR_*), which pycurl cannot
# look up: libcurl checks the host name first and would report a self-signed certificate without a
# name as "unable to obtain common name", where the chain is what failed.
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    23: "certificate revoked",
    24: "invalid CA certificate",
    26: "unsupported certificate purpose",
}
_PEER_FAILED_VERIFICATION = 60
# pycurl's constants as module globals: the socket callback runs several times per transfer.
_POLL_IN, _POLL_OUT, _POLL_REMOVE = pycurl.POLL_IN, pycurl.POLL_OUT, pycurl.POLL_REMOVE
_CSELECT_IN, _CSELECT_OUT = pycurl.CSELECT_IN, pycurl.CSELECT_OUT
# The sockets' own poll set, on Linux: see CurlMulti._on_socket.
_EPOLL = hasattr(select, "epoll")
_EPOLLIN, _EPOLLOUT = getattr(select, "EPOLLIN", 1), getattr(select, "EPOLLOUT", 4)
_EPOLL_TROUBLE = getattr(select, "EPOLLERR", 8) | getattr(select, "EPOLLHUP", 16)
_NO_TLS = TLSOptions()
# libcurl's informational line after an OpenSSL handshake (vtls/openssl.c), e.g.
# "SSL connection using TLSv1.3 / TLS_AES_256_GCM_SHA384 / X25519 / RSASSA-PSS".
_HANDSHAKE_LINE = re.compile(rb"^SSL connection using (\S+) / (\S+)")
# The wheel's libcurl looks for a CA bundle at its build machine's path; use this system's.
_SYSTEM_CA = ssl.get_default_verify_paths()


@dataclass(slots=True)
class CurlRequest:
    """One hop: method, URL, headers and body, the body cap and the TLS options.

    Not frozen, though nothing changes it: a frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``, ~5 µs a request for these twelve."""

    method: str
    url: str
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | None = None
    max_body: int = 1 << 20
    tls: TLSOptions | None = None
    pool: bool = False
    """Reuse connections and cached DNS answers across requests; off: every request is fresh."""
    resolve: Sequence[str] = ()
    """``CURLOPT_RESOLVE`` entries (``host:port:address``): names answered without a lookup."""
    ip_family: str = "auto"
    """``ipv4``, ``ipv6`` or ``auto`` (either, as the resolver answers)."""
    proxy: str | None = None
    """An ``http://`` or ``https://`` proxy URL (credentials in it are sent to the proxy)."""
    on_headers: Callable[[], None] | None = None
    """Called once the final response's headers are in, before its body is read."""
    on_cut: Callable[[str, float], None] | None = None
    """Called when the request is cancelled, with the address it connected to or tried ("" if
    none yet) and the seconds its name lookup took: what a run cut by its timeout still reports."""


@dataclass(slots=True)
class CurlResult:
    """A response to one hop, with libcurl's timings as the agent's phases."""

    status: int
    headers: list[tuple[str, str]]
    """Every header line in order, repeated names kept."""
    body: bytes
    truncated: bool
    http_version: str
    phases: dict[str, float]
    duration: float
    cert_chain: tuple[bytes, ...] = ()
    """The certificates the server sent (DER, leaf first), from ``CURLINFO_CERTINFO``; as
    ``TLSInfo.sent_chain``. Empty on a reused connection: no handshake happened on this hop."""
    tls_used: bool = False
    tls_version: str | None = None
    """OpenSSL's name of the version (``TLSv1.3``) when this hop made a handshake."""
    tls_cipher: str | None = None
    connection: tuple[str, int, str, int] = ("", 0, "", 0)
    """Local address and port, remote address and port: which connection served the hop."""


class _Transfer:
    """What one easy handle gathers while it runs: the future, the body, the headers, the timings."""

    __slots__ = (
        "body",
        "cap",
        "chain",
        "cipher",
        "connection",
        "decode_error",
        "decoder",
        "future",
        "headers",
        "informational",
        "on_headers",
        "os_errno",
        "phases",
        "status",
        "tls_version",
        "total",
        "truncated",
        "verify_result",
        "version",
    )

    def __init__(
        self, future: asyncio.Future[None], cap: int, on_headers: Callable[[], None] | None = None
    ) -> None:
        self.future = future
        self.cap = cap
        self.on_headers = on_headers
        self.informational = False
        self.tls_version: str | None = None
        self.cipher: str | None = None
        self.connection: tuple[str, int, str, int] = ("", 0, "", 0)
        self.verify_result = 0
        self.os_errno = 0
        self.body = bytearray()
        self.headers: list[tuple[str, str]] = []
        self.truncated = False
        self.status = 0
        self.version = "1.1"
        self.phases: dict[str, float] = {}
        self.total = 0.0
        self.chain: tuple[bytes, ...] = ()
        self.decoder: BodyDecoder | None = None
        self.decode_error: str | None = None

    def write(self, chunk: bytes) -> int | None:
        decoder = self.decoder
        if decoder is not None:
            try:
                chunk = decoder.feed(chunk)
            except DecodeError as exc:
                self.decode_error = str(exc)
                return 0  # CURLE_WRITE_ERROR, read by perform() as the decoding failure it is
        elif self.decode_error is not None:
            return 0
        room = self.cap - len(self.body)
        if len(chunk) > room:
            # Stop here: returning a short count makes libcurl abort the transfer (and close the
            # connection) with CURLE_WRITE_ERROR, which perform() reads as a cut body.
            self.body += chunk[:room]
            self.truncated = True
            return 0
        self.body += chunk
        return None

    def header(self, line: bytes) -> None:
        text = line.decode("iso-8859-1").rstrip("\r\n")
        name, colon, value = text.partition(":")
        if colon and not name.startswith("HTTP/"):  # the common case first: one header line
            self.headers.append((name.strip(), value.strip()))
        elif text.startswith("HTTP/"):
            self.headers.clear()  # a new response (after a 1xx): only the last one's headers count
            self.informational = text[text.find(" ") + 1 : text.find(" ") + 2] == "1"
        elif not text and not self.informational:
            self._start_body()
            if self.on_headers is not None:
                self.on_headers()

    def _start_body(self) -> None:
        """The final response's headers are in: decode its body as its Content-Encoding says."""
        self.decoder, self.decode_error = None, None
        encoded = [value for name, value in self.headers if name.lower() == "content-encoding"]
        if not encoded:
            return
        try:
            decoder = BodyDecoder(content_encodings(encoded), self.cap + 1)
        except DecodeError as exc:
            self.decode_error = str(exc)
            return
        if decoder.active:
            self.decoder = decoder

    def debug(self, kind: int, text: bytes) -> None:
        # Called for every header and data chunk while VERBOSE is on (https hops only): the type
        # test comes first, so that the rest costs one comparison.
        if kind == pycurl.INFOTYPE_TEXT and text.startswith(b"SSL connection using"):
            found = _HANDSHAKE_LINE.match(text)
            if found is not None:
                self.tls_version, self.cipher = found.group(1).decode(), found.group(2).decode()

    def read_info(self, curl: pycurl.Curl, tls_used: bool) -> None:
        getinfo = curl.getinfo
        self.status = int(getinfo(pycurl.RESPONSE_CODE))
        self.version = _HTTP_VERSIONS.get(getinfo(pycurl.INFO_HTTP_VERSION), "1.1")
        self.phases, self.total = _phases(curl)
        self.os_errno = int(getinfo(pycurl.OS_ERRNO) or 0)  # why a connection failed, if one did
        self.connection = (
            getinfo(pycurl.LOCAL_IP) or "",
            int(getinfo(pycurl.LOCAL_PORT) or 0),
            getinfo(pycurl.PRIMARY_IP) or "",
            int(getinfo(pycurl.PRIMARY_PORT) or 0),
        )
        if tls_used:
            self.verify_result = int(curl.getinfo(pycurl.SSL_VERIFYRESULT) or 0)
            self.chain = tuple(
                ssl.PEM_cert_to_DER_cert(value if isinstance(value, str) else value.decode("ascii"))
                for cert in curl.getinfo(pycurl.INFO_CERTINFO) or ()
                for key, value in cert
                if key == "Cert"
            )


class CurlMulti:
    """libcurl's multi handle driven by one asyncio event loop; get it with ``of_running_loop``."""

    _by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CurlMulti] = weakref.WeakKeyDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_connections: int | None = None) -> None:
        # A weak reference: the per-loop table is keyed weakly by the loop, which must not be kept
        # alive by its own value.
        self._loop_ref = weakref.ref(loop)
        self._multi = pycurl.CurlMulti()
        if max_connections is not None:
            # libcurl's default cache holds 4 connections per transfer running at once: too few for
            # many checks that each keep one alive between their runs.
            self._multi.setopt(pycurl.M_MAXCONNECTS, max_connections)
        self._multi.setopt(pycurl.M_SOCKETFUNCTION, self._on_socket)
        self._multi.setopt(pycurl.M_TIMERFUNCTION, self._on_timer)
        self._watched: dict[int, int] = {}
        # On Linux the transfers' sockets are watched in an epoll set of this multi handle's own,
        # which the loop watches as one reader: registering a socket there is one system call,
        # where the loop's add_reader/remove_reader made (with uvloop) a poll handle per socket
        # and twice the epoll_ctl calls, ~10 µs a transfer. Elsewhere, the loop watches each.
        self._epoll: select.epoll | None = None
        if _EPOLL:
            self._epoll = select.epoll()
            loop.add_reader(self._epoll.fileno(), self._on_events)
        self._timer: asyncio.Handle | None = None
        self._timer_now = False  # _timer is the next turn of the loop's ("act now"), not a delay
        self._transfers: dict[pycurl.Curl, tuple[_Transfer, bool]] = {}
        # Easy handles are reset and used again, as Tornado's client does: making one per request
        # cost about a third of libcurl's own CPU for a small request.
        self._idle: list[pycurl.Curl] = []
        self._closed = False
        self._multi_closing = False

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_ref()
        if loop is None:  # pragma: no cover - a multi is only reached through its running loop
            raise RuntimeError("the event loop of this CurlMulti is gone")
        return loop

    @classmethod
    def of_running_loop(cls) -> CurlMulti:
        """The multi handle of the running event loop, made on first use."""
        loop = asyncio.get_running_loop()
        multi = cls._by_loop.get(loop)
        if multi is None:
            multi = cls._by_loop[loop] = cls(loop)
        return multi

    @property
    def transfers(self) -> int:
        """How many transfers are running (for tests and diagnostics)."""
        return len(self._transfers)

    @property
    def watched_sockets(self) -> int:
        """How many sockets libcurl asked the loop to watch."""
        return len(self._watched)

    async def perform(self, request: CurlRequest) -> CurlResult:
        """Send one request and read its response, at most ``request.max_body`` bytes of the body.

        Raises ``HttpFailure`` (its reason from ``map_curl_error``) when no response could be had.
        Cancelled, it removes the transfer from the multi handle, which closes its connection.
        """
        curl = self._idle.pop() if self._idle else pycurl.Curl()
        transfer = _Transfer(self._loop.create_future(), request.max_body, request.on_headers)
        try:
            tls_used = _configure(curl, request, transfer)
        except (pycurl.error, UnicodeError, ValueError) as exc:
            # An option libcurl refused (a proxy URL that is not ASCII, say): nothing was sent.
            self._release(curl)
            raise HttpFailure(Reason.PROTOCOL, f"the request cannot be made: {type(exc).__name__}") from None
        try:
            self._transfers[curl] = (transfer, tls_used)
            self._multi.add_handle(curl)
            await transfer.future
        except asyncio.CancelledError:
            try:
                if request.on_cut is not None:
                    request.on_cut(*_found_so_far(curl, request))
            finally:
                self._abandon(curl)
            raise
        except pycurl.error as exc:
            code, message = exc.args
            if code == _PEER_FAILED_VERIFICATION:
                message = _verification_problem(message, transfer)
            if code == _WRITE_ERROR and transfer.decode_error is not None:
                raise HttpFailure(Reason.PROTOCOL, transfer.decode_error, transfer.phases) from None
            if not (code == _WRITE_ERROR and transfer.truncated):
                host = URL(request.url).host
                reason, text = map_curl_error(code, message, host=host, os_errno=transfer.os_errno)
                tried = _address_tried(transfer.connection[2], host, request)
                raise HttpFailure(reason, text, transfer.phases, address=tried) from None
        finally:
            self._release(curl)
        return CurlResult(
            status=transfer.status,
            headers=transfer.headers,
            body=bytes(transfer.body),
            truncated=transfer.truncated,
            http_version=transfer.version,
            phases=transfer.phases,
            duration=transfer.total,
            cert_chain=transfer.chain,
            tls_used=tls_used,
            tls_version=transfer.tls_version,
            tls_cipher=transfer.cipher,
            connection=transfer.connection,
        )

    def _release(self, curl: pycurl.Curl) -> None:
        if self._transfers.pop(curl, None) is not None:
            # Neither finished nor abandoned (add_handle failed, or the wait ended some other way).
            with contextlib.suppress(pycurl.error):
                self._multi.remove_handle(curl)
        if len(self._idle) < _IDLE_HANDLES and not self._closed:
            curl.reset()  # every option back to its default; the connection was left to the multi
            self._idle.append(curl)
        else:
            curl.close()

    def close(self) -> None:
        """Stop every transfer and close every connection this multi handle keeps (once: a second
        call does nothing)."""
        if self._multi_closing:
            return
        self._closed = True  # a request still finishing closes its handle rather than keep it
        for idle in self._idle:
            idle.close()
        self._idle.clear()
        for curl in list(self._transfers):
            transfer, _ = self._transfers[curl]
            self._abandon(curl)
            if not transfer.future.done():
                transfer.future.set_exception(pycurl.error(42, "the HTTP client was closed"))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = self._loop_ref()
        live = loop is not None and not loop.is_closed()
        if self._epoll is not None:
            if live:
                assert loop is not None
                loop.remove_reader(self._epoll.fileno())
            self._epoll.close()  # and the sockets in it with it
        elif live:
            assert loop is not None
            for fd in self._watched:
                loop.remove_reader(fd)
                loop.remove_writer(fd)
        self._watched.clear()
        self._multi_closing = True
        self._multi.close()  # closes the cached connections; their sockets are unwatched already

    def _abandon(self, curl: pycurl.Curl) -> None:
        if self._transfers.pop(curl, None) is not None:
            self._multi.remove_handle(curl)  # closes the transfer's connection; libcurl unwatches it

    # libcurl's callbacks. They run inside socket_action, so they only (un)register and schedule.

    def _on_socket(self, event: int, fd: int, multi: object, data: object) -> None:
        if self._multi_closing:
            return  # close() has unwatched every socket (libcurl's own close asks for more)
        watched = self._watched
        old = watched.get(fd, 0)
        if event == _POLL_REMOVE:
            watched.pop(fd, None)
            event = 0
        else:
            watched[fd] = event
        changed = old ^ event
        if not changed:
            return
        if self._epoll is not None:
            self._watch(fd, old, event)
            return
        loop = self._loop
        # Additions before removals: a socket that goes from writing to reading keeps the loop's
        # poll handle for its descriptor instead of closing it and opening another.
        added, removed = changed & event, changed & old
        if added & _POLL_IN:
            loop.add_reader(fd, self._on_ready, fd, _CSELECT_IN)
        if added & _POLL_OUT:
            loop.add_writer(fd, self._on_ready, fd, _CSELECT_OUT)
        if removed & _POLL_IN:
            loop.remove_reader(fd)
        if removed & _POLL_OUT:
            loop.remove_writer(fd)

    def _watch(self, fd: int, old: int, event: int) -> None:
        """(Un)register ``fd`` in the epoll set for ``event`` (libcurl's POLL_* bits, 0: none)."""
        epoll = self._epoll
        assert epoll is not None
        mask = (_EPOLLIN if event & _POLL_IN else 0) | (_EPOLLOUT if event & _POLL_OUT else 0)
        try:
            if not event:
                epoll.unregister(fd)
            elif old:
                epoll.modify(fd, mask)
            else:
                epoll.register(fd, mask)
        except OSError as exc:
            # The kernel drops a socket from the set when it is closed: a descriptor libcurl closed
            # without telling (and perhaps opened again) is registered afresh.
            if exc.errno == errno.ENOENT and event:
                epoll.register(fd, mask)
            elif exc.errno == errno.EEXIST:
                epoll.modify(fd, mask)
            elif exc.errno not in (errno.ENOENT, errno.EBADF):
                raise

    def _on_events(self) -> None:
        """The epoll set has sockets ready: tell libcurl about each, as the loop's readers would."""
        assert self._epoll is not None
        watched = self._watched
        for fd, mask in self._epoll.poll(0):
            wanted = watched.get(fd)
            if not wanted:
                # A socket an earlier one's action closed or gave up: no more libcurl's. Out of
                # the set, should it be there still, or the loop would be woken for it again.
                with contextlib.suppress(OSError):
                    self._epoll.unregister(fd)
                continue
            action = (_CSELECT_IN if mask & _EPOLLIN else 0) | (_CSELECT_OUT if mask & _EPOLLOUT else 0)
            if mask & _EPOLL_TROUBLE:  # an error or a hang-up: what the socket waits for is due
                action |= (_CSELECT_IN if wanted & _POLL_IN else 0) | (
                    _CSELECT_OUT if wanted & _POLL_OUT else 0
                )
            self._act(fd, action)

    def _on_timer(self, msecs: int) -> None:
        if msecs == 0 and self._timer is not None and self._timer_now:
            return  # "act now" is asked already: the runs a tick starts together add one each
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_now = msecs == 0
        if msecs == 0:
            # "Act now", asked once per transfer added: the next turn of the loop, no loop timer.
            self._timer = self._loop.call_soon(self._on_timeout)
        elif msecs > 0:
            self._timer = self._loop.call_later(msecs / 1000.0, self._on_timeout)

    def _on_ready(self, fd: int, action: int) -> None:
        self._act(fd, action)

    def _on_timeout(self) -> None:
        self._timer, self._timer_now = None, False
        self._act(pycurl.SOCKET_TIMEOUT, 0)

    def _act(self, fd: int, action: int) -> None:
        while True:
            code, running = self._multi.socket_action(fd, action)
            if code != pycurl.E_CALL_MULTI_PERFORM:
                break
        # Every transfer of ours is counted as running until libcurl is done with it: while the
        # counts agree, no message waits for info_read.
        if running != len(self._transfers):
            self._collect()

    def _collect(self) -> None:
        while True:
            queued, done, failed = self._multi.info_read()
            for curl in done:
                self._finish(curl, None)
            for curl, code, message in failed:
                self._finish(curl, pycurl.error(code, message))
            if not queued:
                break

    def _finish(self, curl: pycurl.Curl, error: pycurl.error | None) -> None:
        transfer, tls_used = self._transfers.pop(curl)
        # Detached first: whatever reading the transfer's figures raises, the handle is libcurl's
        # no more, and the failure reaches the request that waits for it (not this callback).
        self._multi.remove_handle(curl)
        failure: BaseException | None = error
        try:
            transfer.read_info(curl, tls_used)
        except Exception as exc:  # a certificate that will not decode, say: the request fails
            failure = failure or exc
        if transfer.future.done():
            return
        if failure is None:
            transfer.future.set_result(None)
        else:
            transfer.future.set_exception(failure)


def _found_so_far(curl: pycurl.Curl, request: CurlRequest) -> tuple[str, float]:
    """The address a transfer still running connected to or is trying, and its name lookup's
    seconds (0 before the lookup ended)."""
    try:
        connected = curl.getinfo(pycurl.PRIMARY_IP) or ""
        looked_up = curl.getinfo(pycurl.NAMELOOKUP_TIME_T) / 1e6
    except pycurl.error:
        connected, looked_up = "", 0.0
    return _address_tried(connected, URL(request.url).host, request), looked_up


def _address_tried(connected: str, host: str | None, request: CurlRequest) -> str:
    """The address a failed hop connected to or tried: libcurl's primary IP once a connection was
    made (a handshake failed), else the host when it is an IP literal (libcurl leaves the primary
    IP empty when connect() was refused); "" through a proxy, which connected in its place."""
    if request.proxy:
        return ""
    if connected:
        return connected
    literal = (host or "").strip("[]")
    try:
        ipaddress.ip_address(literal)
    except ValueError:
        return ""
    return literal


def _verification_problem(message: str, transfer: _Transfer) -> str:
    """What failed when libcurl did not accept the server's certificate, in OpenSSL's words.

    libcurl's own checks (the name) leave verify result 1 (unspecified) and their own message,
    even where the chain is what is wrong: a single self-issued certificate is said to be one.
    """
    found = transfer.verify_result
    if found > 1:
        return _VERIFY_ERRORS.get(found, f"OpenSSL verify error {found}")
    if len(transfer.chain) == 1:
        try:
            cert = x509.load_der_x509_certificate(transfer.chain[0])
        except ValueError:
            return message
        if cert.subject == cert.issuer:
            return f"self-signed certificate; {message}"
    return message


def _configure(curl: pycurl.Curl, request: CurlRequest, transfer: _Transfer) -> bool:
    """Set ``curl``'s options for ``request``; whether it speaks TLS.

    The handle comes reset: an option left at libcurl's default is not set again.
    """
    setopt = curl.setopt
    url = URL(request.url)
    # Bytes, UTF-8: pycurl takes a str only when it is ASCII.
    headers = [f"{name}: {value}".encode() for name, value in request.headers]
    headers.append(b"Expect:")  # no 100-continue round trip before a body
    tls = request.tls or _NO_TLS
    tls_used = url.scheme == "https"
    if tls_used and tls.server_name and url.host:
        # SNI and the hostname check follow the URL's host: put server_name there, connect to the
        # real host, and keep the Host header the request would have had.
        port = url.explicit_port or url.port or 443
        host = f"[{url.host}]" if ":" in url.host else url.host
        curl.setopt(pycurl.CONNECT_TO, [f"{tls.server_name}:{port}:{host}:{port}"])
        if not any(name.lower() == "host" for name, _ in request.headers):
            headers.append(f"Host: {host}{f':{url.explicit_port}' if url.explicit_port else ''}".encode())
        url = url.with_host(tls.server_name)
    setopt(pycurl.URL, str(url))
    method = request.method.upper()
    if method == "HEAD":
        setopt(pycurl.NOBODY, 1)
    elif request.body is not None:
        setopt(pycurl.POSTFIELDS, request.body)
        if method != "POST":
            setopt(pycurl.CUSTOMREQUEST, method)
    elif method != "GET":
        setopt(pycurl.CUSTOMREQUEST, method)
    setopt(pycurl.HTTPHEADER, headers)
    # FOLLOWLOCATION stays at its default, 0: the agent follows redirects itself.
    setopt(pycurl.NOSIGNAL, 1)
    setopt(pycurl.WRITEFUNCTION, transfer.write)
    setopt(pycurl.HEADERFUNCTION, transfer.header)
    # No Accept-Encoding unless the request has its own (as blackbox_exporter's Go client asks:
    # the server's answer to a plain request is what it measures); whatever encoding comes anyway
    # is decoded by _Transfer.write. ACCEPT_ENCODING unset keeps libcurl from decoding (or
    # refusing the encodings it was not built with).
    setopt(pycurl.HTTP_CONTENT_DECODING, 0)
    # "" turns off the proxies of the environment too; only the check's own proxy is used.
    setopt(pycurl.PROXY, request.proxy or "")
    if request.proxy:
        curl.setopt(_SUPPRESS_CONNECT_HEADERS, 1)  # the proxy's CONNECT answer is not the response
        if _SYSTEM_CA.cafile:
            curl.setopt(pycurl.PROXY_CAINFO, _SYSTEM_CA.cafile)
    if request.resolve:
        setopt(pycurl.RESOLVE, list(request.resolve))
    family = _IP_RESOLVE.get(request.ip_family)
    if family is not None:  # else IPRESOLVE_WHATEVER, the default
        setopt(pycurl.IPRESOLVE, family)
    if not request.pool:
        setopt(pycurl.FORBID_REUSE, 1)
        setopt(pycurl.FRESH_CONNECT, 1)
        setopt(pycurl.DNS_CACHE_TIMEOUT, 0)
    if tls_used:
        # libcurl keeps TLS sessions in the multi handle: a new connection resuming one would skip
        # the full handshake (flattering the tls phase) and receive no certificates to read.
        curl.setopt(pycurl.SSL_SESSIONID_CACHE, 0)
        curl.setopt(pycurl.OPT_CERTINFO, 1)
        curl.setopt(pycurl.VERBOSE, 1)
        curl.setopt(pycurl.DEBUGFUNCTION, transfer.debug)
        if tls.insecure:
            curl.setopt(pycurl.SSL_VERIFYPEER, 0)
            curl.setopt(pycurl.SSL_VERIFYHOST, 0)
        if tls.ca_file:
            curl.setopt(pycurl.CAINFO, str(tls.ca_file))
        elif _SYSTEM_CA.cafile:
            curl.setopt(pycurl.CAINFO, _SYSTEM_CA.cafile)
        elif _SYSTEM_CA.capath:
            curl.setopt(pycurl.CAPATH, _SYSTEM_CA.capath)
        if tls.cert_file:
            curl.setopt(pycurl.SSLCERT, str(tls.cert_file))
        if tls.key_file:
            curl.setopt(pycurl.SSLKEY, str(tls.key_file))
        if tls.min_version:
            curl.setopt(pycurl.SSLVERSION, _TLS_VERSIONS[tls.min_version])
            if tls.min_version in ("1.0", "1.1"):
                curl.setopt(pycurl.SSL_CIPHER_LIST, _OLD_TLS_CIPHERS)
    return tls_used


_MARKS = (
    pycurl.NAMELOOKUP_TIME_T,
    pycurl.CONNECT_TIME_T,
    pycurl.APPCONNECT_TIME_T,
    pycurl.STARTTRANSFER_TIME_T,
)


def _phases(curl: pycurl.Curl) -> tuple[dict[str, float], float]:
    """libcurl's cumulative timings (µs from the start) as five consecutive phases and the total.

    ``APPCONNECT`` is 0 without TLS; a timing libcurl did not reach is 0; so the boundaries are made
    monotonic, and each phase is the difference of two, so that the phases add up to the total.
    """
    getinfo = curl.getinfo
    total = getinfo(pycurl.TOTAL_TIME_T)
    bounds = [0]
    last = 0
    for option in _MARKS:
        mark = getinfo(option)
        if mark:
            last = max(last, min(mark, total))
        bounds.append(last)
    bounds.append(max(last, total))
    resolved, connected, shaken, first, end = bounds[1:]
    phases = {
        "resolve": resolved / 1e6,
        "connect": (connected - resolved) / 1e6,
        "tls": (shaken - connected) / 1e6,
        "processing": (first - shaken) / 1e6,
        "transfer": (end - first) / 1e6,
    }
    return phases, end / 1e6
