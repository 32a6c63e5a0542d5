"""Credentials for probes that make HTTP requests: basic, bearer, API key and OAuth 2.0 client
credentials, with tokens cached per check (in the check's ``ctx.state``) and refreshed before they
expire.

Shared by the probes that make HTTP requests. A token request that fails is an ``AuthFailure``
naming the token endpoint's status and OAuth error code, distinct from a failure of the API call.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Literal
from urllib.parse import quote, urlsplit

from pydantic import Field, field_validator

from agent.sdk import (
    HttpClient,
    HttpFailure,
    MetricKind,
    MetricSpec,
    ProbeContext,
    ProbeSettings,
    Reason,
    format_duration,
)

from .verdict import judge

__all__ = ["TOKEN_EXPIRY", "Auth", "AuthFailure", "Credential", "TokenCache", "authorize", "jwt_expiry"]

TOKEN_EXPIRY = MetricSpec(
    "probe.auth.token_expiry_timestamp",
    MetricKind.GAUGE,
    "s",
    "When the credential in use expires (expires_in, or a JWT's exp), epoch seconds",
)

_REFRESH_SHARE = 0.2  # refresh once 80% of a token's life is gone...
_REFRESH_MAX = 300.0  # ...or five minutes before it ends, whichever comes first


class BasicAuth(ProbeSettings):
    type: Literal["basic"]
    username: str
    password: str


class BearerAuth(ProbeSettings):
    type: Literal["bearer"]
    token: str


class ApiKeyAuth(ProbeSettings):
    type: Literal["api_key"]
    name: str = Field(min_length=1)
    value: str
    location: Literal["header", "query"] = Field("header", alias="in")


class OAuth2ClientCredentials(ProbeSettings):
    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: str
    client_secret: str
    scopes: tuple[str, ...] = ()
    audience: str | None = None
    extra: dict[str, str] = Field(default_factory=dict)
    """More form fields for the token request (``resource``, vendor-specific ones)."""
    client_auth: Literal["basic", "form"] = "basic"
    """Send the client secret as HTTP Basic (RFC 6749's preference) or in the form."""

    @field_validator("token_url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL")
        return value


Auth = Annotated[BasicAuth | BearerAuth | ApiKeyAuth | OAuth2ClientCredentials, Field(discriminator="type")]


class AuthFailure(Exception):
    """Credentials could not be had: the message says what the token endpoint answered.

    The reason is ``auth``, or ``rate_limited`` (with the endpoint's ``Retry-After`` back-off in
    ``retry_after``) when the token endpoint answered 429.
    """

    def __init__(
        self,
        message: str,
        phases: dict[str, float] | None = None,
        *,
        reason: Reason = Reason.AUTH,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.phases = phases or {}
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Credential:
    """What a request carries, and when the credential in use expires (epoch seconds)."""

    headers: dict[str, str]
    params: dict[str, str]
    expires_at: float | None = None


@dataclass(slots=True)
class _Token:
    value: str
    fetched_at: float
    expires_at: float | None


_TokenKey = tuple[str, str, tuple[str, ...]]  # token URL, client id, scopes


class TokenCache:
    """One check's OAuth tokens, so that a token is fetched once per lifetime, not once per run.

    It lives in the check's ``ctx.state`` (``ctx.state.get(TokenCache)``), so it goes when the
    check goes; within it, tokens are told apart by endpoint, client and scopes."""

    def __init__(self) -> None:
        self._tokens: dict[_TokenKey, _Token] = {}

    def get(self, key: _TokenKey, now: float) -> _Token | None:
        token = self._tokens.get(key)
        if token is None or token.expires_at is None:
            return token
        life = token.expires_at - token.fetched_at
        if now >= token.expires_at - min(_REFRESH_MAX, life * _REFRESH_SHARE):
            return None
        return token

    def put(self, key: _TokenKey, token: _Token) -> None:
        self._tokens[key] = token

    def forget(self, check: str | None = None) -> None:
        """Drop the tokens (after a 401, the next run fetches a fresh one).

        ``check`` is the check whose tokens these are, as the verdict names it: the cache holds
        one check's tokens only, so all of them go."""
        self._tokens.clear()

    def __len__(self) -> int:
        return len(self._tokens)


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it; None for anything else."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


async def authorize(
    auth: BasicAuth | BearerAuth | ApiKeyAuth | OAuth2ClientCredentials | None,
    client: HttpClient,
    ctx: ProbeContext,
    cache: TokenCache,
) -> Credential:
    """The headers and query parameters that carry ``auth``, fetching a token when needed.

    ``cache`` is the check's own (``ctx.state.get(TokenCache)``)."""
    if auth is None:
        return Credential({}, {})
    if isinstance(auth, BasicAuth):
        pair = base64.b64encode(f"{auth.username}:{auth.password}".encode()).decode()
        # The password's own base64 is not inside that of "user:password": redact the pair too.
        ctx.redact.add(pair)
        return Credential({"Authorization": f"Basic {pair}"}, {})
    if isinstance(auth, BearerAuth):
        return Credential({"Authorization": f"Bearer {auth.token}"}, {}, jwt_expiry(auth.token))
    if isinstance(auth, ApiKeyAuth):
        if auth.location == "query":
            return Credential({}, {auth.name: auth.value})
        return Credential({auth.name: auth.value}, {})
    key = (auth.token_url, auth.client_id, auth.scopes)
    now = ctx.clock.time()
    token = cache.get(key, now)
    if token is None:
        with ctx.step("oauth2 token"):
            token = await _fetch_token(auth, client, ctx)
        cache.put(key, token)
    return Credential({"Authorization": f"Bearer {token.value}"}, {}, token.expires_at)


async def _fetch_token(auth: OAuth2ClientCredentials, client: HttpClient, ctx: ProbeContext) -> _Token:
    form = {"grant_type": "client_credentials", **auth.extra}
    if auth.scopes:
        form["scope"] = " ".join(auth.scopes)
    if auth.audience:
        form["audience"] = auth.audience
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if auth.client_auth == "basic":
        # RFC 6749 2.3.1: the id and secret are form-encoded before they are joined.
        pair = f"{quote(auth.client_id, safe='')}:{quote(auth.client_secret, safe='')}"
        encoded = base64.b64encode(pair.encode()).decode()
        ctx.redact.add(encoded)
        headers["Authorization"] = f"Basic {encoded}"
    else:
        form |= {"client_id": auth.client_id, "client_secret": auth.client_secret}
    body = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in form.items())
    fetched_at = ctx.clock.time()
    try:
        exchange = await client.request(
            "POST", auth.token_url, headers=headers, data=body, max_body=64 * 1024
        )
    except HttpFailure as failure:
        raise AuthFailure(f"token endpoint unreachable: {failure.message}", failure.phases) from None
    try:
        document = json.loads(exchange.body)
    except (ValueError, RecursionError):
        document = None
    verdict = judge(exchange, ctx, None)
    if verdict.reason is not None or exchange.status != 200:
        error = ""
        if isinstance(document, dict) and isinstance(document.get("error"), str):
            error = f": {document['error']}"
            if isinstance(document.get("error_description"), str):
                # Redacted before it is cut: a secret cut in two is found by neither half.
                error += f" ({ctx.redact(document['error_description'])[:200]})"
        # The shared verdict, but any status but 200 means no credentials: reason auth, unless the
        # endpoint is rate limiting (then rate_limited, with its back-off).
        limited = verdict.reason is Reason.RATE_LIMITED
        wait = verdict.retry_after
        backing_off = f"; backing off for {format_duration(round(wait))}" if limited and wait else ""
        raise AuthFailure(
            f"token endpoint answered HTTP {exchange.status}{error}{backing_off}",
            exchange.phases,
            reason=Reason.RATE_LIMITED if limited else Reason.AUTH,
            retry_after=verdict.retry_after,
        )
    value = document.get("access_token") if isinstance(document, dict) else None
    if not isinstance(value, str) or not value:
        raise AuthFailure("token endpoint answered without an access_token", exchange.phases)
    ctx.redact.add(value, ephemeral=True)
    expires_at = jwt_expiry(value)
    expires_in = document.get("expires_in") if isinstance(document, dict) else None
    if expires_at is None and isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        expires_at = fetched_at + float(expires_in)
    return _Token(value, fetched_at, expires_at)
