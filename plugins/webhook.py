"""The ``webhook`` probe: does the vendor deliver its webhooks, on time, signed, with the right payload?

Active mode (the default) triggers an event at the vendor with HTTP steps (the ``flow`` probe's
steps, credentials included) that carry the run's correlation id, ``${run_id}``, and then waits for
a delivery carrying that id at ``/hooks/{check}``:

    - name: payments-webhook
      type: webhook
      target: https://api.payments.example
      timeout: 60s
      interval: 5m
      settings:
        trigger:
          auth: {type: bearer, token: "${PAYMENTS_KEY}"}
          steps:
            - {name: charge, method: POST, url: /v1/test-charges, json: {metadata: {run: "${run_id}"}}}
        correlation: {path: "$.data.object.metadata.run"}
        signature: {scheme: stripe, secret: "${PAYMENTS_WHSEC}"}
        assert:
          - {source: body, path: "$.type", op: eq, value: charge.succeeded}

Passive mode expects at least one valid delivery per ``window`` from a sender that cannot be
triggered, and reports the age of the last one.

Deliveries are told apart by their correlation id: the run's own (``matched``), one whose run gave
up waiting (``late``, its latency still recorded), one already seen (``duplicate``, never a second
success), anything else (``unmatched``); a delivery whose signature fails is ``rejected`` and makes
a run that saw no valid one fail with reason ``signature`` rather than ``not_delivered``.

Every age, window and latency is measured on the agent's monotonic clock, so that a step of the
wall clock (NTP, a resumed VM) raises no false ``not_delivered`` and bends no latency; wall time
only dates what people read (span timestamps) and what senders sign.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from agent.sdk import (
    Assertion,
    AssertionOutcome,
    AttributeValue,
    Check,
    Delivery,
    Duration,
    InboundRequest,
    MetricKind,
    MetricSpec,
    Probe,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Refusal,
    Sample,
    StepResult,
    Subject,
    format_duration,
    plural,
)

from ._toolkit.inbound import LastSeen, content_type_problem, token_problem
from ._toolkit.signatures import Signature
from ._toolkit.steps import STEP_METRICS, Extraction, FlowSettings, StepRunner, render

__all__ = ["WebhookProbe", "WebhookSettings"]

_REMEMBERED = 1024  # run ids kept to recognise late and duplicate deliveries
_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class WebhookSettings(ProbeSettings):
    """Settings of a ``webhook`` check; in active mode the target is the base of the trigger's URLs."""

    mode: Literal["active", "passive"] = "active"
    trigger: FlowSettings | None = None
    """Active: the HTTP steps that make the vendor send a webhook; ``${run_id}`` is the run's id."""
    correlation: Extraction | None = None
    """Active: where a delivery carries the run id (``{path: "$.data.id"}``, ``{source: header, ...}``)."""
    correlate_to: str | None = None
    """Active: what ``correlation`` must equal, when not ``${run_id}``: a value the trigger
    extracted, such as the id of the object it created (``${steps.create.id}``), for vendors that
    generate the id the webhook carries (Stripe)."""
    wait: Duration | None = None
    """Active: how long to wait for the delivery after the trigger; by default until 90% of the
    check's timeout."""
    window: Duration | None = None
    """Passive: at least one valid delivery is expected in every window this long."""
    signature: Signature | None = None
    token: str | None = None
    """For senders that cannot sign: a token in ``Authorization: Bearer``, ``X-Vantage-Token`` or
    ``?token=``."""
    content_types: tuple[str, ...] = ("application/json",)
    """Content types a delivery may have (``*/*`` for any)."""
    assertions: tuple[Assertion, ...] = Field((), alias="assert")
    """Checks on each delivery's payload, in the shared assertion language."""

    @model_validator(mode="after")
    def _mode(self) -> WebhookSettings:
        if self.signature is None and not self.token:
            raise ValueError(
                "set 'signature' (how the sender signs) or 'token': an endpoint without either would "
                "take anyone's deliveries"
            )
        if self.mode == "active" and (self.trigger is None or self.correlation is None):
            raise ValueError("active mode needs a 'trigger' and the 'correlation' that finds ${run_id}")
        if self.correlate_to is not None:
            if self.mode != "active" or self.trigger is None:
                raise ValueError("'correlate_to' is for active mode, after a 'trigger'")
            if problem := self.trigger.reference_problem(self.correlate_to):
                raise ValueError(f"'correlate_to': {problem}")
        if self.mode == "passive" and self.window is None:
            raise ValueError("passive mode needs the 'window' in which a delivery is expected")
        return self


@dataclass
class _DeliveriesSeen:
    """The deliveries a webhook check has seen, kept between its runs in the check's
    ``ctx.state``: the inbox cursor, the last
    valid delivery, the run ids still awaited (late) or already delivered (duplicate), and the last
    rejection. Every time in it is on the monotonic clock."""

    cursor: int
    last: LastSeen
    started: float
    """When the agent started."""
    waiting: OrderedDict[str, float] = field(default_factory=OrderedDict)
    """Run ids that gave up waiting, with their trigger time: a delivery for one is late."""
    seen: OrderedDict[str, float] = field(default_factory=OrderedDict)
    """Run ids already delivered: another delivery for one is a duplicate."""
    rejected_at: float | None = None
    rejected: str = ""

    def note_rejected(self, delivery: Delivery) -> None:
        """Keep when (and why) the last delivery that failed authentication came."""
        self.rejected_at, self.rejected = delivery.request.received_monotonic, delivery.problem or ""

    @staticmethod
    def remember(ids: OrderedDict[str, float], run_id: str, when: float) -> None:
        ids[run_id] = when
        while len(ids) > _REMEMBERED:
            ids.popitem(last=False)


class WebhookProbe(Probe[WebhookSettings]):
    """Triggers an event and waits for its webhook, or watches that webhooks keep coming."""

    name = "webhook"
    Settings = WebhookSettings
    inbound = "hooks"
    metrics = (
        *STEP_METRICS,
        MetricSpec(
            "probe.webhook.delivery",
            MetricKind.HISTOGRAM,
            "s",
            "Time from the trigger to the receipt of its webhook (timing: on_time or late)",
            ("timing",),
            _BUCKETS,
        ),
        MetricSpec(
            "probe.webhook.deliveries",
            MetricKind.COUNTER,
            "{delivery}",
            "Deliveries received, by outcome: matched, late, duplicate, unmatched, accepted, rejected",
            ("outcome",),
        ),
        MetricSpec.gauge("probe.webhook.age", "s", "Age of the last valid delivery when the check ran"),
    )

    def __init__(self) -> None:
        self._trigger = StepRunner()  # keeps nothing: a check's tokens are in its ctx.state

    def validate_target(self, target: str) -> None:
        if not target.strip():
            raise ValueError("the target names the sender (the trigger's base URL in active mode)")

    def authenticate(self, check: Check, settings: WebhookSettings, request: InboundRequest) -> str | None:
        if settings.signature is not None:
            return settings.signature.verify(request.headers, request.body, request.received)
        assert settings.token is not None
        return token_problem(request, settings.token)

    def admit(self, check: Check, settings: WebhookSettings, request: InboundRequest) -> Refusal | None:
        return content_type_problem(request, settings.content_types)

    async def run(self, check: Check, settings: WebhookSettings, ctx: ProbeContext) -> ProbeResult:
        if ctx.inbox is None:
            return ProbeResult.failure(Reason.INTERNAL, "this agent has no inbox for webhook deliveries")

        def first_seen() -> _DeliveriesSeen:
            # Ages are measured from the agent's start on the monotonic clock; a last delivery kept
            # on disk (wall time) is carried over to it once, here.
            seen = LastSeen(ctx.state_dir, "webhook", check.name, ctx.clock)
            return _DeliveriesSeen(0, seen, ctx.started_monotonic)

        tracker = ctx.state.get(_DeliveriesSeen, first_seen)
        samples: list[Sample] = []
        if settings.mode == "passive":
            return self._passive(check, settings, ctx, tracker, samples)
        # Deliveries that came between runs: late, duplicate or stray.
        for delivery in ctx.inbox.after(check.name, tracker.cursor):
            tracker.cursor = delivery.sequence
            self._classify(delivery, settings, tracker, samples, None)
        return await self._active(check, settings, ctx, tracker, samples)

    async def _active(
        self,
        check: Check,
        settings: WebhookSettings,
        ctx: ProbeContext,
        tracker: _DeliveriesSeen,
        samples: list[Sample],
    ) -> ProbeResult:
        """Trigger, wait for the delivery that carries the run id, then judge it.

        Where findings compete, the first in this order decides the run: the trigger failed (its
        own reason, and its back-off); no valid delivery came (``signature`` when deliveries were
        rejected meanwhile, else ``not_delivered``); the delivery failed an assertion; success.
        """
        assert settings.trigger is not None
        clock = ctx.clock
        started = clock.monotonic()
        run_id = uuid.uuid4().hex
        extracted: dict[str, Any] = {}
        triggered = await self._trigger.execute(check, settings.trigger, ctx, run_id, context_out=extracted)
        samples.extend(triggered.samples)
        if not triggered.success:
            return _trigger_failed(triggered, samples)
        expected = run_id
        if settings.correlate_to is not None:
            try:
                expected = render(settings.correlate_to, extracted)
            except ValueError as exc:
                return ProbeResult.failure(
                    Reason.ASSERTION, f"correlate_to: {exc}", samples=tuple(samples), steps=triggered.steps
                )
        sent = _Sent(expected, clock.monotonic(), clock.time())
        wait = settings.wait if settings.wait is not None else check.timeout * 0.9
        remaining = max(0.0, wait - (clock.monotonic() - started))
        found, rejected = await self._wait_for_delivery(
            check, settings, ctx, tracker, samples, sent, remaining
        )
        findings = _Findings(
            dict(triggered.values), samples, {"vantage.webhook.run_id": run_id}, triggered.steps
        )
        if found is None:
            _DeliveriesSeen.remember(tracker.waiting, sent.run_id, sent.monotonic)
            return _undelivered(findings, sent, wait, rejected)
        return _delivered(found, settings, ctx, tracker, findings, sent)

    async def _wait_for_delivery(
        self,
        check: Check,
        settings: WebhookSettings,
        ctx: ProbeContext,
        tracker: _DeliveriesSeen,
        samples: list[Sample],
        sent: _Sent,
        remaining: float,
    ) -> tuple[Delivery | None, list[str]]:
        """The delivery that carries the run id, if it comes within ``remaining`` seconds, and the
        problems of the deliveries rejected meanwhile; every delivery seen is counted."""
        assert ctx.inbox is not None
        ctx.stage = f"waiting for the webhook of run {sent.run_id}"
        rejected: list[str] = []
        with ctx.clock.move_on_after(remaining):
            while True:
                for delivery in ctx.inbox.after(check.name, tracker.cursor):
                    tracker.cursor = delivery.sequence
                    if self._classify(delivery, settings, tracker, samples, sent.run_id) == "matched":
                        return delivery, rejected
                    if delivery.problem is not None:
                        rejected.append(delivery.problem)
                await ctx.inbox.wait(check.name, tracker.cursor)
        return None, rejected

    def _classify(
        self,
        delivery: Delivery,
        settings: WebhookSettings,
        tracker: _DeliveriesSeen,
        samples: list[Sample],
        run_id: str | None,
    ) -> str:
        """Count one delivery of an active check; ``matched`` when it carries ``run_id``."""
        request = delivery.request
        if delivery.problem is not None:
            tracker.note_rejected(delivery)
            outcome = "rejected"
        else:
            assert settings.correlation is not None
            try:
                found = settings.correlation.extract(Subject(None, request.headers, request.body, 0.0))
            except ValueError:
                found = None
            received = request.received_monotonic
            if found is not None and found == run_id:
                outcome = "matched"
                _DeliveriesSeen.remember(tracker.seen, found, received)
            elif found is not None and found in tracker.waiting:
                outcome = "late"
                latency = max(0.0, received - tracker.waiting.pop(found))
                samples.append(Sample("probe.webhook.delivery", latency, {"timing": "late"}))
                _DeliveriesSeen.remember(tracker.seen, found, received)
            elif found is not None and found in tracker.seen:
                outcome = "duplicate"
            else:
                outcome = "unmatched"
        samples.append(Sample("probe.webhook.deliveries", 1.0, {"outcome": outcome}))
        return outcome

    def _passive(
        self,
        check: Check,
        settings: WebhookSettings,
        ctx: ProbeContext,
        tracker: _DeliveriesSeen,
        samples: list[Sample],
    ) -> ProbeResult:
        assert settings.window is not None and ctx.inbox is not None
        failure: str | None = None
        outcomes: tuple[AssertionOutcome, ...] = ()
        for delivery in ctx.inbox.after(check.name, tracker.cursor):
            tracker.cursor = delivery.sequence
            request = delivery.request
            if delivery.problem is not None:
                tracker.note_rejected(delivery)
                samples.append(Sample("probe.webhook.deliveries", 1.0, {"outcome": "rejected"}))
                continue
            samples.append(Sample("probe.webhook.deliveries", 1.0, {"outcome": "accepted"}))
            tracker.last.update(request.received, request.received_monotonic)
            subject = Subject(None, request.headers, request.body, 0.0, redact=ctx.redact)
            outcomes = tuple(assertion.evaluate(subject) for assertion in settings.assertions)
            failed = next((outcome for outcome in outcomes if not outcome.passed), None)
            failure = failed.summary if failed is not None else None
        now = ctx.clock.monotonic()
        last = tracker.last.monotonic
        values: dict[str, float] = {}
        if last is not None:
            values["probe.webhook.age"] = max(0.0, now - last)
        window = settings.window
        reason: Reason | None = None
        message = ""
        attributes: dict[str, AttributeValue] = {}
        since = (
            f"the last one was {format_duration(now - last)} ago"
            if last is not None
            else f"none since the agent started {format_duration(now - tracker.started)} ago"
        )
        if failure is not None:
            reason, message = Reason.ASSERTION, f"the last delivery failed a check: {failure}"
        elif last is None and now - tracker.started <= window:
            attributes["vantage.webhook.first_window"] = True
        elif last is None or now - last > window:
            reason = Reason.NOT_DELIVERED
            message = f"no valid delivery in the last {format_duration(window)}; {since}"
            if tracker.rejected_at is not None and now - tracker.rejected_at <= window:
                reason, message = Reason.SIGNATURE, f"{message}; rejected: {tracker.rejected}"
        return ProbeResult(
            success=reason is None,
            reason=reason,
            message=message,
            values=values,
            samples=tuple(samples),
            assertions=outcomes,
            attributes=attributes,
        )


@dataclass(frozen=True, slots=True)
class _Sent:
    """The trigger of an active run: its correlation id, and when it was sent on both clocks."""

    run_id: str
    monotonic: float
    wall: float


@dataclass(slots=True)
class _Findings:
    """What an active run's result carries whatever its verdict."""

    values: dict[str, float]
    samples: list[Sample]
    attributes: dict[str, AttributeValue]
    steps: tuple[StepResult, ...]

    def result(self, reason: Reason | None, message: str = "", **extra: Any) -> ProbeResult:
        return ProbeResult(
            success=reason is None,
            reason=reason,
            message=message,
            values=self.values,
            samples=tuple(self.samples),
            attributes=self.attributes,
            steps=self.steps,
            **extra,
        )


def _trigger_failed(triggered: ProbeResult, samples: list[Sample]) -> ProbeResult:
    assert triggered.reason is not None
    return ProbeResult.failure(
        triggered.reason,
        f"trigger: {triggered.message}",
        values=triggered.values,
        samples=tuple(samples),
        steps=triggered.steps,
        retry_after=triggered.retry_after,  # a 429 from the vendor backs the check off
    )


def _undelivered(findings: _Findings, sent: _Sent, wait: float, rejected: list[str]) -> ProbeResult:
    """No valid delivery in time: ``signature`` when some were rejected meanwhile."""
    if rejected:
        return findings.result(
            Reason.SIGNATURE,
            f"{plural(len(rejected), 'delivery', 'deliveries')} rejected while waiting, "
            f"none valid: {rejected[-1]}",
        )
    return findings.result(
        Reason.NOT_DELIVERED,
        f"no webhook carrying run id {sent.run_id} within {format_duration(wait)} of the trigger",
    )


def _delivered(
    found: Delivery,
    settings: WebhookSettings,
    ctx: ProbeContext,
    tracker: _DeliveriesSeen,
    findings: _Findings,
    sent: _Sent,
) -> ProbeResult:
    """The run's delivery came: its latency, its span, and the assertions on its payload."""
    request = found.request
    latency = max(0.0, request.received_monotonic - sent.monotonic)
    tracker.last.update(request.received, request.received_monotonic)
    findings.values["probe.webhook.age"] = max(0.0, ctx.clock.monotonic() - request.received_monotonic)
    findings.samples.append(Sample("probe.webhook.delivery", latency, {"timing": "on_time"}))
    findings.attributes["vantage.webhook.latency"] = latency
    span = ctx.tracer.start_span(
        "webhook delivery",
        attributes={
            "vantage.webhook.run_id": sent.run_id,
            "client.address": request.remote,
            "http.request.method": request.method,
            "http.request.body.size": len(request.body),
        },
        start_time=sent.wall,
    )
    # Dated on the wall clock, as spans are, but as long as the latency really was.
    span.end(sent.wall + latency)
    subject = Subject(None, request.headers, request.body, latency, redact=ctx.redact)
    outcomes = tuple(assertion.evaluate(subject) for assertion in settings.assertions)
    failed = next((outcome for outcome in outcomes if not outcome.passed), None)
    if failed is None:
        return findings.result(None, assertions=outcomes)
    span.fail("assertion", failed.message)
    return findings.result(
        Reason.ASSERTION,
        f"the webhook arrived after {format_duration(latency)}, but {failed.summary}",
        assertions=outcomes,
    )
