"""The one map from library exceptions to a run's ``Reason`` and message, as httpcore's
``_exceptions.map_exceptions`` is for httpcore: every probe translates what its library raised here,
so that the same failure reads the same in every probe type.

Order matters where the classes nest: a certificate error is an ``ssl.SSLError`` is an ``OSError``;
``socket.gaierror`` is an ``OSError``; aiohttp's connector errors are ``OSError`` too::

    aiohttp  ─┐                       DNS       socket.gaierror, aiohttp's DNS error, dnspython
    ssl       │                       TLS       certificate, handshake, a close during the handshake
    OSError   ├─► map_exception ─►    TIMEOUT   asyncio/builtin timeouts, dnspython's, gRPC deadlines
    asyncio   │   (reason, message)   CONNECT   refused, unreachable, reset; ICMP not sendable
    dnspython │                       PROTOCOL  malformed responses, invalid URLs, other gRPC codes
    grpc      │                       AUTH / RATE_LIMITED  gRPC's UNAUTHENTICATED, RESOURCE_EXHAUSTED
    icmplib  ─┘                       INTERNAL  anything else: a bug, not the target's fault
    libcurl codes ─► map_curl_error ─► (reason, message), by the same table

Messages are built from parts that cannot carry a request's URL (a secret in a query string must
not leave percent-encoded, where redaction would not find it); callers still redact them.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import socket
import ssl
import sys
from pathlib import Path

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from agent.sdk.reasons import Reason
from agent.sdk.urls import redact_url

__all__ = ["cancellation", "map_curl_error", "map_exception"]

_PING_GROUPS = Path("/proc/sys/net/ipv4/ping_group_range")

# gRPC status codes by name (grpc is an optional extra, so it is not imported here).
_GRPC_REASONS = {
    "UNAUTHENTICATED": Reason.AUTH,
    "PERMISSION_DENIED": Reason.AUTH,
    "DEADLINE_EXCEEDED": Reason.TIMEOUT,
    "RESOURCE_EXHAUSTED": Reason.RATE_LIMITED,
    "NOT_FOUND": Reason.ASSERTION,
}


def map_exception(
    exc: BaseException,
    *,
    host: str | None = None,
    port: int | None = None,
    handshake: bool = False,
) -> tuple[Reason, str]:
    """The reason and message for ``exc``, raised while talking to ``host:port``.

    ``handshake`` says the connection was already up and a TLS handshake was running, so that a
    connection closed by the peer is a TLS failure, not a connect failure.
    """
    where = host if port is None else _where(host, port)
    for translate in (_aiohttp, _grpc, _dnspython, _icmplib):
        found = translate(exc, host, where)
        if found is not None:
            return found
    return _socket(exc, host, where, handshake)


# libcurl's error codes (CURLcode, stable in its ABI) by the reason each is; numbers rather than
# pycurl's constants so that this module does not load libcurl. Unlisted codes (COULDNT_CONNECT,
# SEND_ERROR, RECV_ERROR, ...) are the network's: CONNECT.
_CURL_CODES: dict[int, tuple[Reason, str]] = {
    **dict.fromkeys((5, 6), (Reason.DNS, "DNS lookup failed")),  # COULDNT_RESOLVE_PROXY, _HOST
    28: (Reason.TIMEOUT, "timed out"),  # OPERATION_TIMEDOUT
    # Peer verification, client certificate, CA or CRL file, issuer, pinned key, OCSP status.
    **dict.fromkeys((51, 58, 60, 77, 82, 83, 90, 91), (Reason.TLS, "TLS certificate rejected")),
    # SSL_CONNECT_ERROR, crypto engine, cipher, USE_SSL, shutdown, client certificate needed.
    **dict.fromkeys((35, 53, 54, 59, 64, 66, 80, 98), (Reason.TLS, "TLS handshake failed")),
    **dict.fromkeys((1, 3), (Reason.PROTOCOL, "invalid URL")),  # UNSUPPORTED_PROTOCOL, URL_MALFORMAT
    # Weird reply, HTTP/2 and /3, partial body, redirects, empty reply, encoding, size, too large.
    **dict.fromkeys((8, 16, 18, 47, 52, 61, 63, 92, 95, 100), (Reason.PROTOCOL, "malformed HTTP response")),
    # Init, not built in, our callbacks' write error or abort, memory, bad options: a bug here.
    **dict.fromkeys((2, 4, 23, 27, 42, 43, 48), (Reason.INTERNAL, "libcurl failed")),
}
# libcurl's words for COULDNT_CONNECT ("Failed to connect to 127.0.0.1 port 9 after 0 ms: Could not
# connect to server"; from 8.x "127.0.0.1:9"): the host and port it tried, which may be a proxy's.
_CURL_CONNECT = re.compile(r"^Failed to connect to \[?([^\s\]]+)\]?(?: port |:)(\d+) ")
_OPENSSL_ERROR = re.compile(r"error:[0-9A-Fa-f]+:SSL routines:[^:]*:([^:]+)$")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
# libcurl's wrapping of OpenSSL's verification words ("SSL certificate problem: ...", or from 8.x
# "SSL certificate OpenSSL verify result: ... (20)"), which "rejected: " says already.
_CERT_PROBLEM = re.compile(r"^SSL certificate (?:problem|OpenSSL verify result): (.*?)(?: \(\d+\))?$", re.S)


def map_curl_error(
    code: int, message: str, *, host: str | None = None, os_errno: int = 0
) -> tuple[Reason, str]:
    """The reason and message for libcurl's error ``code`` with its error text ``message``.

    libcurl's texts name hosts and ports, not URLs; a URL that shows up anyway is redacted.
    A certificate that was not accepted and a handshake that failed are both ``tls``, told apart
    in the message. ``os_errno`` (``CURLINFO_OS_ERRNO``) says why a connection failed, in the
    same words as :func:`map_exception` ("connection refused by 127.0.0.1:9"), where libcurl
    says only "Could not connect to server".
    """
    if code == 7 and (tried := _CURL_CONNECT.match(message.strip())):  # COULDNT_CONNECT
        return Reason.CONNECT, _connect_failure(_where(tried.group(1), int(tried.group(2))), os_errno, "")
    detail = _URL_IN_TEXT.sub(lambda found: redact_url(found.group(0)), message.strip())
    detail = _CERT_PROBLEM.sub(r"\1", detail)
    reason, what = _CURL_CODES.get(code, (Reason.CONNECT, "cannot connect"))
    if code == 1 and "HTTP/" in detail:  # UNSUPPORTED_PROTOCOL of a status line, not of a URL
        what = "malformed HTTP response"
        if "HTTP/0.9" in detail:  # libcurl's words for an answer without a status line
            detail = "no HTTP status line (the server answered something else than HTTP)"
    if code == 100 and not detail:  # TOO_LARGE, which libcurl leaves without words
        detail = "a header larger than libcurl accepts (100 KiB a line, 300 KiB in all)"
    if host and reason is Reason.TLS:
        what = what.replace("certificate", f"certificate of {host}")
    if reason is Reason.TLS and (openssl := _OPENSSL_ERROR.search(detail)):
        # "TLS connect error: error:0A00010B:SSL routines::wrong version number": OpenSSL's reason,
        # in the words the Python side uses for it too.
        words = openssl.group(1).strip()
        code_name = words.upper().replace(" ", "_")
        detail = f"{_SSL_REASONS[code_name]} ({code_name})" if code_name in _SSL_REASONS else words
    return reason, f"{what}: {detail or f'libcurl error {code}'}"


def cancellation() -> tuple[str, str]:
    """The ``error.type`` and message for a span whose work a cancellation cut short.

    While the agent runs, the only cancellation a probe sees is its run's timeout (the scheduler's
    cancel scope); the other, the agent stopping, abandons the run, whose own span says so. From
    inside the run the two cannot be told apart (both cancel the task through a scope), so a cut
    request is reported as the timeout it almost always is.
    """
    return Reason.TIMEOUT.value, "timed out: the run's timeout cut the request short"


def _aiohttp(exc: BaseException, host: str | None, where: str | None) -> tuple[Reason, str] | None:
    if not isinstance(exc, aiohttp.ClientError) and _line_too_long(exc) is None:
        return None
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return Reason.DNS, f"DNS lookup of {exc.host} failed: {_os_message(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        detail = getattr(cert_error, "verify_message", None) or str(cert_error)
        return Reason.TLS, f"TLS certificate of {exc.host} rejected: {detail}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return Reason.TLS, f"TLS handshake failed: {_ssl_message(exc)}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return Reason.TIMEOUT, "timed out while connecting"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return Reason.TIMEOUT, "timed out waiting for the response"
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = _where(exc.host, exc.port)
        return Reason.CONNECT, _connect_failure(where, _errno_of(exc.os_error), _os_message(exc.os_error))
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return Reason.PROTOCOL, "the server closed the connection without a complete response"
    # From here on the library's own text may carry the request URL, query and all.
    if (too_long := _line_too_long(exc)) is not None:
        # Not the parser's words: they quote the line's first 100 bytes, and a token the target
        # echoed there would be cut before redaction could find it.
        return Reason.PROTOCOL, f"malformed HTTP response: {too_long}"
    if isinstance(exc, aiohttp.ClientResponseError):
        return Reason.PROTOCOL, f"malformed HTTP response: {_one_line(exc.message) or type(exc).__name__}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return Reason.PROTOCOL, f"malformed HTTP response: {_one_line(_describe(exc))}"
    if isinstance(exc, aiohttp.InvalidURL):
        description = getattr(exc, "description", None)
        return Reason.PROTOCOL, f"invalid URL {redact_url(str(exc.url))}" + (
            f": {description}" if description else ""
        )
    return Reason.CONNECT, f"{type(exc).__name__}: {_describe(exc)}"


def _grpc(exc: BaseException, host: str | None, where: str | None) -> tuple[Reason, str] | None:
    grpc = sys.modules.get("grpc")  # loaded if, and only if, a gRPC call can have raised
    if grpc is None or not isinstance(exc, grpc.aio.AioRpcError):
        return None
    code, details = exc.code(), exc.details() or ""
    message = f"{code.name}: {details or 'no details'}"
    if code.name == "UNAVAILABLE":
        # gRPC says UNAVAILABLE for every failure to reach the server; its details alone tell
        # which step failed (there is no typed cause to read).
        lowered = details.lower()
        if any(word in lowered for word in ("ssl", "handshake", "certificate", "tls")):
            return Reason.TLS, message
        if "dns" in lowered or "resolve" in lowered:
            return Reason.DNS, message
        return Reason.CONNECT, message
    return _GRPC_REASONS.get(code.name, Reason.PROTOCOL), message


def _dnspython(exc: BaseException, host: str | None, where: str | None) -> tuple[Reason, str] | None:
    dns_exception = sys.modules.get("dns.exception")  # loaded if, and only if, dnspython can have raised
    if dns_exception is None or not isinstance(exc, dns_exception.DNSException):
        return None
    if isinstance(exc, dns_exception.Timeout):
        return Reason.TIMEOUT, f"no answer from {where}: {exc}"
    return Reason.DNS, f"no answer from {where}: {exc}"


def _icmplib(exc: BaseException, host: str | None, where: str | None) -> tuple[Reason, str] | None:
    icmplib = sys.modules.get("icmplib")  # loaded if, and only if, icmplib can have raised
    if icmplib is None:
        return None
    if isinstance(exc, icmplib.SocketPermissionError):
        return Reason.CONNECT, _icmp_not_permitted()
    if isinstance(exc, icmplib.NameLookupError):
        return Reason.DNS, f"DNS lookup of {host} failed: {exc}"
    if isinstance(exc, icmplib.ICMPLibError):
        return Reason.CONNECT, f"cannot send ICMP to {host}: {exc}"
    return None


def _socket(exc: BaseException, host: str | None, where: str | None, handshake: bool) -> tuple[Reason, str]:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Reason.TLS, f"TLS certificate of {host} rejected: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return Reason.TLS, f"TLS handshake failed: {_ssl_message(exc)}"
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return Reason.TIMEOUT, "timed out waiting for the response"
    if isinstance(exc, socket.gaierror):
        return Reason.DNS, f"DNS lookup of {host} failed: {_os_message(exc)}"
    if handshake and isinstance(exc, ConnectionError | asyncio.IncompleteReadError):
        detail = str(exc) or type(exc).__name__
        return Reason.TLS, f"the connection was closed during the TLS handshake ({detail})"
    if isinstance(exc, OSError) and host is not None:
        return Reason.CONNECT, _connect_failure(where or host, _errno_of(exc), _os_message(exc))
    if isinstance(exc, OSError):
        return Reason.CONNECT, f"{type(exc).__name__}: {_describe(exc)}"
    return Reason.INTERNAL, f"{type(exc).__name__}: {_describe(exc)}"


def _line_too_long(exc: BaseException) -> str | None:
    """What a line of the response that broke the parser's limit was, if that is the failure."""
    cause: BaseException | None = exc
    for _ in range(4):  # ClientResponseError ← HttpProcessingError ← LineTooLong
        if isinstance(cause, LineTooLong):
            limit = cause.args[1] if len(cause.args) > 1 else None
            return f"a line longer than {limit} bytes" if isinstance(limit, int) else "a line too long"
        if cause is None:
            return None
        cause = cause.__cause__
    return None


def _describe(exc: BaseException) -> str:
    """An exception's text, unless it may name the request's URL (then only its kind)."""
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.InvalidURL) or hasattr(exc, "request_info"):
        return type(exc).__name__
    return str(exc) or type(exc).__name__


def _one_line(text: str) -> str:
    """The parser's multi-line report (with a caret under the bad byte) on one line."""
    lines = (line.strip() for line in str(text).splitlines())
    return " ".join(line for line in lines if line and line.strip("^~ "))


# Why a connection failed, by errno, in a person's words; {where} is the host and port tried.
_CONNECT_ERRNOS = {
    errno.ECONNREFUSED: "connection refused by {where}",
    errno.ECONNRESET: "connection reset by {where}",
    errno.ECONNABORTED: "connection to {where} aborted",
    errno.EHOSTUNREACH: "no route to host {where}",
    errno.ENETUNREACH: "network unreachable for {where}",
    errno.EHOSTDOWN: "host {where} is down",
    errno.ETIMEDOUT: "no answer from {where} to the connection attempt (timed out)",
    errno.EADDRNOTAVAIL: "cannot connect to {where}: no local address to connect from",
    errno.EPIPE: "connection to {where} closed while sending",
    errno.EACCES: "cannot connect to {where}: not permitted (a firewall rule or a policy)",
    errno.EPERM: "cannot connect to {where}: not permitted (a firewall rule or a policy)",
}


def _where(host: str | None, port: int | None) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    host = host or "?"
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _connect_failure(where: str, code: int | None, fallback: str) -> str:
    """Why connecting to ``where`` failed, from the errno when there is one.

    Not the exception's text: asyncio's reads "Connect call failed ('127.0.0.1', 9)", libcurl's
    "Could not connect to server"; the errno says which failure it was.
    """
    if code and (known := _CONNECT_ERRNOS.get(code)):
        return known.format(where=where)
    if code:
        return f"cannot connect to {where}: {os.strerror(code).lower()}"
    return f"cannot connect to {where}" + (f": {fallback}" if fallback else "")


_ERRNO_IN_TEXT = re.compile(r"\[Errno (\d+)\]")


def _errno_of(exc: OSError) -> int | None:
    """The errno of ``exc``; for asyncio's "Multiple exceptions: [Errno 111] ..., [Errno 111] ..."
    (one per address tried), the errno they share."""
    if exc.errno:
        return int(exc.errno)
    codes = {int(code) for code in _ERRNO_IN_TEXT.findall(str(exc))}
    return codes.pop() if len(codes) == 1 else None


def _os_message(exc: OSError) -> str:
    """An OSError's reason: the system's words for its errno, not a library's wrapping of them
    (asyncio's "Connect call failed ('127.0.0.1', 9)")."""
    if (code := _errno_of(exc)) is not None and not isinstance(exc, socket.gaierror):
        return os.strerror(code).lower()
    codes = dict.fromkeys(int(code) for code in _ERRNO_IN_TEXT.findall(str(exc)))
    if codes:
        return "; ".join(os.strerror(code).lower() for code in codes)
    return exc.strerror or str(exc) or type(exc).__name__


# OpenSSL's reason codes a person meets most, in words that say what to look at.
_SSL_REASONS = {
    "WRONG_VERSION_NUMBER": "the server did not answer in TLS (a plain-text port?)",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server refused the TLS versions offered",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common with the server",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server refused the handshake (no cipher or version in common)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the server requires a client certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the server does not trust the client certificate's issuer",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the server rejected the client certificate",
    "TLSV1_UNRECOGNIZED_NAME": "the server does not serve this name (SNI)",
    "TLSV1_ALERT_INTERNAL_ERROR": "the server failed during the handshake (its internal error)",
    "UNEXPECTED_EOF_WHILE_READING": "the server closed the connection during the handshake",
}


def _ssl_message(exc: BaseException) -> str:
    inner = getattr(exc, "os_error", exc)
    reason = getattr(inner, "reason", None)
    if reason in _SSL_REASONS:
        return f"{_SSL_REASONS[reason]} ({reason})"
    return reason or str(inner)


def _icmp_not_permitted() -> str:
    try:
        groups = " ".join(_PING_GROUPS.read_text().split())
    except OSError:
        groups = "unknown"
    return (
        "ICMP is not permitted to this process: unprivileged ICMP sockets need its group "
        f"({os.getgid()}) in net.ipv4.ping_group_range (now {groups}), and raw sockets need "
        "CAP_NET_RAW; set the sysctl (a pod's securityContext.sysctls) or add the NET_RAW capability"
    )
