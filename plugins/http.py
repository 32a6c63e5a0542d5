"""The ``http`` probe: one request (following redirects), timed by phase, judged by assertions.

Metric names follow blackbox_exporter's http prober so that its dashboards keep working.
"""

from __future__ import annotations

import json
import time
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import ByteSize, Field, PrivateAttr, field_validator, model_validator

from agent.sdk import (
    Assertion,
    AssertionOp,
    AssertionOutcome,
    AssertionSource,
    AttributeValue,
    Check,
    Duration,
    Event,
    HttpClient,
    HttpExchange,
    HttpFailure,
    MetricKind,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Sample,
    Subject,
    TLSOptions,
    clip,
    format_duration,
)

from ._toolkit.auth import TOKEN_EXPIRY, Auth, AuthFailure, Credential, TokenCache, authorize
from ._toolkit.headers import (
    Lifecycle,
    RateLimit,
    RateLimitNames,
    http_date,
    parse_lifecycle,
    parse_ratelimit,
)
from ._toolkit.net import IP_METRICS, LOOKUP_TIME, ResolveFailed, check_proxy_url, ip_values, resolve
from ._toolkit.openapi import OpenAPIDocument, load_document, parse_document
from ._toolkit.schema import DriftTracker
from ._toolkit.tls import TLS_METRICS, tls_values
from ._toolkit.verdict import judge, validate_http_url

__all__ = ["HttpProbe", "HttpSettings"]

# blackbox_exporter's spelling of each version (Go's Response.Proto), and this client's.
_HTTP_VERSIONS = {
    "HTTP/1.0": "1.0",
    "HTTP/1.1": "1.1",
    "HTTP/2": "2",
    "HTTP/2.0": "2",
    "HTTP/3": "3",
    "HTTP/3.0": "3",
}
_VERSION_NAMES = {"1.0": "HTTP/1.0", "1.1": "HTTP/1.1", "2": "HTTP/2.0", "3": "HTTP/3.0"}
_OTHER_FAMILY = {"ipv4": "ipv6", "ipv6": "ipv4"}
# The rules blackbox_exporter calls regular expressions (fail_if_body_matches_regexp, ...): a run
# they fail reports probe_failed_due_to_regex 1.
_REGEX_OPS = {AssertionOp.MATCHES, AssertionOp.NOT_MATCHES}
_REGEX_SOURCES = {AssertionSource.HEADER, AssertionSource.BODY}


class RateLimitHeaderNames(ProbeSettings):
    """A vendor's own rate-limit header names."""

    remaining: str | None = None
    limit: str | None = None
    reset: str | None = None
    used_of_limit: str | None = None
    """A header of the form ``used/limit``."""


class OpenAPI(ProbeSettings):
    """Validate responses against their operation's schema in an OpenAPI 3.x document."""

    document: str
    """A file path, or an http(s) URL fetched once and kept while a check uses it."""
    operation: str | None = None
    """The path template (``/v1/charges/{id}``) when the target's path does not match one."""

    _parsed: OpenAPIDocument | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load(self) -> OpenAPI:
        if not self.document.startswith(("http://", "https://")):
            self._parsed = load_document(Path(self.document))
        return self


class SchemaDrift(ProbeSettings):
    """Watch the response's shape for changes against a baseline."""

    baseline_file: Path | None = None
    """A sample response (JSON) whose shape is the baseline; else the first successful response."""
    fail: bool = False
    """Fail the run (reason ``schema``) on drift; otherwise it is counted and noted only."""

    @field_validator("baseline_file")
    @classmethod
    def _sample(cls, value: Path | None) -> Path | None:
        if value is not None:
            try:
                json.loads(value.read_text(encoding="utf-8"))
            except OSError as exc:
                raise ValueError(f"{str(value)!r} cannot be read: {exc.strerror}") from None
            except ValueError as exc:
                raise ValueError(f"{str(value)!r} is not JSON: {exc}") from None
        return value


class HttpSettings(ProbeSettings):
    """Settings of an ``http`` check."""

    method: str = Field("GET", pattern=r"^[A-Za-z]+$")
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str | list[str]] = Field(default_factory=dict)
    body: str | None = None
    json_body: Any = Field(None, alias="json")
    origin: str | None = None
    """Sent as the ``Origin`` header, so that CORS answers can be asserted on."""
    follow_redirects: bool = True
    max_redirects: int = Field(10, ge=0, le=50)
    fresh_connection: bool = True
    ip_family: Literal["auto", "ipv4", "ipv6"] = "auto"
    ip_fallback: bool = False
    """blackbox_exporter's ``ip_protocol_fallback``: a name with no address of ``ip_family`` is
    tried in the other family; off, the family is a requirement."""
    tls: TLSOptions = Field(default_factory=TLSOptions)
    max_body: ByteSize = Field(ByteSize(1 << 20), ge=0, le=1 << 30)
    """Read at most this much of the body; the rest is cut, never buffered."""
    assertions: tuple[Assertion, ...] = Field((), alias="assert")
    openapi: OpenAPI | None = None
    """Validate each response against the OpenAPI document's schema for it (reason ``schema``)."""
    schema_drift: SchemaDrift | None = None
    """Compare each response's shape with a baseline (``probe_schema_drift_total``)."""
    auth: Auth | None = None
    """Credentials: ``basic``, ``bearer``, ``api_key`` or ``oauth2_client_credentials``."""
    ratelimit_headers: RateLimitHeaderNames = Field(default_factory=lambda: RateLimitHeaderNames())
    """Header names for a vendor that uses none of the common rate-limit headers."""
    fail_if_ratelimit_below: float | None = Field(None, gt=0, lt=1)
    """Fail (reason ``rate_limited``) when remaining/limit drops under this fraction (``0.1``)."""
    fail_if_sunset_within: Duration | None = None
    """Fail (reason ``assertion``) when the API's announced ``Sunset`` is closer than this."""
    valid_http_versions: tuple[str, ...] = ()
    """blackbox_exporter's option: the versions a response may come in (``HTTP/1.1``,
    ``HTTP/2.0``, ...); another fails the run (reason ``assertion``). Empty: any."""
    proxy_url: str | None = None
    """An ``http://`` or ``https://`` proxy for every request of the check (CONNECT for https
    targets); credentials in it are secrets."""
    proxy_skip_resolve: bool = False
    """blackbox_exporter's ``skip_resolve_phase_with_proxy``: with a proxy, do not look the target's
    name up here first (the proxy does); off, a name that does not resolve here fails the run."""
    compression: Literal["gzip", "br", "deflate", "zstd", "identity"] | None = None
    """blackbox_exporter's ``compression``: ask for this encoding (``Accept-Encoding``, unless the
    check sets that header) and fail (``assertion``) when the response comes in another."""
    fail_if_body_over: ByteSize | None = Field(None, ge=0, le=1 << 30)
    """blackbox_exporter's ``body_size_limit``: a decoded body longer than this fails the run
    (``assertion``); the body is read up to it, whatever ``max_body`` says."""
    fail_if_ssl: bool = False
    """Fail (``assertion``) when the final response came over TLS (blackbox ``fail_if_ssl``)."""
    fail_if_not_ssl: bool = False
    """Fail (``assertion``) when the final response did not come over TLS (blackbox
    ``fail_if_not_ssl``)."""

    @field_validator("valid_http_versions")
    @classmethod
    def _versions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [version for version in value if version.upper() not in _HTTP_VERSIONS]
        if unknown:
            raise ValueError(
                f"unknown HTTP version {unknown[0]!r}: use HTTP/1.0, HTTP/1.1, HTTP/2.0 or HTTP/3.0"
            )
        return value

    @field_validator("proxy_url")
    @classmethod
    def _proxy(cls, value: str | None) -> str | None:
        return check_proxy_url(value)

    @model_validator(mode="after")
    def _one_body(self) -> HttpSettings:
        if self.body is not None and self.json_body is not None:
            raise ValueError("give 'body' or 'json', not both")
        if self.fail_if_ssl and self.fail_if_not_ssl:
            raise ValueError("give 'fail_if_ssl' or 'fail_if_not_ssl', not both: every run would fail")
        accepted = next((v for k, v in self.headers.items() if k.lower() == "accept-encoding"), None)
        if self.compression and accepted is not None:
            # As blackbox_exporter checks it: asking not to get the encoding required makes no sense.
            codings = {part.split(";", 1)[0].strip().lower() for part in accepted.split(",")}
            if self.compression not in codings and "*" not in codings:
                raise ValueError(
                    f"the Accept-Encoding header does not accept compression {self.compression!r}"
                )
        return self

    @property
    def body_cap(self) -> int:
        """How much of the body a run reads: up to ``fail_if_body_over`` when set, to know it was
        passed; else ``max_body``."""
        return int(self.fail_if_body_over if self.fail_if_body_over is not None else self.max_body)


class HttpProbe(Probe[HttpSettings]):
    """Sends one HTTP request per run and checks the response."""

    name = "http"
    Settings = HttpSettings
    phase_metric = "probe.http.duration"
    metrics = (
        MetricSpec.gauge("probe.http.status_code", "", "Response HTTP status code"),
        MetricSpec.gauge(
            "probe.http.duration",
            "s",
            "Duration of the HTTP request by phase, summed over all redirects",
            "phase",
        ),
        MetricSpec.gauge(
            "probe.http.content_length",
            "{byte}",
            "Length of the HTTP response body as its Content-Length header declares it, -1 without one",
        ),
        MetricSpec.gauge(
            "probe.http.uncompressed_body_length",
            "{byte}",
            "Length of the response body read, decoded from its Content-Encoding",
        ),
        MetricSpec.gauge("probe.http.version", "", "HTTP version of the response"),
        MetricSpec.gauge(
            "probe.http.redirects", "", "The number of redirects received, an unfollowed one included"
        ),
        MetricSpec.gauge("probe.http.ssl", "", "1 if TLS was used for the final hop, else 0"),
        MetricSpec.gauge(
            "probe.http.last_modified_timestamp",
            "s",
            "The Last-Modified header of the response, epoch seconds",
        ),
        MetricSpec.gauge(
            "probe.failed_due_to_regex",
            "",
            "1 if the run failed because a header or body regular-expression rule failed, else 0",
        ),
        LOOKUP_TIME,
        *IP_METRICS,
        *TLS_METRICS,
        TOKEN_EXPIRY,
        MetricSpec(
            "probe.schema.drift",
            MetricKind.COUNTER,
            "{response}",
            "Responses whose shape (field paths and JSON types) differs from the baseline",
        ),
        MetricSpec.gauge("probe.ratelimit.remaining", "", "Requests left in the current rate-limit window"),
        MetricSpec.gauge("probe.ratelimit.limit", "", "Requests allowed in the rate-limit window"),
        MetricSpec.gauge("probe.ratelimit.reset", "s", "Seconds until the rate-limit window resets"),
        MetricSpec.gauge(
            "probe.api.deprecated", "", "1 if the response announces that the API is or will be deprecated"
        ),
        MetricSpec.gauge(
            "probe.api.sunset_timestamp",
            "s",
            "When the API stops working, from the Sunset header, epoch seconds",
        ),
        MetricSpec(
            "probe.http.malformed_headers",
            MetricKind.COUNTER,
            "{header}",
            "Rate-limit, deprecation and sunset headers that could not be read, by header",
            ("header",),
        ),
    )

    def __init__(self) -> None:
        # Shared by the checks that name the same document URL, and holding only what a live
        # check holds: each check keeps its document in its own ctx.state (_HeldDocument), so a
        # document goes with the last check that uses it. Nothing here is keyed by check name.
        self._documents: weakref.WeakValueDictionary[str, OpenAPIDocument] = weakref.WeakValueDictionary()

    def validate_target(self, target: str) -> None:
        validate_http_url(target)

    async def run(self, check: Check, settings: HttpSettings, ctx: ProbeContext) -> ProbeResult:
        """One request, then the findings on its response, the first failing one deciding:

        1. no credentials (``auth``, or ``rate_limited`` from the token endpoint), no response;
        2. the shared verdict on status, credentials, 429 and assertions (``_toolkit/verdict.py``);
        3. blackbox_exporter's order after that (``assertion``): the ``compression``, the body
           over ``fail_if_body_over``, an HTTP version outside ``valid_http_versions``,
           ``fail_if_ssl`` / ``fail_if_not_ssl``;
        4. the rate-limit quota under ``fail_if_ratelimit_below`` (``rate_limited``);
        5. the OpenAPI schema (``schema``), fetched and checked only while nothing failed;
        6. schema drift (``schema`` when ``fail``), counted and noted whatever came before;
        7. a sunset within ``fail_if_sunset_within`` (``assertion``).
        """
        tokens = ctx.state.get(TokenCache)
        sent = await _send(check, settings, ctx, tokens)
        if isinstance(sent, ProbeResult):
            return sent
        exchange, credential = sent
        response = _Response.read(exchange, credential, settings, ctx)
        outcomes = tuple(assertion.evaluate(response.subject) for assertion in settings.assertions)
        judged = judge(
            exchange, ctx, tokens, assertions=settings.assertions, outcomes=outcomes, quota=response.quota
        )
        response.values["probe.failed_due_to_regex"] = _failed_due_to_regex(judged.reason, outcomes)
        finding = (
            _found(judged.reason, judged.message)
            or _compression_finding(settings, exchange)
            or _body_size_finding(settings, exchange)
            or _version_finding(settings, exchange)
            or _ssl_finding(settings, exchange)
            or _quota_finding(settings, response.quota)
        )
        if finding is None and settings.openapi is not None:
            finding = await self._openapi_finding(settings, response, ctx)
        drifted = _drift_finding(check, settings, response, ctx)  # counted even after a failure
        finding = finding or drifted or _sunset_finding(settings, response.lifecycle, ctx.clock.time())
        reason, message = finding or (None, "")
        return ProbeResult(
            success=reason is None,
            reason=reason,
            message=ctx.redact(message),
            phases=exchange.phases,
            values=response.values,
            samples=response.samples,
            attributes=response.attributes,
            assertions=outcomes,
            events=response.events,
            retry_after=judged.retry_after,
        )

    async def _openapi_finding(
        self, settings: HttpSettings, response: _Response, ctx: ProbeContext
    ) -> _Finding | None:
        exchange = response.exchange
        async with ctx.http(
            settings.tls, fresh=settings.fresh_connection, proxy_url=settings.proxy_url
        ) as client:
            problem = await self._openapi_problem(
                settings,
                exchange.method,
                exchange.url.path,
                response.subject,
                client,
                ctx,
            )
        return (Reason.SCHEMA, problem) if problem else None

    async def _openapi_problem(
        self,
        settings: HttpSettings,
        method: str,
        path: str,
        subject: Subject,
        client: HttpClient,
        ctx: ProbeContext,
    ) -> str | None:
        """Why the response does not match its OpenAPI schema, or None."""
        spec = settings.openapi
        assert spec is not None
        held = ctx.state.get(_HeldDocument)
        document = spec._parsed or held.document(spec.document) or self._documents.get(spec.document)
        if document is None:
            try:
                with ctx.step("openapi document"):
                    document = await _fetch_document(spec.document, client)
            except (HttpFailure, ValueError) as exc:
                detail = exc.message if isinstance(exc, HttpFailure) else str(exc)
                return f"the OpenAPI document could not be had: {detail}"
            self._documents[spec.document] = document
        if spec._parsed is None:
            held.keep(spec.document, document)
        template = spec.operation or document.template_for(path, method)
        if template is None or method.lower() not in document.document["paths"].get(template, {}):
            return f"no operation in the OpenAPI document matches {method} {spec.operation or path}"
        status = subject.status or 0
        try:
            body = subject.json()
        except ValueError as exc:
            return f"the response to {method} {template} cannot be checked against OpenAPI: {exc}"
        problem = document.validate(template, method, status, body, ctx.redact)
        return (
            f"the response does not match the OpenAPI schema of {method} {template} ({status}): {problem}"
            if problem
            else None
        )


_Finding = tuple[Reason, str]
"""A reason the run fails, and the words for it."""


def _found(reason: Reason | None, message: str) -> _Finding | None:
    return (reason, message) if reason is not None else None


class _HeldDocument:
    """The OpenAPI document (from a URL) a check validates against, kept in its ``ctx.state``."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.parsed: OpenAPIDocument | None = None

    def document(self, url: str) -> OpenAPIDocument | None:
        return self.parsed if url == self.url else None

    def keep(self, url: str, document: OpenAPIDocument) -> None:
        self.url, self.parsed = url, document


async def _send(
    check: Check, settings: HttpSettings, ctx: ProbeContext, tokens: TokenCache
) -> tuple[HttpExchange, Credential] | ProbeResult:
    """The response and the credential it was asked with, or the result of a run that got none.

    With ``ip_fallback``, a target whose name has no address of ``ip_family`` is asked again in the
    other family (the lookup failed: nothing was sent).
    """
    sent = await _send_in(check, settings, ctx, tokens, settings.ip_family)
    other = _OTHER_FAMILY.get(settings.ip_family)
    if (
        settings.ip_fallback
        and other is not None
        and isinstance(sent, ProbeResult)
        and sent.reason is Reason.DNS
    ):
        sent = await _send_in(check, settings, ctx, tokens, other)
    return sent


async def _send_in(
    check: Check, settings: HttpSettings, ctx: ProbeContext, tokens: TokenCache, ip_family: str
) -> tuple[HttpExchange, Credential] | ProbeResult:
    headers = dict(settings.headers)
    params: dict[str, str | list[str]] = dict(settings.query)
    if settings.origin:
        headers["Origin"] = settings.origin
    data = settings.body
    if settings.json_body is not None:
        data = json.dumps(settings.json_body)
        headers.setdefault("Content-Type", "application/json")
    if settings.compression and not any(name.lower() == "accept-encoding" for name in headers):
        headers["Accept-Encoding"] = settings.compression
    looked_up: _LookedUp | None = None
    if settings.proxy_url and not settings.proxy_skip_resolve:
        found = await _look_up(check.target, ip_family)
        if isinstance(found, ProbeResult):
            return found
        looked_up = found
        ctx.keep_values({"probe.dns.lookup_time": found.seconds, **ip_values(found.address)})
    async with ctx.http(
        settings.tls,
        fresh=settings.fresh_connection,
        ip_family=ip_family,
        proxy_url=settings.proxy_url,
    ) as client:
        try:
            credential = await authorize(settings.auth, client, ctx, tokens)
        except AuthFailure as failure:
            return ProbeResult.failure(
                failure.reason, failure.message, phases=failure.phases, retry_after=failure.retry_after
            )
        headers |= credential.headers
        params |= credential.params
        try:
            exchange = await client.request(
                settings.method,
                check.target,
                headers=headers,
                params=params,
                data=data,
                follow_redirects=settings.follow_redirects,
                max_redirects=settings.max_redirects,
                max_body=settings.body_cap,
                on_cut=None if settings.proxy_url else partial(_keep_found, ctx),
            )
        except HttpFailure as failure:
            if not _accepted_at_the_limit(settings, failure.response):
                return _failed(failure, looked_up)
            assert failure.response is not None
            exchange = failure.response
    if looked_up is not None:
        exchange.phases["resolve"] += looked_up.seconds
        exchange.lookup_time, exchange.address = looked_up.seconds, looked_up.address
    elif settings.proxy_url:
        exchange.address = ""  # the proxy's, not the target's
    return exchange, credential


def _keep_found(ctx: ProbeContext, address: str, lookup_time: float) -> None:
    """What a request cut by the run's timeout had found, for the timeout's failure to report."""
    ctx.keep_values({"probe.dns.lookup_time": lookup_time, **ip_values(address)})


def _accepted_at_the_limit(settings: HttpSettings, response: HttpExchange | None) -> bool:
    """Whether the redirect the limit stopped at is the response the check asks for: it has
    ``status`` rules and the 3xx passes them all (``valid_status_codes: [302]`` in blackbox_exporter,
    which judges the last response it got); then the run goes on with it, else it fails with
    reason ``redirects``."""
    if response is None:
        return False
    rules = [a for a in settings.assertions if AssertionSource(a.source) is AssertionSource.STATUS]
    subject = Subject(response.status, response.headers, b"", response.duration)
    return bool(rules) and all(rule.evaluate(subject).passed for rule in rules)


@dataclass(frozen=True, slots=True)
class _LookedUp:
    """The target's name looked up here before a request through a proxy (blackbox_exporter's
    resolve phase when ``skip_resolve_phase_with_proxy`` is off)."""

    address: str
    seconds: float


async def _look_up(target: str, ip_family: str) -> _LookedUp | ProbeResult:
    host = urlsplit(target).hostname or ""
    started = time.perf_counter()
    try:
        found = await resolve(host, None, ip_family)  # type: ignore[arg-type]
    except ResolveFailed as failed:
        return ProbeResult.failure(
            failed.reason, failed.message, phases={"resolve": time.perf_counter() - started}
        )
    return _LookedUp(str(found[0][4][0]), time.perf_counter() - started)


def _failed(failure: HttpFailure, looked_up: _LookedUp | None) -> ProbeResult:
    """A run that got no usable response. As blackbox_exporter reports one: status code 0 and
    empty figures when nothing came, with the address tried when a connection was; the last
    response's status and redirect count when the redirect limit stopped the run."""
    phases = dict(failure.phases)
    values: dict[str, float] = {
        "probe.http.status_code": 0,
        "probe.http.ssl": 0,
        "probe.http.content_length": 0,
        "probe.http.uncompressed_body_length": 0,
        "probe.http.redirects": 0,
        "probe.http.version": 0,
        "probe.failed_due_to_regex": 0,
    }
    if failure.response is not None:
        values |= _exchange_values(failure.response)
    else:
        if "resolve" in phases:
            values["probe.dns.lookup_time"] = phases["resolve"]
        # The address a refused connection or failed handshake was made to, as blackbox reports.
        values |= ip_values(failure.address)  # none for "" (nothing tried, or through a proxy)
    if looked_up is not None:
        phases["resolve"] = phases.get("resolve", 0.0) + looked_up.seconds
        values["probe.dns.lookup_time"] = looked_up.seconds
        values |= ip_values(looked_up.address)
    return ProbeResult.failure(failure.reason, failure.message, phases=phases, values=values)


def _exchange_values(exchange: HttpExchange) -> dict[str, float]:
    """The blackbox_exporter metrics of a response."""
    values: dict[str, float] = {
        "probe.http.status_code": exchange.status,
        "probe.http.content_length": exchange.content_length,
        "probe.http.uncompressed_body_length": exchange.body_length,
        "probe.http.version": float(exchange.http_version),
        "probe.http.redirects": exchange.redirects,
        "probe.http.ssl": 1.0 if exchange.tls else 0.0,
    }
    if exchange.address:  # no address of the target's through a proxy that looked it up itself
        values["probe.dns.lookup_time"] = exchange.lookup_time
        values |= ip_values(exchange.address)
    modified = exchange.headers.get("Last-Modified")
    if modified is not None:
        try:
            values["probe.http.last_modified_timestamp"] = float(int(http_date(modified)))
        except ValueError:
            pass  # blackbox_exporter leaves the metric out for a date it cannot read
    return values


@dataclass(slots=True)
class _Response:
    """A response as the run reports it: its metrics, samples, attributes and events, its quota
    and lifecycle headers, and the subject its assertions read."""

    exchange: HttpExchange
    subject: Subject
    quota: RateLimit
    lifecycle: Lifecycle
    values: dict[str, float]
    samples: tuple[Sample, ...]
    attributes: dict[str, AttributeValue]
    events: tuple[Event, ...]

    @classmethod
    def read(
        cls, exchange: HttpExchange, credential: Credential, settings: HttpSettings, ctx: ProbeContext
    ) -> _Response:
        values = _exchange_values(exchange)
        samples: tuple[Sample, ...] = ()
        if exchange.tls:
            tls_metrics, samples = tls_values(exchange.tls)
            values.update(tls_metrics)
        attributes: dict[str, AttributeValue] = {
            "http.response.status_code": exchange.status,
            "vantage.http.redirects": exchange.redirects,
        }
        if exchange.truncated:
            attributes["vantage.http.body_truncated"] = True
        if credential.expires_at is not None:
            values["probe.auth.token_expiry_timestamp"] = credential.expires_at
        names = settings.ratelimit_headers
        own = (names.remaining, names.limit, names.reset, names.used_of_limit)
        quota = parse_ratelimit(
            exchange.headers,
            ctx.clock.time(),
            RateLimitNames(*own) if any(own) else None,
            redact=ctx.redact,
        )
        for name, value in (("remaining", quota.remaining), ("limit", quota.limit), ("reset", quota.reset)):
            if value is not None:
                values[f"probe.ratelimit.{name}"] = value
        lifecycle = parse_lifecycle(exchange.headers, exchange.links, redact=ctx.redact)
        values["probe.api.deprecated"] = 1.0 if lifecycle.deprecated else 0.0
        if lifecycle.sunset_at is not None:
            values["probe.api.sunset_timestamp"] = lifecycle.sunset_at
        malformed = quota.malformed + lifecycle.malformed
        samples += tuple(
            Sample("probe.http.malformed_headers", 1.0, {"header": header}) for header, _ in malformed
        )
        subject = Subject(
            exchange.status,
            exchange.headers,
            exchange.body,
            exchange.duration,
            exchange.truncated,
            redact=ctx.redact,
        )
        events = _lifecycle_events(lifecycle, malformed)
        return cls(exchange, subject, quota, lifecycle, values, samples, attributes, events)


def _version_finding(settings: HttpSettings, exchange: HttpExchange) -> _Finding | None:
    """``assertion`` when the response's HTTP version is not one of ``valid_http_versions``."""
    if not settings.valid_http_versions:
        return None
    allowed = {_HTTP_VERSIONS[version.upper()] for version in settings.valid_http_versions}
    if exchange.http_version in allowed:
        return None
    got = _VERSION_NAMES.get(exchange.http_version, f"HTTP/{exchange.http_version}")
    return Reason.ASSERTION, (
        f"the response came over {got}, not one of valid_http_versions "
        f"({', '.join(settings.valid_http_versions)})"
    )


def _failed_due_to_regex(reason: Reason | None, outcomes: tuple[AssertionOutcome, ...]) -> float:
    """blackbox_exporter's ``probe_failed_due_to_regex``: 1 when the status passed and a header
    or body regular-expression rule failed (its only kind of header and body rule), else 0."""
    if reason is not Reason.ASSERTION:
        return 0.0
    return float(
        any(
            not outcome.passed and outcome.op in _REGEX_OPS and outcome.source in _REGEX_SOURCES
            for outcome in outcomes
        )
    )


def _compression_finding(settings: HttpSettings, exchange: HttpExchange) -> _Finding | None:
    """``assertion`` when the response is not in the encoding ``compression`` requires."""
    wanted = settings.compression
    if wanted is None:
        return None
    codings = [
        token
        for value in exchange.headers.getall("Content-Encoding", [])
        for token in (part.strip().lower() for part in value.split(","))
        if token and token != "identity"
    ]
    got = ", ".join(codings) or "identity"
    if got == wanted:
        return None
    return Reason.ASSERTION, f"the response came in {got}, not in {wanted} (compression)"


def _body_size_finding(settings: HttpSettings, exchange: HttpExchange) -> _Finding | None:
    """``assertion`` when the decoded body is longer than ``fail_if_body_over``."""
    limit = settings.fail_if_body_over
    if limit is None or not exchange.truncated:
        return None
    return Reason.ASSERTION, f"the body is longer than fail_if_body_over ({limit.human_readable()})"


def _ssl_finding(settings: HttpSettings, exchange: HttpExchange) -> _Finding | None:
    """``assertion`` when the final response's use of TLS is what ``fail_if_(not_)ssl`` refuses."""
    if settings.fail_if_ssl and exchange.tls is not None:
        return Reason.ASSERTION, "the final response came over TLS (fail_if_ssl)"
    if settings.fail_if_not_ssl and exchange.tls is None:
        return Reason.ASSERTION, "the final response did not come over TLS (fail_if_not_ssl)"
    return None


def _quota_finding(settings: HttpSettings, quota: RateLimit) -> _Finding | None:
    """``rate_limited`` when the quota left is under ``fail_if_ratelimit_below``."""
    threshold = settings.fail_if_ratelimit_below
    if not threshold or quota.remaining is None or not quota.limit:
        return None
    share = quota.remaining / quota.limit
    if share >= threshold:
        return None
    return Reason.RATE_LIMITED, (
        f"rate-limit quota at {share:.0%} ({quota.remaining:g} of {quota.limit:g} left), "
        f"below fail_if_ratelimit_below ({threshold:.0%})"
    )


def _drift_finding(
    check: Check, settings: HttpSettings, response: _Response, ctx: ProbeContext
) -> _Finding | None:
    """Compare a whole 2xx JSON body's shape with the check's baseline (in its ``ctx.state``);
    a drift is counted and noted on ``response``, and is a finding when ``fail`` is set."""
    drift_settings, exchange = settings.schema_drift, response.exchange
    if not drift_settings or not 200 <= exchange.status < 300 or exchange.truncated:
        return None
    try:
        document = response.subject.json()
    except ValueError:
        return None
    tracker = ctx.state.get(DriftTracker)
    drift = tracker.check(check.name, document, ctx.state_dir, drift_settings.baseline_file)
    if not drift:
        return None
    response.values["probe.schema.drift"] = 1.0
    response.events += (
        Event(
            "schema_drift",
            {
                "vantage.schema.removed": clip(", ".join(drift.removed), 1000, ctx.redact),
                "vantage.schema.retyped": clip(", ".join(drift.retyped), 1000, ctx.redact),
                "vantage.schema.added": clip(", ".join(drift.added), 1000, ctx.redact),
            },
        ),
    )
    return (
        (Reason.SCHEMA, f"the response's shape changed: {drift.describe()}") if drift_settings.fail else None
    )


def _sunset_finding(settings: HttpSettings, lifecycle: Lifecycle, now: float) -> _Finding | None:
    """``assertion`` when the announced sunset is closer than ``fail_if_sunset_within``."""
    window = settings.fail_if_sunset_within
    if window is None or lifecycle.sunset_at is None:
        return None
    left = lifecycle.sunset_at - now
    if left >= window:
        return None
    when = datetime.fromtimestamp(lifecycle.sunset_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    due = f"in {format_duration(round(left))}" if left > 0 else "already passed"
    return Reason.ASSERTION, (
        f"the API sunsets on {when} ({due}), within fail_if_sunset_within ({format_duration(window)})"
    )


async def _fetch_document(url: str, client: HttpClient) -> OpenAPIDocument:
    exchange = await client.request("GET", url, max_body=16 << 20)
    if exchange.status != 200:
        raise ValueError(f"the OpenAPI document {url} answered HTTP {exchange.status}")
    if exchange.truncated:
        raise ValueError(f"the OpenAPI document {url} is larger than 16 MiB")
    return parse_document(exchange.body.decode("utf-8", "replace"), url)


def _lifecycle_events(lifecycle: Lifecycle, malformed: tuple[tuple[str, str], ...]) -> tuple[Event, ...]:
    events = [
        Event("malformed_header", {"vantage.header": header, "vantage.problem": problem})
        for header, problem in malformed
    ]
    if lifecycle.deprecated or lifecycle.sunset_at is not None:
        attributes: dict[str, AttributeValue] = {"vantage.api.deprecated": lifecycle.deprecated}
        if lifecycle.deprecated_at is not None:
            attributes["vantage.api.deprecated_at"] = _iso(lifecycle.deprecated_at)
        if lifecycle.sunset_at is not None:
            attributes["vantage.api.sunset_at"] = _iso(lifecycle.sunset_at)
        for rel, url in lifecycle.links.items():
            attributes[f"vantage.api.{rel}_link"] = url
        events.append(Event("api_deprecation", attributes))
    return tuple(events)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()
