"""The inbound endpoints answer a refused request with the status its typed ``Refusal`` says."""

from __future__ import annotations

from importlib.metadata import EntryPoint

import aiohttp
import anyio
import pytest
import yaml

from agent.app import build_agent
from agent.config.registry import Registry
from agent.config.settings import load_config
from agent.sdk import InboundRequest, Probe, ProbeContext, ProbeResult, ProbeSettings, Refusal, RefusalKind
from agent.sdk.types import Check

pytestmark = pytest.mark.anyio


class PickySettings(ProbeSettings):
    kind: str
    """The ``RefusalKind`` name to refuse with."""
    message: str = ""


class PickyProbe(Probe[PickySettings]):
    """Takes every request as genuine, then refuses it as its settings say."""

    name = "picky"
    Settings = PickySettings
    inbound = "hooks"

    def authenticate(self, check: Check, settings: PickySettings, request: InboundRequest) -> str | None:
        return None

    def admit(self, check: Check, settings: PickySettings, request: InboundRequest) -> Refusal | None:
        return Refusal(RefusalKind[settings.kind], settings.message)

    async def run(self, check: Check, settings: PickySettings, ctx: ProbeContext) -> ProbeResult:
        return ProbeResult(success=True)


CASES = {
    # The kind decides, whatever the words say.
    "typed-type": ("CONTENT_TYPE", "not one of ours", 415),
    "typed-unreadable": ("UNREADABLE", "the content type header is fine, the body is not", 400),
}


async def test_the_refusal_kind_decides_the_status() -> None:
    checks = [
        {"name": name, "type": "picky", "target": "x", "settings": {"kind": kind, "message": message}}
        for name, (kind, message, _) in CASES.items()
    ]
    environ = {
        "VANTAGE_CHECKS": yaml.safe_dump({"checks": checks}),
        "VANTAGE_HOST": "127.0.0.1",
        "VANTAGE_PORT": "0",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "none",
    }
    registry = Registry([EntryPoint(name="picky", value=f"{__name__}:PickyProbe", group="vantage.probes")])
    agent = build_agent(load_config(environ, registry=registry), environ)
    answers = {}
    try:
        async with anyio.create_task_group() as tg:
            port = await tg.start(agent.server.serve)
            async with aiohttp.ClientSession() as session:
                for name in CASES:
                    async with session.post(f"http://127.0.0.1:{port}/hooks/{name}", data=b"{}") as response:
                        answers[name] = (response.status, (await response.json())["error"])
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()
    assert answers == {name: (status, message) for name, (_, message, status) in CASES.items()}
