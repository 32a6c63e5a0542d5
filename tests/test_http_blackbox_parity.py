"""The http probe where it once disagreed with blackbox_exporter 0.23, and its blackbox options.

Each case runs the probe against a real local server and checks the verdict and the metrics
blackbox_exporter gives for the same target (figures read from blackbox 0.23 run side by side
with these servers: a redirect loop is status 302 with 11 redirects, 127.0.0.1 hashes to
3668918509, a chunked body's content length is -1, ...).
"""

from __future__ import annotations

import gzip
import ssl
import warnings
import zlib
from pathlib import Path
from typing import Any

import brotli
import pytest
import trustme
import zstandard
from aiohttp import web

from agent.sdk import Reason

from .helpers import serve
from .test_http_engine import forward_proxy
from .test_http_probe import http_check, run_checks

pytestmark = pytest.mark.anyio

TEXT = b'{"status": "healthy", "padding": "' + b"abc" * 100 + b'"}'
LOOPBACK_HASH = 3668918509.0  # blackbox_exporter 0.23's probe_ip_addr_hash for 127.0.0.1


def status(code: int) -> dict[str, Any]:
    return {"source": "status", "op": "eq", "value": code}


def body_assertion(op: str, value: str) -> dict[str, Any]:
    return {"source": "body", "op": op, "value": value}


def vendor(seen: list[web.Request] | None = None) -> web.Application:
    """A vendor API with every response these cases need."""

    def encoded(coding: str, data: bytes) -> bytes:
        if coding == "gzip":
            return gzip.compress(data)
        if coding == "deflate":
            return zlib.compress(data)
        if coding == "raw-deflate":
            compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            return compressor.compress(data) + compressor.flush()
        if coding == "br":
            return brotli.compress(data)
        if coding == "zstd":
            return zstandard.ZstdCompressor().compress(data)
        if coding == "br, gzip":  # br applied first, then gzip
            return gzip.compress(brotli.compress(data))
        raise AssertionError(coding)

    async def encoding(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        coding = request.match_info["coding"].replace("+", ", ")
        header = "deflate" if coding == "raw-deflate" else coding
        return web.Response(body=encoded(coding, TEXT), headers={"Content-Encoding": header})

    async def corrupt(_: web.Request) -> web.Response:
        return web.Response(body=b"not gzip at all", headers={"Content-Encoding": "gzip"})

    async def plain(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        return web.Response(body=b"x" * 50, headers={"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"})

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"y" * 30)
        await response.write_eof()
        return response

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"/loop/{int(request.match_info['n']) + 1}")

    async def login(request: web.Request) -> web.Response:
        response = web.Response(status=302, headers={"Location": request.query.get("to", "/home")})
        response.set_cookie("session", "s3ss10n", path="/")
        response.set_cookie("admin", "yes", path="/admin")  # not for /home
        return response

    async def home(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        if request.cookies.get("session") != "s3ss10n":
            return web.Response(status=401, text="log in first")
        return web.Response(text="welcome")

    async def cookies(_: web.Request) -> web.Response:
        response = web.Response(text="ok")
        response.headers.add("Set-Cookie", "a=1; Path=/")
        response.headers.add("Set-Cookie", "b=2; Path=/")
        return response

    app = web.Application()
    app.router.add_get("/encoded/{coding}", encoding)
    app.router.add_get("/corrupt", corrupt)
    app.router.add_get("/plain", plain)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/loop/{n}", loop)
    app.router.add_get("/login", login)
    app.router.add_get("/home", home)
    app.router.add_get("/cookies", cookies)
    return app


# ------------------------------------------------- 1. every content encoding decodes


async def test_gzip_deflate_br_and_zstd_bodies_are_decoded() -> None:
    seen: list[web.Request] = []
    codings = ["gzip", "deflate", "raw-deflate", "br", "zstd", "br+gzip"]
    names = {coding: coding.replace("+", "-") for coding in codings}
    async with serve(vendor(seen)) as port:
        results, _ = await run_checks(
            [
                http_check(
                    names[coding],
                    f"http://127.0.0.1:{port}/encoded/{coding}",
                    **{"assert": [body_assertion("matches", '^\\{"status": "healthy".*"\\}$')]},
                )
                for coding in codings
            ]
        )
    for coding in codings:
        result = results[names[coding]]
        assert result.success, (coding, result.message, result.assertions)
        assert result.values["probe.http.uncompressed_body_length"] == len(TEXT)
        assert 0 < result.values["probe.http.content_length"] < len(TEXT)  # the encoded length
    # Decoded whether asked for or not; not asked for, as blackbox_exporter asks for none.
    assert "Accept-Encoding" not in seen[0].headers


async def test_a_body_that_is_not_its_encoding_fails_as_a_protocol_error() -> None:
    async with serve(vendor()) as port:
        results, _ = await run_checks([http_check("corrupt", f"http://127.0.0.1:{port}/corrupt")])
    assert results["corrupt"].reason is Reason.PROTOCOL
    assert "not valid gzip" in results["corrupt"].message


async def test_the_body_cap_counts_decoded_bytes() -> None:
    async with serve(vendor()) as port:
        results, _ = await run_checks(
            [http_check("zstd", f"http://127.0.0.1:{port}/encoded/zstd", max_body="100B")]
        )
    assert results["zstd"].success
    assert results["zstd"].values["probe.http.uncompressed_body_length"] == 100
    assert results["zstd"].attributes["vantage.http.body_truncated"] is True


def test_a_br_or_zstd_bomb_is_decoded_only_up_to_the_limit() -> None:
    """Kilobytes that decode to 64 MiB: each decoder stops at its limit, whatever is left."""
    from agent.net._encoding import BodyDecoder

    zeros = bytes(64 << 20)
    bombs = {
        "zstd": zstandard.ZstdCompressor(level=3).compress(zeros),
        "br": brotli.compress(zeros, quality=4),
        "gzip": gzip.compress(zeros, compresslevel=1),
    }
    for coding, bomb in bombs.items():
        assert len(bomb) < 2 << 20, coding
        decoder = BodyDecoder([coding], 1000)
        decoded = decoder.feed(bomb[: 64 << 10])
        assert decoded == bytes(1000) and decoder.full, coding


async def test_a_zstd_bomb_is_cut_at_max_body() -> None:
    bomb = zstandard.ZstdCompressor(level=3).compress(bytes(64 << 20))

    async def send(_: web.Request) -> web.Response:
        return web.Response(body=bomb, headers={"Content-Encoding": "zstd"})

    app = web.Application()
    app.router.add_get("/bomb", send)
    async with serve(app) as port:
        results, _ = await run_checks([http_check("bomb", f"http://127.0.0.1:{port}/bomb", max_body="1MiB")])
    assert results["bomb"].success, results["bomb"].message
    assert results["bomb"].values["probe.http.uncompressed_body_length"] == 1 << 20
    assert results["bomb"].values["probe.http.content_length"] == len(bomb)
    assert results["bomb"].attributes["vantage.http.body_truncated"] is True


# ------------------------------------------------- 2. the redirect limit


async def test_the_redirect_limit_reports_the_last_status_and_the_redirects() -> None:
    async with serve(vendor()) as port:
        results, _ = await run_checks(
            [
                http_check("loop", f"http://127.0.0.1:{port}/loop/0"),
                http_check("short", f"http://127.0.0.1:{port}/loop/0", max_redirects=2),
                http_check("nofollow", f"http://127.0.0.1:{port}/loop/0", follow_redirects=False),
                # blackbox judges the last response it got: valid_status_codes [302] passes a loop.
                http_check("loop-302", f"http://127.0.0.1:{port}/loop/0", **{"assert": [status(302)]}),
                http_check("loop-200", f"http://127.0.0.1:{port}/loop/0", **{"assert": [status(200)]}),
            ]
        )
    loop = results["loop"]
    assert loop.reason is Reason.REDIRECTS
    # blackbox_exporter 0.23: probe_http_status_code 302, probe_http_redirects 11.
    assert loop.values["probe.http.status_code"] == 302
    assert loop.values["probe.http.redirects"] == 11
    assert results["short"].values["probe.http.redirects"] == 3
    assert results["nofollow"].reason is Reason.HTTP_STATUS
    assert results["nofollow"].values["probe.http.status_code"] == 302
    assert results["nofollow"].values["probe.http.redirects"] == 1
    assert results["loop-302"].success, results["loop-302"].message
    assert results["loop-302"].values["probe.http.redirects"] == 11
    assert results["loop-200"].reason is Reason.REDIRECTS


# ------------------------------------------------- 3. cookies along the redirect chain


async def test_a_cookie_set_on_a_redirect_is_sent_to_its_target_by_its_rules() -> None:
    seen: list[web.Request] = []
    async with serve(vendor(seen)) as port, serve(vendor(seen)) as other:
        results, _ = await run_checks(
            [
                http_check("login", f"http://127.0.0.1:{port}/login", headers={"Cookie": "theme=dark"}),
                # Another host: the cookie stays with the one that set it.
                http_check(
                    "elsewhere",
                    f"http://127.0.0.1:{port}/login?to=http://localhost:{other}/home",
                    **{"assert": [{"source": "status", "op": "eq", "value": 401}]},
                ),
            ],
            names={"localhost": "127.0.0.1"},
        )
    assert results["login"].success, results["login"].message
    assert results["login"].values["probe.http.redirects"] == 1
    same, cross = (r for r in seen if r.path == "/home")
    assert same.cookies == {"theme": "dark", "session": "s3ss10n"}  # not admin: its path is /admin
    assert results["elsewhere"].success, results["elsewhere"].message
    assert "Cookie" not in cross.headers


# ------------------------------------------------- 4. every value of a repeated header


async def test_header_rules_see_every_value_and_may_allow_a_missing_header() -> None:
    def header(op: str, value: str, name: str = "Set-Cookie", **extra: Any) -> dict[str, Any]:
        return {"assert": [{"source": "header", "name": name, "op": op, "value": value, **extra}]}

    async with serve(vendor()) as port:
        url = f"http://127.0.0.1:{port}/cookies"
        results, _ = await run_checks(
            [
                http_check("second-matches", url, **header("matches", "^b=2")),
                http_check("first-not-matches", url, **header("not_matches", "^a=")),
                http_check("none-matches", url, **header("matches", "^c=")),
                http_check("contains", url, **header("contains", "b=2")),
                http_check("missing", url, **header("matches", "x", name="X-Nope")),
                http_check("allowed", url, **header("matches", "x", name="X-Nope", allow_missing=True)),
            ]
        )
    assert results["second-matches"].success, results["second-matches"].message
    assert results["contains"].success
    assert results["allowed"].success
    for name in ("first-not-matches", "none-matches", "missing"):
        assert results[name].reason is Reason.ASSERTION, name
        assert results[name].values["probe.failed_due_to_regex"] == 1, name
    assert "a=1" in results["first-not-matches"].message  # the value that failed it


def test_allow_missing_is_for_header_rules_only() -> None:
    from pydantic import ValidationError

    from agent.sdk import Assertion

    with pytest.raises(ValidationError, match="only for header"):
        Assertion(source="body", op="matches", value="x", allow_missing=True)


# ------------------------------------------------- 5. min_version 1.1 through the probe


def tls_1_1_context(ca: trustme.CA) -> ssl.SSLContext | None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # an old protocol, on purpose
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = ssl.TLSVersion.TLSv1_1
            context.maximum_version = ssl.TLSVersion.TLSv1_1
    except (ValueError, ssl.SSLError):
        return None
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


async def test_min_version_1_1_reaches_a_tls_1_1_server(ca: trustme.CA, ca_file: Path) -> None:
    context = tls_1_1_context(ca)
    if context is None:
        pytest.skip("this Python's OpenSSL cannot serve TLS 1.1")
    async with serve(vendor(), ssl_context=context) as port:
        url = f"https://127.0.0.1:{port}/plain"
        results, _ = await run_checks(
            [
                http_check("old", url, tls={"ca_file": str(ca_file), "min_version": "1.1"}),
                http_check("default", url, tls={"ca_file": str(ca_file)}),
            ]
        )
    assert results["old"].success, results["old"].message
    assert results["default"].reason is Reason.TLS


# ------------------------------------------------- 11. content length as declared


async def test_content_length_is_the_header_or_minus_one_and_the_bytes_are_counted_apart() -> None:
    async with serve(vendor()) as port:
        results, _ = await run_checks(
            [
                http_check("chunked", f"http://127.0.0.1:{port}/chunked"),
                http_check("plain", f"http://127.0.0.1:{port}/plain"),
            ]
        )
    chunked, plain = results["chunked"].values, results["plain"].values
    assert chunked["probe.http.content_length"] == -1
    assert chunked["probe.http.uncompressed_body_length"] == 30
    assert plain["probe.http.content_length"] == 50
    assert plain["probe.http.uncompressed_body_length"] == 50
    assert plain["probe.http.last_modified_timestamp"] == 1445412480
    assert "probe.http.last_modified_timestamp" not in chunked
    assert plain["probe.ip_protocol"] == 4 and plain["probe.ip_addr_hash"] == LOOPBACK_HASH
    assert plain["probe.dns.lookup_time"] >= 0  # an address: libcurl's lookup of it
    assert plain["probe.failed_due_to_regex"] == 0


async def test_the_address_reported_is_the_targets_not_a_redirects() -> None:
    """blackbox_exporter's probe_ip_* describe the target's address, wherever redirects lead."""
    from plugins._toolkit.net import ip_values

    runner = web.AppRunner(vendor(), handle_signals=False, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0)
    await site.start()
    other = int(runner.addresses[0][1])
    try:
        async with serve(vendor()) as port:
            results, _ = await run_checks(
                [http_check("moved", f"http://127.0.0.1:{port}/login?to=http://127.0.0.2:{other}/plain")]
            )
    finally:
        await runner.cleanup()
    moved = results["moved"]
    assert moved.success, moved.message
    assert moved.values["probe.http.redirects"] == 1
    assert moved.values["probe.ip_addr_hash"] == LOOPBACK_HASH
    assert ip_values("127.0.0.2")["probe.ip_addr_hash"] != LOOPBACK_HASH


# ------------------------------------------------- blackbox options


async def test_compression_asks_for_an_encoding_and_requires_it() -> None:
    seen: list[web.Request] = []
    async with serve(vendor(seen)) as port:
        results, _ = await run_checks(
            [
                http_check("gzip", f"http://127.0.0.1:{port}/encoded/gzip", compression="gzip"),
                http_check("not-gzip", f"http://127.0.0.1:{port}/plain", compression="gzip"),
                http_check("identity", f"http://127.0.0.1:{port}/plain", compression="identity"),
                http_check("br-not-identity", f"http://127.0.0.1:{port}/encoded/br", compression="identity"),
            ]
        )
    assert results["gzip"].success and results["identity"].success
    assert results["gzip"].values["probe.http.uncompressed_body_length"] == len(TEXT)
    assert results["not-gzip"].reason is Reason.ASSERTION
    assert "not in gzip" in results["not-gzip"].message
    assert results["br-not-identity"].reason is Reason.ASSERTION
    assert seen[0].headers["Accept-Encoding"] == "gzip"


async def test_fail_if_body_over_fails_a_longer_body() -> None:
    async with serve(vendor()) as port:
        url = f"http://127.0.0.1:{port}/plain"
        results, _ = await run_checks(
            [
                http_check("over", url, fail_if_body_over="20B"),
                http_check("exact", url, fail_if_body_over="50B"),
                # Read up to the limit even past max_body, to know.
                http_check("past-cap", url, fail_if_body_over="49B", max_body="10B"),
            ]
        )
    over = results["over"]
    assert over.reason is Reason.ASSERTION and "fail_if_body_over" in over.message
    assert over.values["probe.http.uncompressed_body_length"] == 20  # blackbox: the limit read
    assert over.values["probe.http.content_length"] == 50
    assert results["exact"].success
    assert results["past-cap"].reason is Reason.ASSERTION


async def test_fail_if_ssl_and_fail_if_not_ssl(ca: trustme.CA, ca_file: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    tls = {"ca_file": str(ca_file)}
    async with serve(vendor()) as plain, serve(vendor(), ssl_context=context) as secure:
        results, _ = await run_checks(
            [
                http_check("plain-ok", f"http://127.0.0.1:{plain}/plain", fail_if_ssl=True),
                http_check("plain-bad", f"http://127.0.0.1:{plain}/plain", fail_if_not_ssl=True),
                http_check("tls-ok", f"https://127.0.0.1:{secure}/plain", fail_if_not_ssl=True, tls=tls),
                http_check("tls-bad", f"https://127.0.0.1:{secure}/plain", fail_if_ssl=True, tls=tls),
            ]
        )
    assert results["plain-ok"].success and results["tls-ok"].success
    plain_bad = results["plain-bad"]
    assert plain_bad.reason is Reason.ASSERTION and "fail_if_not_ssl" in plain_bad.message
    assert results["tls-bad"].reason is Reason.ASSERTION and "fail_if_ssl" in results["tls-bad"].message
    assert results["tls-bad"].values["probe.http.ssl"] == 1


async def test_probe_failed_due_to_regex_only_for_a_regex_rule_after_the_status_passed() -> None:
    async with serve(vendor()) as port:
        url = f"http://127.0.0.1:{port}/plain"
        results, _ = await run_checks(
            [
                http_check("body", url, **{"assert": [body_assertion("not_matches", "x+")]}),
                http_check(
                    "status-first",
                    url,
                    **{
                        "assert": [
                            {"source": "status", "op": "eq", "value": 404},
                            body_assertion("not_matches", "x+"),
                        ]
                    },
                ),
                http_check("not-regex", url, **{"assert": [body_assertion("contains", "zzz")]}),
            ]
        )
    assert results["body"].values["probe.failed_due_to_regex"] == 1
    assert results["status-first"].values["probe.failed_due_to_regex"] == 0
    assert results["not-regex"].values["probe.failed_due_to_regex"] == 0


async def test_ip_fallback_tries_the_other_family() -> None:
    names = {"v4.test": "127.0.0.1"}
    async with serve(vendor()) as port:
        url = f"http://v4.test:{port}/plain"
        results, _ = await run_checks(
            [
                http_check("required", url, ip_family="ipv6"),
                http_check("fallback", url, ip_family="ipv6", ip_fallback=True),
                # An IP literal of the other family is no address of the family either.
                http_check("literal", f"http://127.0.0.1:{port}/plain", ip_family="ipv6"),
                http_check(
                    "literal-fallback", f"http://127.0.0.1:{port}/plain", ip_family="ipv6", ip_fallback=True
                ),
            ],
            names=names,
        )
    assert results["literal"].reason is Reason.DNS, results["literal"].message
    assert "probe.ip_protocol" not in results["literal"].values
    assert results["literal-fallback"].success, results["literal-fallback"].message
    assert results["literal-fallback"].values["probe.ip_protocol"] == 4
    assert results["required"].reason is Reason.DNS
    assert results["fallback"].success, results["fallback"].message
    assert results["fallback"].values["probe.ip_protocol"] == 4
    assert results["fallback"].values["probe.dns.lookup_time"] >= 0


async def test_proxy_skip_resolve() -> None:
    """Off (blackbox's default), the target's name is looked up here first (``localhost``, from
    the hosts file: no query leaves the machine), its address reported; on, only the proxy
    looks it up, and no address is reported (blackbox leaves probe_ip_* out then too)."""
    async with serve(vendor()) as port, forward_proxy() as proxy:
        proxy_url = f"http://127.0.0.1:{proxy.port}"
        target = f"http://localhost:{port}/plain"
        results, _ = await run_checks(
            [
                http_check("resolve", target, proxy_url=proxy_url, ip_family="ipv4"),
                http_check("skip", target, proxy_url=proxy_url, proxy_skip_resolve=True),
            ]
        )
    resolved, skipped = results["resolve"], results["skip"]
    assert resolved.success and skipped.success, (resolved.message, skipped.message)
    assert resolved.values["probe.ip_addr_hash"] == LOOPBACK_HASH
    assert resolved.values["probe.dns.lookup_time"] > 0
    assert "probe.ip_addr_hash" not in skipped.values
    assert [line for line, _ in proxy.seen] == [f"GET {target}"] * 2  # the proxy was given the name


def test_contradictory_settings_are_refused() -> None:
    from agent.errors import ConfigError

    from .helpers import config_from

    with pytest.raises(ConfigError, match="not both"):
        config_from([http_check("c", "http://127.0.0.1/", fail_if_ssl=True, fail_if_not_ssl=True)])
    with pytest.raises(ConfigError, match="does not accept compression 'gzip'"):
        config_from(
            [
                http_check(
                    "c", "http://127.0.0.1/", compression="gzip", headers={"Accept-Encoding": "br, identity"}
                )
            ]
        )
    # Accepted at a lower quality is still accepted (testing that the server prefers another).
    lower = {"accept-encoding": "br;q=1.0, gzip;q=0.9"}
    config_from([http_check("c", "http://127.0.0.1/", compression="gzip", headers=lower)])
