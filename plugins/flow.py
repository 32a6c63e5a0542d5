"""The ``flow`` probe: an ordered list of HTTP steps, as an application uses an API.

Steps share the check's credentials and TLS settings. Each has its own request, assertions and
extractions; later steps use extracted values through templates: ``${steps.login.token}``,
``${vars.order_id}`` (the check's ``vars`` and every value extracted so far), ``${uuid}`` (a fresh
one per run), ``${run_id}`` (the run's correlation id, 32 hex digits), ``${hook_url}`` (this check's
``/hooks`` URL under ``VANTAGE_PUBLIC_URL``) and ``${now}`` (ISO 8601, UTC). Templates are checked
when the configuration loads: a reference to an unknown step, a later step or an unknown variable
is an error. Steps marked ``always`` run even after a failure (cleanup). Each step is a child span;
the result names the failing step; phases and status codes carry a ``step`` label.
"""

from __future__ import annotations

import uuid

from agent.sdk import Check, Probe, ProbeContext, ProbeResult

from ._toolkit.steps import STEP_METRICS, FlowSettings, StepRunner
from ._toolkit.verdict import validate_http_url

__all__ = ["FlowProbe", "FlowSettings"]


class FlowProbe(Probe[FlowSettings]):
    """Runs the steps of a flow in order, passing extracted values along."""

    name = "flow"
    Settings = FlowSettings
    metrics = STEP_METRICS

    def __init__(self) -> None:
        self._steps = StepRunner()

    def validate_target(self, target: str) -> None:
        validate_http_url(target)  # the base of the steps' relative URLs

    async def run(self, check: Check, settings: FlowSettings, ctx: ProbeContext) -> ProbeResult:
        return await self._steps.execute(check, settings, ctx, uuid.uuid4().hex)
