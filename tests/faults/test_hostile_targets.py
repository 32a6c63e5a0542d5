"""Hostile targets cannot hurt the agent.

The servers below are raw asyncio servers on loopback (aiohttp's server would refuse to misbehave),
all on one event loop in a thread. They accept and never answer; send their status line and
headers, or their body, a byte every 0.3 s; stream a 1 GiB body (with a Content-Length, without
one, chunked) from one small buffer; send a gzip or deflate bomb (about 1 MB that inflates to
1 GiB of zeros); redirect in a loop (A → B → A) and down an endless chain (/r/1 → /r/2 → ...);
send a 200 status line followed by header lines for ever, or one header line that never ends;
present an expired, self-signed, wrong-host or untrusted certificate. A UDP DNS responder answers
NXDOMAIN, REFUSED, or nothing at all.

One ``vantage run`` gets a check per hostile target (interval 2 s, timeout 1 s, the http probe's
default ``max_body`` of 1 MiB) plus a healthy http check every 500 ms against a normal local
server, and exports its spans to a local OTLP receiver. The tests assert what the user is
promised: each hostile check fails with its reason and a message that says what happened (a big
body is a success, cut at ``max_body`` and marked ``vantage.http.body_truncated``); each server saw
the client give up (so the case really reached the state it claims); the healthy check keeps its
schedule with no skipped run; the agent's peak RSS stays bounded; ``/healthz`` answers throughout;
SIGTERM exits 0. The measured figures and each check's reason and message are printed (``pytest
-s``).

Not covered: the http probe's own name resolution. It uses the system resolver
(``getaddrinfo``), which the agent gives no setting to point at another server, and this
machine's resolver is not on loopback; the dns probe is pointed at the responder instead.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import json
import re
import ssl
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode
import dns.rrset
import pytest
import trustme
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from ..helpers import AgentProcess, attributes, otlp_http_receiver, thread_server, wait_until

pytestmark = pytest.mark.slow

GIB = 1 << 30
MAX_BODY = 1 << 20  # the http probe's default max_body
CHUNK = 64 << 10
DRIP = 0.3  # seconds between the bytes of a slowloris
HOSTILE_INTERVAL, HOSTILE_TIMEOUT = 2.0, 1.0
HEALTHY_INTERVAL = 0.5
WINDOW = 5.0  # how long the healthy check's schedule is watched once every hostile check failed
# An idle agent peaks near 80 MB. A gzip bomb or 1 GiB body held whole would pass 1 GB; a few of
# them buffered at once (aiohttp's read buffer, the inflater's output) would pass 300 MB.
RSS_BOUND_KB = 250_000
# Each run reads at most max_body and hangs up: what a server got out beyond that sat in the
# sockets' buffers (a few MiB on loopback), never near the 1 GiB it offered.
SENT_BOUND = 48 << 20
SECRET = "Hx7q-hostile-0a1b2c3d4e5f-secret"  # every hostile http check sends it as its bearer token
SLOW_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Pad: " + b"p" * 60 + b"\r\n\r\nok"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


# ---------------------------------------------------------------- the gzip and deflate bombs


@functools.cache
def bomb(encoding: str, mib: int = 1024) -> bytes:
    """``mib`` MiB of zeros compressed: ``gzip`` (RFC 1952) or ``deflate`` (zlib, RFC 1950).

    About 1 MB for 1 GiB. Compressing 1 GiB takes 5 s; but after a full flush the compressor
    starts afresh, so 1 MiB of zeros compressed after one is the same bytes every time, and
    ``mib`` copies of them and the final empty block are the whole raw stream.
    """
    compressor, zeros = zlib.compressobj(9, zlib.DEFLATED, -15), bytes(1 << 20)
    compressor.compress(zeros)
    compressor.flush(zlib.Z_FULL_FLUSH)
    raw = (compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)) * mib + b"\x03\x00"
    size = mib << 20
    if encoding == "gzip":
        crc = 0
        for _ in range(mib):
            crc = zlib.crc32(zeros, crc)
        header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
        return header + raw + struct.pack("<II", crc, size & 0xFFFFFFFF)
    adler = ((size % 65521) << 16) | 1  # Adler-32 of n zero bytes
    return b"\x78\xda" + raw + struct.pack(">I", adler)


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 31), ("deflate", 15)])
def test_the_bombs_are_what_they_claim(encoding: str, wbits: int) -> None:
    """Built as the 1 GiB bombs are, 64 MiB ones inflate whole and pass their checksums (inflating
    1 GiB here would take seconds); the 1 GiB ones are about 1 MB and start with zeros."""
    data, inflater, total, nonzero = bomb(encoding, 64), zlib.decompressobj(wbits), 0, 0
    for _ in range(64):
        out = inflater.decompress(data, 4 << 20)
        total, nonzero = total + len(out), nonzero + len(out.strip(b"\x00"))
        data = inflater.unconsumed_tail
    assert inflater.eof and not inflater.unused_data and (total, nonzero) == (64 << 20, 0)
    big = bomb(encoding)
    assert len(big) < 1_100_000
    assert zlib.decompressobj(wbits).decompress(big, 1 << 20) == bytes(1 << 20)


# ---------------------------------------------------------------- the hostile servers


@dataclass
class Seen:
    """What one behaviour's server saw of the agent."""

    connections: int = 0
    sent: int = 0
    """Bytes written to the agent, over every connection."""
    most_sent: int = 0
    """The most bytes one connection got out before the agent hung up."""
    hung_up: int = 0
    """Connections the agent closed before the server had said all it meant to."""
    finished: int = 0


class Connection:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Seen, head: bytes
    ) -> None:
        self.reader, self.writer, self.seen, self.head, self.sent = reader, writer, seen, head, 0

    async def send(self, data: bytes | memoryview) -> None:
        """Write and wait for room; raises ConnectionError once the agent has hung up."""
        if self.writer.is_closing():
            raise ConnectionResetError
        self.writer.write(data)
        await self.writer.drain()
        self.sent += len(data)
        self.seen.sent += len(data)

    async def drip(self, data: bytes) -> None:
        for i in range(len(data)):
            await self.send(data[i : i + 1])
            await asyncio.sleep(DRIP)

    async def stream(
        self, total: int, frame: Callable[[memoryview], bytes | memoryview] | None = None
    ) -> None:
        """``total`` zero bytes, one small buffer at a time, never built."""
        chunk = memoryview(bytes(CHUNK))
        for _ in range(total // CHUNK):
            await self.send(frame(chunk) if frame else chunk)


Behaviour = Callable[[Connection, str], Awaitable[None]]


async def hang(conn: Connection, _: str) -> None:
    """Read the request and never answer; wait for the agent to give up."""
    while await asyncio.wait_for(conn.reader.read(1024), 30):
        pass
    raise ConnectionResetError


async def slow_head(conn: Connection, _: str) -> None:
    await conn.drip(SLOW_HEAD)


async def slow_body(conn: Connection, _: str) -> None:
    await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    await conn.drip(b"x" * 100)


async def big_length(conn: Connection, _: str) -> None:
    await conn.send(f"HTTP/1.1 200 OK\r\nContent-Length: {GIB}\r\n\r\n".encode())
    await conn.stream(GIB)


async def big_close(conn: Connection, _: str) -> None:
    await conn.send(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    await conn.stream(GIB)


async def big_chunked(conn: Connection, _: str) -> None:
    await conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    await conn.stream(GIB, lambda chunk: b"%x\r\n%s\r\n" % (len(chunk), chunk))
    await conn.send(b"0\r\n\r\n")


def bomb_sender(encoding: str) -> Behaviour:
    async def send_bomb(conn: Connection, _: str) -> None:
        data = memoryview(bomb(encoding))
        await conn.send(
            f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        )
        for start in range(0, len(data), CHUNK):
            await conn.send(data[start : start + CHUNK])

    return send_bomb


async def redirect(conn: Connection, path: str) -> None:
    if path.startswith("/loop/"):
        location = "/loop/b" if path == "/loop/a" else "/loop/a"
    else:
        location = f"/r/{int(path.removeprefix('/r/')) + 1}"
    await conn.send(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())


async def many_headers(conn: Connection, _: str) -> None:
    await conn.send(b"HTTP/1.1 200 OK\r\n")
    for n in range(0, 1_000_000, 100):
        await conn.send(b"".join(b"X-N: %d\r\n" % i for i in range(n, n + 100)))


async def long_header(conn: Connection, _: str) -> None:
    """One header line that never ends; it quotes the caller's token where a 100-byte cut falls."""
    token = re.search(rb"\r\nAuthorization: Bearer ([^\r]*)", conn.head)
    await conn.send(b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 90 + (token.group(1) if token else b""))
    await conn.stream(GIB, lambda chunk: b"a" * len(chunk))


async def garbage(conn: Connection, _: str) -> None:
    """A status line of 6,000 bytes that is not HTTP, then nothing."""
    await conn.send(b"\x00\x15\x03 SSH-2.0-" + b"g" * 6000 + b"\r\n\r\n")
    await hang(conn, _)


async def ok(conn: Connection, _: str) -> None:
    await conn.send(OK)


ROUTES: dict[str, Behaviour] = {
    "/hang": hang,
    "/slow-head": slow_head,
    "/slow-body": slow_body,
    "/big/length": big_length,
    "/big/close": big_close,
    "/big/chunked": big_chunked,
    "/gzip": bomb_sender("gzip"),
    "/deflate": bomb_sender("deflate"),
    "/loop/": redirect,
    "/r/": redirect,
    "/headers/many": many_headers,
    "/headers/long": long_header,
    "/garbage": garbage,
    "/ok": ok,
}
SILENT, REFUSED, NXDOMAIN = "silent.hostile.test.", "refused.hostile.test.", "nx.hostile.test."


class Hostile:
    """The hostile HTTP(S) servers and the DNS responder, on one event loop in a thread."""

    def __init__(self, tls: dict[str, ssl.SSLContext]) -> None:
        self.seen: dict[str, Seen] = {}
        self.queries: dict[str, int] = {}
        self.ports: dict[str, int] = {}
        self._tls = tls
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.Server] = []
        self._open: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._udp: asyncio.DatagramTransport | None = None

    def __enter__(self) -> Hostile:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        for name, context in {"http": None, **self._tls}.items():
            server = await asyncio.start_server(
                functools.partial(self._connection, name), "127.0.0.1", 0, ssl=context
            )
            self._servers.append(server)
            self.ports[name] = server.sockets[0].getsockname()[1]
        hostile = self

        class Responder(asyncio.DatagramProtocol):
            def connection_made(self, transport: Any) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                if (answer := hostile._answer(data)) is not None:
                    self.transport.sendto(answer, addr)

        self._udp, _ = await self._loop.create_datagram_endpoint(Responder, local_addr=("127.0.0.1", 0))
        self.ports["dns"] = self._udp.get_extra_info("sockname")[1]

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        if self._udp is not None:
            self._udp.close()
        # Hang up on every connection rather than cancel its task (which asyncio would log): each
        # behaviour then ends as it does when the agent hangs up.
        for writer in self._open.values():
            writer.transport.abort()
        if self._open:
            await asyncio.wait(list(self._open), timeout=5)

    def _answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        name = query.question[0].name.to_text()
        self.queries[name] = self.queries.get(name, 0) + 1
        if name == SILENT:
            return None
        response = dns.message.make_response(query)
        if name == REFUSED:
            response.set_rcode(dns.rcode.REFUSED)
        elif name == NXDOMAIN:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "127.0.0.1"))
        return response.to_wire()

    async def _connection(
        self, server: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open[task] = writer
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            path = head.split(b" ", 2)[1].decode()
            route = path if server == "http" else "/ok"
            if route not in ROUTES:
                route = route[: route.find("/", 1) + 1]  # /r/7 → /r/
            behaviour = ROUTES[route]
            seen = self.seen.setdefault(f"{server} {route}", Seen())
            seen.connections += 1
            conn = Connection(reader, writer, seen, head)
            try:
                await behaviour(conn, path)
                seen.finished += 1
            except (ConnectionError, ssl.SSLError):
                seen.hung_up += 1
            finally:
                seen.most_sent = max(seen.most_sent, conn.sent)
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            del self._open[task]


# ---------------------------------------------------------------- the agent against them


def http_check(name: str, url: str, **settings: Any) -> dict[str, Any]:
    check = {
        "name": name,
        "type": "http",
        "target": url,
        "interval": f"{HOSTILE_INTERVAL}s",
        "timeout": f"{HOSTILE_TIMEOUT}s",
        "settings": {"headers": {"Authorization": "Bearer ${HOSTILE_SECRET}"}, **settings},
    }
    return check


def dns_check(name: str, target: str, port: int) -> dict[str, Any]:
    return {
        "name": name,
        "type": "dns",
        "target": target,
        "interval": f"{HOSTILE_INTERVAL}s",
        "timeout": f"{HOSTILE_TIMEOUT}s",
        "settings": {"server": f"127.0.0.1:{port}"},
    }


@dataclass
class Case:
    """A hostile check: its server's behaviour, the reason expected (None: success) and the message."""

    path: str
    reason: str | None
    message: str
    server: str = "http"
    seen_as: str = ""
    """The behaviour's key in ``Hostile.seen``, when it is not ``"<server> <path>"``."""


TIMED_OUT = r"^no result within the timeout of 1s \((?:{})\)$"
WAITING = r"waiting for the response of GET 127\.0\.0\.1:\d+"
CASES: dict[str, Case] = {
    "hang": Case("/hang", "timeout", TIMED_OUT.format(WAITING + "/hang")),
    "slowloris-head": Case(
        "/slow-head",
        "timeout",
        TIMED_OUT.format(WAITING + "/slow-head"),
    ),
    "slowloris-body": Case(
        "/slow-body", "timeout", TIMED_OUT.format(r"reading the body of GET 127\.0\.0\.1:\d+/slow-body")
    ),
    "big-length": Case("/big/length", None, ""),
    "big-close": Case("/big/close", None, ""),
    "big-chunked": Case("/big/chunked", None, ""),
    "gzip-bomb": Case("/gzip", None, ""),
    "deflate-bomb": Case("/deflate", None, ""),
    "redirect-loop": Case(
        "/loop/a",
        "redirects",
        r"^gave up after 10 redirects \(… http://127\.0\.0\.1:\d+/loop/(a|b) → "
        r"http://127\.0\.0\.1:\d+/loop/(?!\1)(a|b) → http://127\.0\.0\.1:\d+/loop/\1\)$",
        seen_as="http /loop/",
    ),
    "redirect-chain": Case(
        "/r/1",
        "redirects",
        r"^gave up after 10 redirects \(… http://127\.0\.0\.1:\d+/r/9 → http://127\.0\.0\.1:\d+/r/10 → "
        r"http://127\.0\.0\.1:\d+/r/11\)$",
        seen_as="http /r/",
    ),
    "endless-headers": Case("/headers/many", "protocol", r"^malformed HTTP response: .*[Hh]eader"),
    # Not a quote of the line, where this target echoes the token: libcurl's limit, named.
    "endless-header-line": Case(
        "/headers/long", "protocol", r"^malformed HTTP response: a header larger than libcurl accepts"
    ),
    # libcurl's words, which quote nothing of the line the target sent.
    "garbage-status-line": Case(
        "/garbage",
        "protocol",
        r"^malformed HTTP response: no HTTP status line \(the server answered something else than HTTP\)$",
    ),
    "tls-expired": Case(
        "/", "tls", r"^TLS certificate of 127\.0\.0\.1 rejected: certificate has expired", "expired"
    ),
    "tls-self-signed": Case(
        "/", "tls", r"^TLS certificate of 127\.0\.0\.1 rejected: self-signed certificate", "self-signed"
    ),
    "tls-wrong-host": Case(
        "/",
        "tls",
        r"^TLS certificate of 127\.0\.0\.1 rejected: SSL: no alternative certificate subject name matches "
        r"target IPv4 address '127\.0\.0\.1'",
        "wrong-host",
    ),
    "tls-untrusted": Case(
        "/",
        "tls",
        r"^TLS certificate of 127\.0\.0\.1 rejected: unable to get local issuer certificate",
        "untrusted",
    ),
    "dns-nxdomain": Case(NXDOMAIN, "dns", r"^rcode NXDOMAIN \(expected NOERROR\)$", "dns"),
    "dns-refused": Case(REFUSED, "dns", r"^rcode REFUSED \(expected NOERROR\)$", "dns"),
    "dns-silent": Case(SILENT, "timeout", TIMED_OUT.format(r"waiting for 127\.0\.0\.1:\d+ to answer"), "dns"),
}
BIG = ("big-length", "big-close", "big-chunked", "gzip-bomb", "deflate-bomb")


@dataclass
class Outcome:
    """What one run of the agent against every hostile target showed."""

    states: dict[str, dict[str, Any]]
    seen: dict[str, Seen]
    queries: dict[str, int]
    spans: list[Any]
    skipped: dict[str, float]
    healthy_runs: int
    healthy_expected: float
    healthz: list[int] = field(default_factory=list)
    peak_kb: int = 0
    rss_kb: int = 0
    exit_code: int | None = None
    output: str = ""


def tls_contexts(ca: trustme.CA) -> dict[str, ssl.SSLContext]:
    now = dt.datetime.now(dt.UTC)
    leaves = {
        "expired": ca.issue_cert(
            "127.0.0.1", not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1)
        ),
        "wrong-host": ca.issue_cert("elsewhere.example"),
        "untrusted": trustme.CA().issue_cert("127.0.0.1"),
    }
    contexts = {}
    for name, leaf in leaves.items():
        contexts[name] = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(contexts[name])
    # A CA's own certificate and key make a self-signed server certificate.
    contexts["self-signed"] = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    stranger = trustme.CA()
    with trustme.Blob(stranger.cert_pem.bytes() + stranger.private_key_pem.bytes()).tempfile() as pem:
        contexts["self-signed"].load_cert_chain(pem)
    return contexts


def fetch(agent: AgentProcess, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(agent.url(path), timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def check_states(agent: AgentProcess) -> dict[str, dict[str, Any]]:
    status, text = fetch(agent, "/api/checks")
    return {state["name"]: state for state in json.loads(text)["checks"]} if status == 200 else {}


def skipped_runs(agent: AgentProcess) -> dict[str, float]:
    _, text = fetch(agent, "/metrics")
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "vantage_runs_skipped":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    check = sample.labels["check"]
                    out[check] = out.get(check, 0) + sample.value
    return out


def memory(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process, in kB."""
    status = Path(f"/proc/{pid}/status").read_text()
    peak = re.search(r"VmHWM:\s+(\d+) kB", status)
    rss = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert peak and rss, status
    return int(peak.group(1)), int(rss.group(1))


def every_check_failed_twice(agent: AgentProcess, healthz: list[int]) -> dict[str, Any] | None:
    """The states once every hostile check has had two runs and its expected result, else None;
    asks ``/healthz`` on the way."""
    if agent.proc.poll() is not None:
        raise AssertionError(f"the agent exited with {agent.proc.returncode}")
    healthz.append(fetch(agent, "/healthz")[0])
    states = check_states(agent)
    for name, case in CASES.items():
        state = states.get(name)
        if not state or state["runs"] < 2 or state["last"] is None:
            return None
        if state["last"]["reason"] != case.reason:
            return None
    return states


@pytest.fixture(scope="module")
def outcome(ca: trustme.CA, ca_file: Path) -> Iterator[Outcome]:
    async def healthy(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/ok", healthy)
    bomb("gzip"), bomb("deflate")  # built before the agent starts, so that no run waits on it
    with (
        Hostile(tls_contexts(ca)) as hostile,
        thread_server(app) as healthy_port,
        otlp_http_receiver() as (otlp, received),
    ):
        checks = [
            {
                "name": "healthy",
                "type": "http",
                "target": f"http://127.0.0.1:{healthy_port}/ok",
                "interval": f"{HEALTHY_INTERVAL}s",
                "timeout": "400ms",
            }
        ]
        for name, case in CASES.items():
            if case.server == "dns":
                checks.append(dns_check(name, case.path, hostile.ports["dns"]))
            elif case.server == "http":
                url = f"http://127.0.0.1:{hostile.ports['http']}{case.path}"
                # A big body must come out de-framed, inflated, and cut at max_body exactly.
                cut = [{"source": "body", "op": "matches", "value": f"^\\x00{{{MAX_BODY}}}$"}]
                checks.append(http_check(name, url, **({"assert": cut} if name in BIG else {})))
            else:
                url = f"https://127.0.0.1:{hostile.ports[case.server]}/"
                checks.append(http_check(name, url, tls={"ca_file": str(ca_file)}))
        agent = AgentProcess(
            checks,
            {
                "HOSTILE_SECRET": SECRET,
                "VANTAGE_LOG_RUNS": "false",
                "VANTAGE_LOG_FORMAT": "text",
                "VANTAGE_SHUTDOWN_TIMEOUT": "3s",
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXPORTER": "prometheus",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{otlp}/v1/traces",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            },
        )
        try:
            healthz: list[int] = []  # from the start: 0 until the agent listens
            try:
                wait_until(lambda: every_check_failed_twice(agent, healthz), timeout=30, interval=0.2)
            except AssertionError:
                states = check_states(agent)
                summary = {n: (s["runs"], s["last"] and s["last"]["reason"]) for n, s in states.items()}
                raise AssertionError(f"the checks did not all fail as expected in 30s: {summary}") from None
            before, started = check_states(agent)["healthy"]["runs"], time.monotonic()
            for _ in range(int(WINDOW / 0.25)):
                healthz.append(fetch(agent, "/healthz")[0])
                time.sleep(0.25)
            after, elapsed = check_states(agent)["healthy"]["runs"], time.monotonic() - started
            states = check_states(agent)
            result = Outcome(
                states=states,
                seen={key: dataclasses.replace(seen) for key, seen in hostile.seen.items()},
                queries=dict(hostile.queries),
                spans=[],
                skipped=skipped_runs(agent),
                healthy_runs=after - before,
                healthy_expected=elapsed / HEALTHY_INTERVAL,
                healthz=healthz,
            )
            result.peak_kb, result.rss_kb = memory(agent.proc.pid)
            result.exit_code = agent.stop(timeout=15)
            result.output = agent.output
            result.spans = [span for _, span in received.spans()]
        finally:
            agent.kill()
    report(result)
    yield result


def report(outcome: Outcome) -> None:
    """The measured figures and each check's outcome, for ``pytest -s``."""
    print(
        f"\nagent peak RSS (VmHWM) {outcome.peak_kb / 1000:.1f} MB, at the end {outcome.rss_kb / 1000:.1f} MB"
    )
    healthy = outcome.states["healthy"]
    print(
        f"healthy check: {outcome.healthy_runs} runs in {outcome.healthy_expected * HEALTHY_INTERVAL:.2f}s "
        f"({outcome.healthy_expected:.1f} expected at {HEALTHY_INTERVAL}s), skipped {healthy['skipped']}, "
        f"failed {healthy['failures']} of {healthy['runs']}; /healthz 200 to {outcome.healthz.count(200)} of "
        f"{len(outcome.healthz)} polls (0: not listening yet); SIGTERM → exit status {outcome.exit_code}"
    )
    for name, case in CASES.items():
        state, last = outcome.states[name], outcome.states[name]["last"]
        seen = outcome.seen.get(case.seen_as or f"{case.server} {case.path}")
        server = (
            f" [{seen.connections} conns, {seen.hung_up} hung up, most sent {seen.most_sent:,} B]"
            if seen
            else ""
        )
        print(
            f"{name:20} runs {state['runs']}, skipped {state['skipped']}: {last['reason'] or 'success'} "
            f"{last['message']!r}{server}"
        )


def span_attributes(outcome: Outcome, check: str) -> list[dict[str, Any]]:
    return [attributes(span.attributes) for span in outcome.spans if span.name == f"check {check}"]


@pytest.mark.parametrize("name", list(CASES))
def test_each_hostile_check_fails_with_its_reason(outcome: Outcome, name: str) -> None:
    case, state = CASES[name], outcome.states[name]
    last = state["last"]
    assert last["reason"] == case.reason, last
    assert last["success"] is (case.reason is None)
    if case.reason is not None:
        assert re.search(case.message, last["message"]), last["message"]
        assert state["failures"] == state["runs"]  # every run failed the same way
    else:
        assert state["failures"] == 0, state
    assert state["skipped"] == 0 and outcome.skipped.get(name, 0) == 0, (state, outcome.skipped)


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c.server == "http"])
def test_each_server_saw_the_agent_give_up(outcome: Outcome, name: str) -> None:
    """The hostile case really happened: the server got as far as it claims and the agent hung up."""
    case = CASES[name]
    seen = outcome.seen[case.seen_as or f"http {case.path}"]
    runs = outcome.states[name]["runs"]
    if case.reason == "redirects":
        # Eleven hops a run, each answered in full on its own connection.
        assert seen.connections >= 11 * runs and seen.finished == seen.connections, seen
        return
    if name in ("gzip-bomb", "deflate-bomb"):
        # The whole bomb (1 MB) may fit in the sockets' buffers: sent in full before the agent has
        # inflated its first MiB (its body assertion shows that it did) and hung up.
        assert seen.connections >= runs and seen.hung_up + seen.finished >= runs - 1, seen
        return
    assert seen.connections >= runs and seen.finished == 0, seen
    assert seen.hung_up >= runs - 1, seen  # the last run's connection may still be closing
    if name in BIG:
        # Read up to max_body, then hung up: never the whole 1 GiB.
        assert seen.most_sent < SENT_BOUND, seen
        assert seen.most_sent > MAX_BODY, seen
    if name in ("endless-headers", "endless-header-line"):
        assert 8 << 10 < seen.most_sent < SENT_BOUND, seen  # past aiohttp's 8 KiB limits
    if name == "garbage-status-line":
        assert seen.most_sent > 6000, seen
    if name.startswith("slowloris"):
        assert seen.most_sent >= 2, seen


def test_big_bodies_succeed_cut_at_max_body(outcome: Outcome) -> None:
    for name in BIG:
        last = outcome.states[name]["last"]
        # The body read was exactly max_body zero bytes: de-chunked, inflated, then cut.
        assert [(a["assertion"], a["passed"]) for a in last["assertions"]] == [
            (f'body matches "^\\\\x00{{{MAX_BODY}}}$"', True)
        ], last["assertions"]
        values = last["values"]
        spans = span_attributes(outcome, name)
        assert spans and all(s.get("vantage.http.body_truncated") is True for s in spans), (name, spans)
        if name == "big-length":
            assert values["probe.http.content_length"] == GIB  # as declared
        elif name.startswith("big"):
            assert values["probe.http.content_length"] == -1  # none declared, as blackbox says
            assert values["probe.http.uncompressed_body_length"] == MAX_BODY  # as read: the cut
        else:
            assert values["probe.http.content_length"] == len(bomb(name.split("-")[0]))


def test_tls_and_dns_failures_never_reach_a_request(outcome: Outcome) -> None:
    for server in ("expired", "self-signed", "wrong-host", "untrusted"):
        assert f"{server} /ok" not in outcome.seen  # no request got past the handshake
    for name in ("dns-nxdomain", "dns-refused", "dns-silent"):
        # The responder was asked (dnspython asks again over TCP only on a truncated answer).
        assert outcome.queries[CASES[name].path] >= outcome.states[name]["runs"]


def test_the_healthy_check_keeps_its_schedule(outcome: Outcome) -> None:
    healthy = outcome.states["healthy"]
    assert healthy["failures"] == 0 and healthy["last"]["success"], healthy
    assert healthy["skipped"] == 0 and outcome.skipped.get("healthy", 0) == 0, outcome.skipped
    assert abs(outcome.healthy_runs - outcome.healthy_expected) <= 2, outcome


def test_memory_stays_bounded(outcome: Outcome) -> None:
    assert 0 < outcome.peak_kb < RSS_BOUND_KB, outcome.peak_kb


def test_the_agent_answers_healthz_throughout_and_exits_0(outcome: Outcome) -> None:
    # Once it listened, it answered every time: while the hostile checks ran, failed and ran again.
    answers = outcome.healthz[outcome.healthz.index(200) :]
    assert len(answers) >= WINDOW / 0.25 + 10 and set(answers) == {200}, outcome.healthz
    assert outcome.exit_code == 0, outcome.output[-3000:]
    assert "Traceback" not in outcome.output, outcome.output[-3000:]


def test_no_part_of_the_token_a_target_quotes_is_written(outcome: Outcome) -> None:
    """The endless header line quotes the check's bearer token where aiohttp cuts what it quotes."""
    texts = [json.dumps(outcome.states), outcome.output]
    for span in outcome.spans:
        texts += [span.status.message, json.dumps(attributes(span.attributes))]
        texts += [json.dumps(attributes(event.attributes)) for event in span.events]
    found = [SECRET[:n] for n in range(4, len(SECRET) + 1) if any(SECRET[:n] in text for text in texts)]
    assert not found, found[-1]
