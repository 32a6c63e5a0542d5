"""Responses validated against an OpenAPI 3.x document, from a file or fetched once from a URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from agent.sdk import Reason

from .helpers import serve
from .test_http_probe import http_check, run_checks

pytestmark = pytest.mark.anyio


def document(version: str = "3.1.0") -> dict[str, Any]:
    return {
        "openapi": version,
        "info": {"title": "Sandbox", "version": "1"},
        "paths": {
            "/v1/charges/{id}": {
                "get": {
                    "responses": {
                        "200": {
                            "content": {
                                "application/json": {"schema": {"$ref": "#/components/schemas/Charge"}}
                            }
                        },
                        "default": {"content": {"application/json": {"schema": {"type": "object"}}}},
                    }
                }
            },
            "/v1/charges/search": {
                "get": {
                    "responses": {"2XX": {"content": {"application/json": {"schema": {"type": "array"}}}}}
                }
            },
        },
        "components": {
            "schemas": {
                "Charge": {
                    "type": "object",
                    "required": ["id", "amount"],
                    "properties": {"id": {"type": "string"}, "amount": {"type": "number"}},
                }
            }
        },
    }


class Vendor:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc, self.document_fetches = doc, 0

    async def charge(self, request: web.Request) -> web.Response:
        if request.match_info["id"] == "bad":
            return web.json_response({"id": "ch_2", "amount": "5.00"})
        return web.json_response({"id": request.match_info["id"], "amount": 5})

    async def search(self, _: web.Request) -> web.Response:
        return web.json_response([{"id": "ch_1"}])

    async def openapi(self, _: web.Request) -> web.Response:
        self.document_fetches += 1
        return web.json_response(self.doc)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/charges/search", self.search)
        app.router.add_get("/v1/charges/{id}", self.charge)
        app.router.add_get("/openapi.json", self.openapi)
        return app


@pytest.mark.parametrize("version", ["3.1.0", "3.0.3"])
async def test_responses_checked_against_a_document_file(version: str, tmp_path: Path) -> None:
    spec = tmp_path / "openapi.yaml"
    spec.write_text(yaml.safe_dump(document(version)))
    vendor = Vendor(document(version))
    async with serve(vendor.app()) as port:
        base, openapi = f"http://127.0.0.1:{port}", {"document": str(spec)}
        results, _ = await run_checks(
            [
                http_check("good", f"{base}/v1/charges/ch_1", openapi=openapi),
                http_check("bad", f"{base}/v1/charges/bad", openapi=openapi),
                http_check("search", f"{base}/v1/charges/search", openapi=openapi),
                http_check(
                    "unknown",
                    f"{base}/v1/refunds",
                    openapi=openapi,
                    **{"assert": [{"source": "status", "op": "eq", "value": 404}]},
                ),
            ]
        )
    assert results["good"].success, results["good"].message
    assert results["search"].success, results["search"].message  # the literal template, not {id}
    bad = results["bad"]
    assert bad.reason is Reason.SCHEMA
    assert bad.message == (
        "the response does not match the OpenAPI schema of GET /v1/charges/{id} (200): "
        "at $['amount']: '5.00' is not of type 'number'"
    )
    assert results["unknown"].reason is Reason.SCHEMA
    assert "no operation in the OpenAPI document matches GET /v1/refunds" in results["unknown"].message


async def test_a_document_url_is_fetched_once() -> None:
    vendor = Vendor(document())
    async with serve(vendor.app()) as port:
        base = f"http://127.0.0.1:{port}"
        from agent.app import build_agent

        from .helpers import config_from
        from .test_http_probe import TELEMETRY_ENV

        check = http_check("good", f"{base}/v1/charges/ch_1", openapi={"document": f"{base}/openapi.json"})
        agent = build_agent(config_from([check]), TELEMETRY_ENV)
        try:
            for _ in range(3):
                await agent.scheduler.run_once()
        finally:
            await agent.http.aclose()
        assert agent.recorder.states["good"].last.success
        assert vendor.document_fetches == 1
        results, _ = await run_checks(
            [http_check("gone", f"{base}/v1/charges/ch_1", openapi={"document": f"{base}/missing.json"})]
        )
    assert results["gone"].reason is Reason.SCHEMA
    assert "the OpenAPI document could not be had" in results["gone"].message
    assert "HTTP 404" in results["gone"].message


def test_bad_documents_are_configuration_errors(tmp_path: Path) -> None:
    from agent.errors import ConfigError

    from .helpers import config_from

    not_openapi = tmp_path / "x.json"
    not_openapi.write_text(json.dumps({"swagger": "2.0", "paths": {}}))
    with pytest.raises(ConfigError, match=r"field 'settings.openapi': .*not an OpenAPI 3.x document"):
        config_from([http_check("a", "https://api.example/", openapi={"document": str(not_openapi)})])
    with pytest.raises(ConfigError, match=r"field 'settings.openapi': .*cannot be read"):
        config_from([http_check("a", "https://api.example/", openapi={"document": "/nonexistent/o.yaml"})])
