"""The inbound endpoints, ``/hooks/{check}`` and ``/heartbeat/{check}``, that round-trip probes
(webhook, heartbeat) wait on; a heartbeat also takes healthchecks.io's signals after the check's
name (``/heartbeat/{check}/start``, ``/fail``, ``/log``, ``/{exit-code}``: ``InboundRequest.action``).

Every request is held to the same rules before anything else is looked at: a rate limit per source
address (``VANTAGE_INBOUND_RATE``; behind an ingress, ``VANTAGE_TRUSTED_PROXIES`` says whose
``X-Forwarded-For`` to believe), a body size limit (``VANTAGE_INBOUND_MAX_BODY``) and time limit,
the method, headers that are UTF-8. Then the check's probe authenticates it (signature or token).
An unknown check, a check of another type, a header that is not UTF-8 and a failed
authentication all get the same answer, so a caller without credentials learns nothing about
which checks exist; a probe that raises while judging a request rejects it too (logged once per
check). Nothing from a request is evaluated: probes read bodies as data.

A request for a check that another process runs is passed on to it: to the worker that owns it
(``VANTAGE_WORKERS``) or to the replica that owns it (``VANTAGE_PEER_URL``), with its body and
headers unchanged, so the owner authenticates it as if it had been sent there.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

import aiohttp
import anyio
from aiohttp import web
from multidict import CIMultiDict

from agent.config.checks import CheckEntry
from agent.schedule.sharding import owner
from agent.sdk.probe import Clock, Refusal, RefusalKind
from agent.sdk.types import InboundRequest
from agent.server._aiohttp import wait_for_certificates
from agent.server.inbox import Inbox

__all__ = [
    "ENDPOINTS",
    "FORWARDED",
    "Inbound",
    "Outcome",
    "Route",
    "client_address",
    "inbound_checks",
    "peer_route",
]

log = logging.getLogger("vantage.inbound")

ENDPOINTS = {"hooks": ("POST", "PUT"), "heartbeat": ("GET", "POST", "HEAD")}
# What may follow a heartbeat's check name: anything else is not a route (404, whatever the check),
# so that nothing a caller writes there is passed on to another process.
_ACTIONS = {"heartbeat": r"start|fail|log|[0-9]{1,3}"}
# Endpoints whose body over the limit is cut to its tail rather than refused: a heartbeat's body
# is the job's output, whose end is where its error is (healthchecks.io keeps a head and takes the
# ping too), and a refused end ping would leave the job's run open and its failure unreported.
# Read up to this many times the limit; beyond, 413 as for any body.
_TAIL_KEPT = {"heartbeat": 16}
FORWARDED = "X-Vantage-Forwarded"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
}
_REJECTED = {"error": "rejected"}
_UNDECODABLE = re.compile("[\udc80-\udcff]")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Outcome(StrEnum):
    """What became of an inbound request: the ``outcome`` label of ``vantage.inbound.requests``."""

    ACCEPTED = "accepted"
    FORWARDED = "forwarded"
    RATE_LIMITED = "rate_limited"
    BAD_METHOD = "bad_method"
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    REJECTED = "rejected"
    MISROUTED = "misrouted"
    REFUSED = "refused"


class _Answered(Exception):
    """A gate's final answer to a request: what became of it, and the response."""

    def __init__(self, outcome: Outcome, response: web.StreamResponse) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.response = response


@dataclass(frozen=True, slots=True)
class Route:
    """Where to pass on requests for a check that another process runs."""

    url: str
    """Base URL of that process; empty when it cannot be reached from here."""
    local: bool = False
    """A worker process of this agent: requests are always passed on to it, while a replica gets
    a request only from the process that received it (no forwarding loops between replicas)."""


Locate = Callable[[CheckEntry], Route | None]
"""Where a check's inbound requests go: None when this process runs the check."""


def inbound_checks(entries: Iterable[CheckEntry], region: str) -> dict[str, CheckEntry]:
    """The checks of ``region`` by name, when one of them takes inbound requests; else empty."""
    mine = {entry.check.name: entry for entry in entries if entry.check.runs_in(region)}
    return mine if any(entry.probe.inbound for entry in mine.values()) else {}


def peer_route(peer_url: str | None, check: str, replicas: int) -> Route:
    """The replica that runs ``check``, reached through ``VANTAGE_PEER_URL``."""
    if not peer_url:
        return Route("")
    return Route(peer_url.replace("{shard}", str(owner(check, replicas))))


def client_address(request: web.Request, trusted: list[Network]) -> str:
    """The source of ``request``: the peer, or, when the peer is a trusted proxy, the nearest
    address in ``X-Forwarded-For`` that is not one."""
    peer = request.remote or ""
    hops = [peer]
    if trusted:
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
        hops = [peer, *reversed([hop.strip() for hop in forwarded.split(",") if hop.strip()])]
    for hop in hops:
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return hop
        if not any(address in network for network in trusted):
            return hop
    return hops[-1]


class _TooLarge(Exception):
    """A body over what ``_read_tail`` reads."""


async def _read_tail(request: web.Request, most: int) -> bytes:
    """The last ``client_max_size`` bytes of the request's body, reading at most ``most`` bytes
    (``_TooLarge`` beyond)."""
    if (request.content_length or 0) > most:
        raise _TooLarge
    keep = request.client_max_size
    tail = bytearray()
    read = 0
    async for chunk in request.content.iter_any():
        read += len(chunk)
        if read > most:
            raise _TooLarge
        tail += chunk
        if len(tail) > keep:
            del tail[: len(tail) - keep]
    return bytes(tail)


def _not_utf8(request: web.Request) -> str | None:
    """Which header of the request is not UTF-8, or None.

    aiohttp hands on header bytes that are not UTF-8 as lone surrogates (``surrogateescape``), which
    no token or signature can match and which break whatever encodes them again. Such a request
    is refused here, at the door, with the same answer as a bad signature, so that no probe (nor
    the forwarding to another process) ever sees one."""
    for key, value in request.headers.items():
        if _UNDECODABLE.search(value):
            return f"the {key} header is not UTF-8"
    return None


class Inbound:
    """The inbound endpoints of one process."""

    def __init__(
        self,
        *,
        entries: Mapping[str, CheckEntry],
        locate: Locate,
        inbox: Inbox | None,
        clock: Clock,
        rate: str = "off",
        trusted: list[Network] | None = None,
        count: Callable[[str, Outcome], None] = lambda endpoint, outcome: None,
        body_timeout: float = 10.0,
    ) -> None:
        self._entries = entries
        self._locate = locate
        self._inbox = inbox
        self._clock = clock
        self._trusted = trusted or []
        self._count = count
        # limits (and the wrapt it brings) loads only when some check takes inbound requests.
        import limits
        from limits.aio.storage import MemoryStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        self._limits = limits.parse_many(rate) if rate != "off" else []
        self._limiter = MovingWindowRateLimiter(MemoryStorage()) if self._limits else None
        self._session: aiohttp.ClientSession | None = None
        self._body_timeout = body_timeout
        self._crashes: set[str] = set()

    def add_routes(self, app: web.Application) -> None:
        for endpoint in ENDPOINTS:
            app.router.add_route("*", f"/{endpoint}/{{check}}", self._handle)
            if endpoint in _ACTIONS:
                app.router.add_route(
                    "*", f"/{endpoint}/{{check}}/{{action:{_ACTIONS[endpoint]}}}", self._handle
                )
        app.on_cleanup.append(self._close)

    async def _close(self, _: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        """Take one request through the gates; the first gate that answers ends it, and what
        became of the request is counted once, here."""
        endpoint = request.path.split("/", 2)[1]
        try:
            outcome, response = await self._through_gates(request, endpoint)
        except _Answered as answer:
            outcome, response = answer.outcome, answer.response
        self._count(endpoint, outcome)
        return response

    async def _through_gates(self, request: web.Request, endpoint: str) -> tuple[Outcome, web.StreamResponse]:
        """The gates, in their order of precedence: first those that look at the request alone
        (rate, method, body, headers), then those that need the check it names. An unknown check,
        a header that is not UTF-8 and failed credentials all get the same 401, so that a caller
        without credentials learns nothing about which checks exist."""
        source = client_address(request, self._trusted)
        forwarded = self._forwarded(request)
        if not forwarded:
            await self._gate_rate_limit(source)  # 1. rate limit per source
        self._gate_method(request, endpoint)  # 2. method
        body = await self._gate_body(request, endpoint)  # 3. body size and time
        garbled = _not_utf8(request)  # 4. UTF-8, answered with the credentials (7)
        name = request.match_info["check"]
        entry = self._gate_known(name, endpoint)  # 5. a check of this endpoint
        route = self._locate(entry)  # 6. route: another process's check is passed on
        if garbled is None and route is not None and route.url and (route.local or not forwarded):
            return await self._forward(request, endpoint, route.url, body)
        inbound = InboundRequest(
            endpoint=endpoint,
            check=name,
            method=request.method,
            headers=request.headers,
            query=request.query,
            body=body,
            remote=source,
            received=self._clock.time(),
            received_monotonic=self._clock.monotonic(),
            action=request.match_info.get("action", ""),
        )
        self._gate_credentials(entry, inbound, garbled, ours=route is None)  # 7. authenticate
        inbox = self._gate_ours(name, route)  # 8. ours, with an inbox to deliver to
        self._gate_admit(entry, inbound)  # 9. admit
        inbox.deliver(inbound)  # 10. deliver
        return Outcome.ACCEPTED, web.json_response({"status": "accepted"})

    async def _gate_rate_limit(self, source: str) -> None:
        if self._limiter is None:
            return
        for item in self._limits:
            if not await self._limiter.hit(item, source):
                raise _Answered(
                    Outcome.RATE_LIMITED,
                    web.json_response(
                        {"error": "too many requests"},
                        status=429,
                        headers={"Retry-After": str(item.get_expiry())},
                    ),
                )

    def _gate_method(self, request: web.Request, endpoint: str) -> None:
        if request.method not in ENDPOINTS[endpoint]:
            raise _Answered(
                Outcome.BAD_METHOD,
                web.json_response(
                    {"error": "method not allowed"},
                    status=405,
                    headers={"Allow": ", ".join(ENDPOINTS[endpoint])},
                ),
            )

    async def _gate_body(self, request: web.Request, endpoint: str) -> bytes:
        body: bytes | None = None
        too_large = _Answered(Outcome.TOO_LARGE, web.json_response({"error": "body too large"}, status=413))
        try:
            # The server's header timeout ends with the head; a body trickled in must end too.
            with anyio.move_on_after(self._body_timeout):
                if endpoint in _TAIL_KEPT:
                    body = await _read_tail(request, request.client_max_size * _TAIL_KEPT[endpoint])
                else:
                    body = await request.read()
        except (web.HTTPRequestEntityTooLarge, _TooLarge):
            raise too_large from None
        if body is None:
            raise _Answered(
                Outcome.TIMEOUT, web.json_response({"error": "the body did not come in time"}, status=408)
            )
        return body

    def _gate_known(self, name: str, endpoint: str) -> CheckEntry:
        entry = self._entries.get(name)
        if entry is None or entry.probe.inbound != endpoint:
            raise _Answered(Outcome.REJECTED, web.json_response(_REJECTED, status=401))
        return entry

    def _gate_credentials(
        self, entry: CheckEntry, inbound: InboundRequest, garbled: str | None, *, ours: bool
    ) -> None:
        problem = garbled or self._authenticate(entry, inbound)
        if problem is None:
            return
        name = entry.check.name
        log.info("inbound request for check %s rejected: %s", name, problem, extra={"check": name})
        if ours and self._inbox is not None:
            # Held to report the problem, without the body no probe reads: a stranger's large
            # bodies would push the job's genuine requests out of the inbox's byte budget.
            self._inbox.deliver(replace(inbound, body=b""), problem)
        raise _Answered(Outcome.REJECTED, web.json_response(_REJECTED, status=401))

    def _gate_ours(self, name: str, route: Route | None) -> Inbox:
        if route is None and self._inbox is not None:
            return self._inbox
        # Not ours, and nowhere to pass it on to (or passed here by a process that thinks so).
        raise _Answered(
            Outcome.MISROUTED,
            web.json_response(
                {"error": f"this agent does not run check {name!r}; its owner could not be reached"},
                status=421,
            ),
        )

    def _gate_admit(self, entry: CheckEntry, inbound: InboundRequest) -> None:
        refusal = self._admit(entry, inbound)
        if refusal is not None:
            raise _Answered(
                Outcome.REFUSED, web.json_response({"error": refusal.message}, status=refusal.status)
            )

    def _authenticate(self, entry: CheckEntry, request: InboundRequest) -> str | None:
        """The probe's verdict on a request's credentials; a probe that raises rejects it."""
        try:
            return entry.probe.authenticate(entry.check, entry.settings, request)
        except Exception:
            self._crashed(entry, "authenticating")
            return "the probe failed to check the request's credentials (a bug; see the log)"

    def _admit(self, entry: CheckEntry, request: InboundRequest) -> Refusal | None:
        try:
            refusal = entry.probe.admit(entry.check, entry.settings, request)
        except Exception:
            self._crashed(entry, "reading")
            return Refusal(RefusalKind.UNREADABLE, "the request cannot be read")
        return refusal

    def _crashed(self, entry: CheckEntry, doing: str) -> None:
        # Once per check: a caller must not be able to fill the log with tracebacks.
        name = entry.check.name
        if name not in self._crashes:
            self._crashes.add(name)
            log.exception(
                "probe %s crashed %s an inbound request for check %s; logged once per check",
                entry.check.type,
                doing,
                name,
                extra={"check": name},
            )

    def _forwarded(self, request: web.Request) -> bool:
        """Whether another Vantage process passed this request on (believed from loopback and
        trusted networks only, so that a caller cannot skip the rate limit by saying so)."""
        if FORWARDED not in request.headers:
            return False
        try:
            peer = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        return peer.is_loopback or any(peer in network for network in self._trusted)

    async def _forward(
        self, request: web.Request, endpoint: str, owner: str, body: bytes
    ) -> tuple[Outcome, web.StreamResponse]:
        if self._session is None:
            await wait_for_certificates()
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        headers: CIMultiDict[str] = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP
        )
        headers[FORWARDED] = "1"
        url = f"{owner}/{endpoint}/{request.match_info['check']}"
        if action := request.match_info.get("action"):
            url += f"/{action}"  # one of _ACTIONS: nothing to quote
        try:
            async with self._session.request(
                request.method, url, params=request.query, data=body, headers=headers
            ) as answer:
                payload: Any = await answer.read()
                return Outcome.FORWARDED, web.Response(
                    body=payload, status=answer.status, content_type=answer.content_type or None
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("cannot pass an inbound request on to %s: %s", owner, exc)
            return Outcome.MISROUTED, web.json_response(
                {"error": "the agent that runs this check cannot be reached"}, status=503
            )
