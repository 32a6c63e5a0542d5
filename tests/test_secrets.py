"""The redactor finds a secret in each spelling it takes on its way out; references that cannot be
redacted or read are refused; HTTP failure messages never carry the library's URL."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast
from urllib.parse import quote, quote_plus

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from agent.config.secrets import Redactor, SecretResolver
from agent.sdk import REDACTED
from agent.sdk.failures import map_exception
from agent.sdk.urls import redact_url
from plugins._toolkit.auth import BasicAuth, TokenCache, authorize

NASTY = [
    'apk+Key==/é"\\x',
    "tab\there and a space",
    'quote\'s "both" kinds',
    "emoji 😀 and € and ü",
    "per%cent&amp=;?#[]@!$()*,:",
    "-._~unreserved-only-~._-",
    "line one\nline two",
]


def spellings(secret: str) -> dict[str, str]:
    """The spellings the agent's libraries produce, by name."""
    out = {
        "raw": secret,
        "quote": quote(secret),
        "quote safe=''": quote(secret, safe=""),
        "quote_plus": quote_plus(secret),
        "yarl query": URL("http://h/").with_query({"k": secret}).raw_query_string[2:],
        "yarl path": URL("http://h/").with_path("/" + secret).raw_path[1:],
        "lower-case hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(secret, safe="")),
        "json": json.dumps(secret)[1:-1],
        "json ensure_ascii=False": json.dumps(secret, ensure_ascii=False)[1:-1],
        "json upper-case \\u": json.dumps(secret)[1:-1].replace("\\u00e9", "\\u00E9"),
        "repr": repr(secret)[1:-1],
        "bytes repr": repr(secret.encode())[2:-1],
    }
    for name, encode in (("base64", base64.b64encode), ("urlsafe base64", base64.urlsafe_b64encode)):
        text = encode(secret.encode()).decode()
        out[name] = text
        out[f"{name} unpadded"] = text.rstrip("=")
    return out


@pytest.mark.parametrize("secret", NASTY)
def test_every_spelling_of_a_secret_is_redacted(secret: str) -> None:
    redactor = Redactor([secret])
    for name, spelled in spellings(secret).items():
        text = f"before «{spelled}» after"
        assert redactor(text) == f"before «{REDACTED}» after", name
        assert text in redactor, name


def test_a_spelling_inside_a_json_document_is_redacted() -> None:
    secret = 'apk+Key==/é"\\x'
    redactor = Redactor([secret])
    for ensure_ascii in (True, False):
        document = json.dumps({"q": f"k={quote(secret)}", "h": f"Bearer {secret}"}, ensure_ascii=ensure_ascii)
        assert json.loads(redactor(document)) == {"q": f"k={REDACTED}", "h": f"Bearer {REDACTED}"}


def test_a_secret_that_contains_another_goes_whole() -> None:
    redactor = Redactor(["token-abc", "token-abc/def+ghi"])
    assert redactor("x token-abc/def+ghi y") == f"x {REDACTED} y"
    assert redactor(f"x {quote('token-abc/def+ghi', safe='')} y") == f"x {REDACTED} y"
    assert redactor("x token-abc y") == f"x {REDACTED} y"


def test_text_without_a_secret_is_left_alone() -> None:
    redactor = Redactor(["apk+Key==/é", "s3cr3t"])
    text = 'status 200 in 12ms; apk+Key=/é; s3cr; %2B%3D \\u00e9 "quoted" b64 czNjcjN'
    assert redactor(text) == text


def test_values_too_short_to_redact_are_ignored() -> None:
    redactor = Redactor(["abc", "   ", ""])
    assert redactor("abc 123") == "abc 123"


def test_ephemeral_secrets_are_bounded_and_the_newest_kept() -> None:
    redactor = Redactor()
    for i in range(1030):
        redactor.add(f"token-{i:05d}", ephemeral=True)
    assert redactor("token-00000 token-01029") == f"token-00000 {REDACTED}"
    assert "token-00006" in redactor and "token-00005" not in redactor


@pytest.mark.anyio
async def test_basic_auth_registers_the_encoded_pair() -> None:
    redactor = Redactor(["pässword+/="])
    ctx = cast(Any, SimpleNamespace(redact=redactor))
    auth = BasicAuth.model_validate({"type": "basic", "username": "probe", "password": "pässword+/="})
    credential = await authorize(auth, cast(Any, None), ctx, TokenCache())
    header = credential.headers["Authorization"]
    pair = header.removeprefix("Basic ")
    assert base64.b64decode(pair) == "probe:pässword+/=".encode()
    assert redactor(f"got {header}") == f"got Basic {REDACTED}"


def test_short_references_are_refused_naming_the_reference(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("Q7\n")
    resolver = SecretResolver({"SHORT": "zq", "EMPTY": "", "OK": "long-enough"}, Redactor())
    for text, ref in (("${SHORT}", "${SHORT}"), (f"${{file:{short}}}", f"${{file:{short}}}")):
        with pytest.raises(LookupError) as caught:
            resolver.resolve(text)
        message = str(caught.value)
        assert ref in message and "cannot redact" in message and "belongs in the check file" in message
        assert "zq" not in message and "Q7" not in message
    with pytest.raises(LookupError, match="environment variable EMPTY is empty"):
        resolver.resolve("a${EMPTY}b")
    assert resolver.resolve("a ${OK}") == "a long-enough"


def test_a_secret_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    latin = tmp_path / "latin1"
    latin.write_bytes("pässword".encode("latin-1"))
    resolver = SecretResolver({"BAD": "p\udce4ssword"}, Redactor())
    with pytest.raises(LookupError, match=f"secret file {latin} is not UTF-8 text"):
        resolver.resolve(f"${{file:{latin}}}")
    with pytest.raises(LookupError, match="environment variable BAD is not valid UTF-8"):
        resolver.resolve("${BAD}")


def test_an_unparseable_url_loses_its_query_and_user_info() -> None:
    assert redact_url("http://user:pw@[::1/v1?api_key=s3cret#frag") == "http://[::1/v1"


def _request_info(url: str) -> aiohttp.RequestInfo:
    return aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()), URL(url))


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ClientResponseError(
            _request_info("http://h/x?k=apk%2BKey%3D%3D"),
            (),
            status=400,
            message="Bad status line:\n  Invalid status code:\n\n  b'HTTP/1.1 abc'\n   ^",
        ),
        aiohttp.InvalidUrlClientError(URL("http://h/x?k=apk%2BKey%3D%3D"), "bad"),
        aiohttp.ContentTypeError(_request_info("http://h/x?k=apk%2BKey%3D%3D"), ()),
        aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
        RuntimeError("boom"),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_failure_messages_never_carry_the_librarys_url(exc: Exception) -> None:
    _, message = map_exception(exc)
    assert "apk" not in message and "\n" not in message, message
    assert message.strip()


def test_a_bad_status_line_is_one_line() -> None:
    exc = aiohttp.ClientResponseError(
        _request_info("http://h/x?k=apk"),
        (),
        status=400,
        message="Bad status line:\n  Invalid status code:\n\n  b'HTTP/1.1 abc'\n             ^",
    )
    assert (
        map_exception(exc)[1]
        == "malformed HTTP response: Bad status line: Invalid status code: b'HTTP/1.1 abc'"
    )


def test_a_url_seen_before_is_still_redacted_with_the_secrets_learnt_since() -> None:
    # redact_url keeps the stripped form of a URL it has seen; the redactor runs on every call.
    url = "https://api.example/tenant-7f3a/v1?key=x"
    redact = Redactor()
    assert redact_url(url, redact) == "https://api.example/tenant-7f3a/v1?key="
    redact.add("tenant-7f3a")
    assert redact_url(url, redact) == f"https://api.example/{REDACTED}/v1?key="


def test_a_snapshot_keeps_the_secrets_of_its_moment_and_learns_no_more() -> None:
    redactor = Redactor(["standing-secret-123"])
    redactor.add("oauth-token-aaaaaaaa", ephemeral=True)
    snapshot = redactor.snapshot()
    assert redactor.snapshot() is snapshot  # shared until the secrets change
    for i in range(2000):  # the ephemeral token is pushed out of the bounded set
        redactor.add(f"later-token-{i:06d}", ephemeral=True)
    assert "oauth-token-aaaaaaaa" not in redactor
    text = "Bearer oauth-token-aaaaaaaa, key standing-secret-123, new later-token-001999"
    assert snapshot(text) == "Bearer <redacted>, key <redacted>, new later-token-001999"
    assert "oauth-token-aaaaaaaa" in snapshot and redactor.snapshot() is not snapshot
    assert snapshot.deep({"k": ["oauth-token-aaaaaaaa"]}) == {"k": ["<redacted>"]}
    with pytest.raises(TypeError):
        snapshot.add("another-secret-xyz")
