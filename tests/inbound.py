"""An agent with its inbound endpoints up, for the webhook, heartbeat and fuzz tests."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from agent.app import Agent, build_agent
from agent.sdk import ProbeResult

from .helpers import config_from, free_port

TELEMETRY_ENV = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "prometheus"}


@dataclass
class Running:
    agent: Agent
    spans: InMemorySpanExporter
    inbound: str
    """Base URL of the inbound endpoints."""

    async def run_once(self) -> dict[str, ProbeResult]:
        await self.agent.scheduler.run_once()
        return {name: state.last for name, state in self.agent.recorder.states.items() if state.last}

    def metric(self, family: str) -> list[tuple[dict[str, str], float]]:
        """Samples of one family from the agent's Prometheus exposition, as scraped."""
        text = self.agent.telemetry.render_prometheus().decode()
        return [
            (dict(sample.labels), sample.value)
            for metric in text_string_to_metric_families(text)
            if metric.name == family
            for sample in metric.samples
            if not sample.name.endswith("_created")
        ]


@contextlib.asynccontextmanager
async def running_agent(
    checks: list[dict[str, Any]], host: str = "127.0.0.1", port: int | None = None, **env: str
) -> AsyncIterator[Running]:
    """The agent's server up (inbound endpoints on their own port), checks run by ``run_once``."""
    port = port or free_port()
    config = config_from(
        checks,
        VANTAGE_HOST=host,
        VANTAGE_PORT="0",
        VANTAGE_INBOUND_PORT=str(port),
        VANTAGE_PUBLIC_URL=f"http://{host}:{port}",
        **env,
    )
    spans = InMemorySpanExporter()
    agent = build_agent(config, TELEMETRY_ENV, span_processors=[SimpleSpanProcessor(spans)])
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(agent.server.serve)
            yield Running(agent, spans, f"http://{host}:{port}")
            tg.cancel_scope.cancel()
    finally:
        await agent.http.aclose()
