"""Webhook signature schemes: HMAC over the raw body (hex or base64, under a chosen header, with an
optional prefix), and the presets that the common senders use.

    signature: {scheme: github, secret: "${GITHUB_WEBHOOK_SECRET}"}
    signature: {scheme: stripe, secret: "${STRIPE_WHSEC}", tolerance: 5m}
    signature: {scheme: shopify, secret: "${SHOPIFY_SECRET}"}
    signature: {scheme: standard, secret: "${WEBHOOK_SECRET}"}      # Standard Webhooks (Svix, ...)
    signature: {scheme: hmac, secret: "${SECRET}", header: X-Signature, encoding: base64}

Every comparison is constant-time (``hmac.compare_digest``). Header text is compared as the bytes
it came as, and a header that is not what a scheme expects (not ASCII digits, not hex or base64,
bytes that are not UTF-8) is a reason to reject, never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, model_validator

from agent.sdk import Duration, ProbeSettings, format_duration

from .inbound import raw

__all__ = ["Signature"]

_PRESETS: dict[str, tuple[str, Literal["hex", "base64"], str]] = {
    "github": ("X-Hub-Signature-256", "hex", "sha256="),
    "shopify": ("X-Shopify-Hmac-Sha256", "base64", ""),
    "stripe": ("Stripe-Signature", "hex", ""),
    "standard": ("webhook-signature", "base64", ""),
}


class Signature(ProbeSettings):
    """How deliveries are signed."""

    scheme: Literal["hmac", "github", "shopify", "stripe", "standard"] = "hmac"
    secret: str = Field(min_length=1)
    """The shared secret; give it as ``${ENV}`` or ``${file:...}`` so that it is redacted."""
    header: str | None = None
    """The header carrying the signature (``hmac``; the presets know theirs)."""
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    """Text before the signature in the header, e.g. ``sha256=``."""
    algorithm: Literal["sha256", "sha1", "sha512"] = "sha256"
    tolerance: Duration = 300.0
    """``stripe``, ``standard``: how far the signed timestamp may be from now (replay protection)."""

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("scheme") in _PRESETS:
            # The presets fix where the signature is and how it is written.
            header, encoding, prefix = _PRESETS[data["scheme"]]
            data = {"header": header, **data, "encoding": encoding, "prefix": prefix}
        return data

    @model_validator(mode="after")
    def _header(self) -> Signature:
        if not self.header:
            raise ValueError("the 'hmac' scheme needs the 'header' that carries the signature")
        return self

    def verify(self, headers: Mapping[str, str], body: bytes, now: float) -> str | None:
        """Why the delivery's signature does not hold, or None when it does."""
        assert self.header is not None
        given = headers.get(self.header)
        if given is None:
            return f"no {self.header} header"
        if self.scheme == "stripe":
            return self._stripe(given, body, now)
        if self.scheme == "standard":
            return self._standard(headers, given, body, now)
        if not given.startswith(self.prefix):
            return f"the {self.header} header does not start with {self.prefix!r}"
        expected = hmac.new(self.secret.encode(), body, self.algorithm).digest()
        try:
            signature = (
                bytes.fromhex(given[len(self.prefix) :].strip())
                if self.encoding == "hex"
                else base64.b64decode(given[len(self.prefix) :].strip(), validate=True)
            )
        except (ValueError, binascii.Error):
            return f"the {self.header} header is not {self.encoding}"
        if not hmac.compare_digest(signature, expected):
            return f"the {self.header} signature does not match the body"
        return None

    def _standard(self, headers: Mapping[str, str], given: str, body: bytes, now: float) -> str | None:
        # Standard Webhooks (https://www.standardwebhooks.com), as Svix sends it: the signed content
        # is "{id}.{timestamp}.{body}", the header holds space-separated "v1,<base64>" signatures,
        # and a "whsec_" secret is the base64 of the key.
        message_id = headers.get("webhook-id") or headers.get("svix-id")
        stamp = headers.get("webhook-timestamp") or headers.get("svix-timestamp")
        if not message_id or not stamp or not _digits(stamp):
            return "no webhook-id or webhook-timestamp header"
        if abs(now - int(stamp)) > self.tolerance:
            return self._stale(abs(now - int(stamp)))
        try:
            key = (
                base64.b64decode(self.secret.removeprefix("whsec_"), validate=True)
                if self.secret.startswith("whsec_")
                else self.secret.encode()
            )
        except (ValueError, binascii.Error):
            return "the secret starts with whsec_ but is not base64"
        content = raw(f"{message_id}.{stamp.strip()}.") + body
        expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest())
        candidates = [raw(part[3:]) for part in given.split() if part.startswith("v1,")]
        if not any(hmac.compare_digest(candidate, expected) for candidate in candidates):
            return f"no v1 signature in the {self.header} header matches the body"
        return None

    def _stale(self, drift: float) -> str:
        tolerance = format_duration(self.tolerance)
        return f"the signed timestamp is {format_duration(round(drift))} from now (tolerance {tolerance})"

    def _stripe(self, given: str, body: bytes, now: float) -> str | None:
        # Stripe-Signature: t=1492774577,v1=5257a869...,v1=... (several v1 during a secret roll).
        fields = [part.split("=", 1) for part in given.split(",") if "=" in part]
        stamps = [value for key, value in fields if key.strip() == "t"]
        candidates = [value.strip() for key, value in fields if key.strip() == "v1"]
        if len(stamps) != 1 or not _digits(stamps[0]) or not candidates:
            return "the Stripe-Signature header has no timestamp or no v1 signature"
        stamp = stamps[0].strip()
        if abs(now - int(stamp)) > self.tolerance:
            return self._stale(abs(now - int(stamp)))
        expected = hmac.new(self.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not any(hmac.compare_digest(raw(candidate), expected.encode()) for candidate in candidates):
            return "no v1 signature in the Stripe-Signature header matches the body"
        return None


def _digits(text: str) -> bool:
    """Whether ``text`` is a timestamp: ASCII digits only (``isdigit`` alone takes "²")."""
    text = text.strip()
    return text.isascii() and text.isdigit()
