"""HTTP steps run in order, as an application uses an API: the engine of the ``flow`` probe and of
the ``webhook`` probe's trigger.

Steps share the check's credentials and TLS settings. Each has its own request, assertions and
extractions; later steps use extracted values through templates: ``${steps.login.token}``,
``${vars.order_id}`` (the check's ``vars`` and every value extracted so far), ``${uuid}`` (a fresh
one per run), ``${run_id}`` (the run's correlation id, 32 hex digits), ``${hook_url}`` (this check's
``/hooks`` URL under ``VANTAGE_PUBLIC_URL``) and ``${now}`` (ISO 8601, UTC). Templates are checked
when the configuration loads: a reference to an unknown step, a later step or an unknown variable
is an error. Steps marked ``always`` run even after a failure (cleanup). Each step is a child span;
the result names the failing step; phases and status codes carry a ``step`` label. Every response
is judged by the one HTTP verdict (:mod:`.verdict`).
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ByteSize, Field, PrivateAttr, field_validator, model_validator
from yarl import URL

from agent.sdk import (
    Assertion,
    AssertionOutcome,
    Check,
    HttpFailure,
    MetricKind,
    MetricSpec,
    ProbeContext,
    ProbeResult,
    ProbeSettings,
    Reason,
    Sample,
    StepResult,
    Subject,
    TLSOptions,
)

from .auth import TOKEN_EXPIRY, Auth, AuthFailure, TokenCache, authorize
from .verdict import Verdict, judge

__all__ = ["STEP_METRICS", "Extraction", "FlowSettings", "FlowStep", "StepRunner", "render"]

_TEMPLATE = re.compile(r"\$\{([^}]+)\}")
_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"
_GLOBALS = ("uuid", "now", "run_id", "hook_url")


class Extraction(ProbeSettings):
    """Where a value comes from: the body by JSONPath, a header, or the status; then a regex."""

    source: Literal["body", "header", "status"] = "body"
    path: str | None = None
    name: str | None = None
    regex: str | None = None
    """Applied to the value found; the first group (or the whole match) is kept."""
    secret: bool = False
    """Redact the value everywhere the agent writes."""

    _path: Any = PrivateAttr(default=None)
    _regex: re.Pattern[str] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _compile(self) -> Extraction:
        if self.source == "header" and not self.name:
            raise ValueError("a header extraction needs the header's 'name'")
        if self.path is not None:
            if self.source != "body":
                raise ValueError("'path' is only for body extractions")
            import jsonpath  # only flows that extract by JSONPath pay for loading it

            try:
                self._path = jsonpath.compile(self.path)
            except jsonpath.JSONPathError as exc:
                raise ValueError(f"'path' {self.path!r} is not a valid JSONPath: {exc}") from None
        if self.regex is not None:
            try:
                self._regex = re.compile(self.regex)
            except re.error as exc:
                raise ValueError(f"'regex' {self.regex!r} is not valid: {exc}") from None
        return self

    def extract(self, subject: Subject) -> str | None:
        if self.source == "status":
            value: Any = subject.status
        elif self.source == "header":
            value = subject.headers.get(self.name or "")
        elif self._path is not None:
            matches = self._path.findall(subject.json())
            value = matches[0] if matches else None
        else:
            value = subject.body.decode("utf-8", "replace")
        if value is None:
            return None
        text = value if isinstance(value, str) else json.dumps(value)
        if self._regex is not None:
            match = self._regex.search(text)
            if match is None:
                return None
            text = match.group(1) if match.groups() else match.group(0)
        return text


class FlowStep(ProbeSettings):
    name: str = Field(pattern=_NAME)
    method: str = Field("GET", pattern=r"^[A-Za-z]+$")
    url: str
    """Absolute, or relative to the check's target."""
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    body: str | None = None
    json_body: Any = Field(None, alias="json")
    assertions: tuple[Assertion, ...] = Field((), alias="assert")
    extract: dict[str, Extraction] = Field(default_factory=dict)
    always: bool = False
    """Run even after an earlier step failed (cleanup)."""

    @field_validator("extract")
    @classmethod
    def _names(cls, value: dict[str, Extraction]) -> dict[str, Extraction]:
        for name in value:
            if not re.match(_NAME, name):
                raise ValueError(f"extraction name {name!r} must be a plain identifier")
        return value


class FlowSettings(ProbeSettings):
    steps: tuple[FlowStep, ...] = Field(min_length=1)
    vars: dict[str, str] = Field(default_factory=dict)
    auth: Auth | None = None
    tls: TLSOptions = Field(default_factory=TLSOptions)
    fresh_connection: bool = True
    follow_redirects: bool = True
    max_body: ByteSize = Field(ByteSize(1 << 20), ge=0, le=1 << 30)

    @model_validator(mode="after")
    def _templates(self) -> FlowSettings:
        seen: dict[str, set[str]] = {}
        known_vars = set(self.vars)
        for index, step in enumerate(self.steps):
            if step.name in seen:
                raise ValueError(f"steps[{index}]: the step name {step.name!r} is used twice")
            for where, text in _strings(step):
                for ref in _TEMPLATE.findall(text):
                    problem = _check_reference(ref, seen, known_vars)
                    if problem:
                        raise ValueError(f"step {step.name!r}, {where}: ${{{ref}}} {problem}")
            seen[step.name] = set(step.extract)
            known_vars |= set(step.extract)
        return self

    def reference_problem(self, text: str) -> str | None:
        """What is wrong with the ``${...}`` references of ``text``, rendered after every step
        (the webhook probe's ``correlate_to``); None when each names a global or an extraction."""
        steps = {step.name: set(step.extract) for step in self.steps}
        known_vars = set(self.vars).union(*steps.values())
        for ref in _TEMPLATE.findall(text):
            problem = _check_reference(ref, steps, known_vars)
            if problem:
                return f"${{{ref}}} {problem}"
        return None


def _check_reference(ref: str, steps: dict[str, set[str]], known_vars: set[str]) -> str | None:
    if ref in _GLOBALS:
        return None
    parts = ref.split(".")
    if parts[0] == "steps" and len(parts) == 3:
        if parts[1] not in steps:
            return f"names no earlier step (earlier: {', '.join(steps) or 'none'})"
        if parts[2] not in steps[parts[1]]:
            return f"names nothing step {parts[1]!r} extracts"
        return None
    if parts[0] == "vars" and len(parts) == 2:
        return None if parts[1] in known_vars else "names no variable of the check or an earlier step"
    return "is not a template (use steps.<step>.<name>, vars.<name>, uuid, run_id, hook_url or now)"


def _strings(step: FlowStep) -> list[tuple[str, str]]:
    out = [("url", step.url)]
    out += [(f"headers.{k}", v) for k, v in step.headers.items()]
    out += [(f"query.{k}", v) for k, v in step.query.items()]
    if step.body is not None:
        out.append(("body", step.body))
    if step.json_body is not None:
        out.append(("json", json.dumps(step.json_body)))
    return out


class _Missing(Exception):
    pass


STEP_METRICS = (
    MetricSpec(
        "probe.http.duration",
        MetricKind.GAUGE,
        "s",
        "Duration of the HTTP request by phase",
        ("phase", "step"),
    ),
    MetricSpec("probe.http.status_code", MetricKind.GAUGE, "", "Response HTTP status code", ("step",)),
    TOKEN_EXPIRY,
)
"""The metrics of a run of steps: per-step phases and status codes, and the token's expiry."""


class StepRunner:
    """Runs the steps of a flow in order, passing extracted values along. It keeps nothing: the
    OAuth tokens of a check are in the check's ``ctx.state``."""

    async def execute(
        self,
        check: Check,
        settings: FlowSettings,
        ctx: ProbeContext,
        run_id: str,
        *,
        context_out: dict[str, Any] | None = None,
    ) -> ProbeResult:
        """Run the steps with ``run_id`` as ``${run_id}`` (the webhook probe's trigger uses this).

        ``context_out``, when given, receives what the steps extracted, for :func:`render`."""
        context: dict[str, Any] = {
            "steps": {},
            "vars": dict(settings.vars),
            "uuid": str(uuid.uuid4()),
            "run_id": run_id,
            "hook_url": f"{ctx.public_url}/hooks/{check.name}" if ctx.public_url else None,
            "now": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if context_out is not None:
            context_out.update(context)
            context = context_out  # the steps' extractions land in the caller's mapping
        steps: list[StepResult] = []
        samples: list[Sample] = []
        values: dict[str, float] = {}
        failure: tuple[str, Reason, str] | None = None
        retry_after: float | None = None  # the longest back-off any step's response asked for
        tokens = ctx.state.get(TokenCache)
        async with ctx.http(settings.tls, fresh=settings.fresh_connection) as client:
            try:
                credential = await authorize(settings.auth, client, ctx, tokens)
            except AuthFailure as exc:
                return ProbeResult.failure(
                    exc.reason, exc.message, phases=exc.phases, retry_after=exc.retry_after
                )
            if credential.expires_at is not None:
                values["probe.auth.token_expiry_timestamp"] = credential.expires_at
            for step in settings.steps:
                if failure is not None and not step.always:
                    steps.append(
                        StepResult(
                            step.name,
                            False,
                            0.0,
                            None,
                            f"skipped: step {failure[0]!r} failed",
                            request=ctx.redact(f"{step.method} {step.url}"),
                        )
                    )
                    continue
                started = ctx.clock.monotonic()
                seen = _Seen(ctx.redact(f"{step.method} {step.url}"))
                with ctx.step(step.name) as span:
                    verdict = await self._step(
                        step, check, settings, ctx, client, credential, context, samples, seen
                    )
                    reason, message = verdict.reason, verdict.message
                    if reason is not None:
                        span.fail(reason.value, ctx.redact(message))
                if verdict.retry_after is not None:
                    retry_after = max(retry_after or 0.0, verdict.retry_after)
                steps.append(
                    StepResult(
                        step.name,
                        reason is None,
                        ctx.clock.monotonic() - started,
                        reason,
                        message,
                        request=seen.request,
                        status=seen.status,
                        assertions=seen.outcomes,
                        extracted=seen.extracted,
                    )
                )
                if reason is not None and failure is None:
                    failure = (step.name, reason, message)
        if failure is not None:
            name, reason, message = failure
            return ProbeResult.failure(
                reason,
                ctx.redact(f"step {name!r}: {message}"),
                values=values,
                samples=tuple(samples),
                steps=tuple(steps),
                retry_after=retry_after,
            )
        return ProbeResult(
            success=True,
            values=values,
            samples=tuple(samples),
            steps=tuple(steps),
            retry_after=retry_after,
        )

    async def _step(
        self,
        step: FlowStep,
        check: Check,
        settings: FlowSettings,
        ctx: ProbeContext,
        client: Any,
        credential: Any,
        context: dict[str, Any],
        samples: list[Sample],
        seen: _Seen,
    ) -> Verdict:
        """Run one step; what it sent and what came back are noted in ``seen`` for its result."""
        try:
            url = str(URL(check.target).join(URL(_render(step.url, context))))
            # No query (keys travel there) and no user info: what a person needs to find the request.
            shown = URL(url).with_user(None).with_query(None).with_fragment(None)
            seen.request = ctx.redact(f"{step.method} {shown}")
            headers = {**credential.headers, **{k: _render(v, context) for k, v in step.headers.items()}}
            params = {**credential.params, **{k: _render(v, context) for k, v in step.query.items()}}
            data = _render(step.body, context) if step.body is not None else None
            if step.json_body is not None:
                data = _render(json.dumps(step.json_body), context)
                headers.setdefault("Content-Type", "application/json")
        except _Missing as exc:
            return Verdict(Reason.ASSERTION, str(exc))
        ctx.stage = f"step {step.name!r}"
        try:
            exchange = await client.request(
                step.method,
                url,
                headers=headers,
                params=params,
                data=data,
                follow_redirects=settings.follow_redirects,
                max_body=int(settings.max_body),
            )
        except HttpFailure as exc:
            return Verdict(exc.reason, exc.message)
        seen.status = exchange.status
        samples.append(Sample("probe.http.status_code", exchange.status, {"step": step.name}))
        samples.extend(
            Sample("probe.http.duration", s, {"phase": p, "step": step.name})
            for p, s in exchange.phases.items()
        )
        subject = Subject(
            exchange.status,
            exchange.headers,
            exchange.body,
            exchange.duration,
            exchange.truncated,
            redact=ctx.redact,
        )
        outcomes = tuple(a.evaluate(subject) for a in step.assertions)
        seen.outcomes = outcomes
        verdict = judge(
            exchange, ctx, ctx.state.get(TokenCache), assertions=step.assertions, outcomes=outcomes
        )
        if verdict.reason is not None:
            return verdict
        extracted: dict[str, str] = {}
        for name, extraction in step.extract.items():
            try:
                value = extraction.extract(subject)
            except ValueError as exc:
                return Verdict(Reason.ASSERTION, f"cannot extract {name!r}: {exc}", verdict.retry_after)
            if value is None:
                return Verdict(
                    Reason.ASSERTION,
                    f"cannot extract {name!r}: not found in the response",
                    verdict.retry_after,
                )
            if extraction.secret:
                ctx.redact.add(value, ephemeral=True)
            extracted[name] = value
        seen.extracted = tuple(extracted)
        context["steps"][step.name] = extracted
        context["vars"].update(extracted)
        return verdict


@dataclass(slots=True)
class _Seen:
    """What one step sent and got, noted as it runs, for its ``StepResult``."""

    request: str
    status: int | None = None
    outcomes: tuple[AssertionOutcome, ...] = ()
    extracted: tuple[str, ...] = ()


def render(text: str, context: dict[str, Any]) -> str:
    """``text`` with its ``${...}`` references filled from a run's ``context`` (see
    ``StepRunner.execute``); raises ``ValueError`` for a reference without a value."""
    try:
        return _render(text, context)
    except _Missing as exc:
        raise ValueError(str(exc)) from None


def _render(text: str, context: dict[str, Any]) -> str:
    def value(match: re.Match[str]) -> str:
        ref = match.group(1)
        if ref == "hook_url" and context[ref] is None:
            raise _Missing("${hook_url} needs VANTAGE_PUBLIC_URL, the address senders reach this agent at")
        if ref in _GLOBALS:
            return str(context[ref])
        parts = ref.split(".")
        found = (
            context["steps"].get(parts[1], {}).get(parts[2])
            if parts[0] == "steps"
            else context["vars"].get(parts[1])
        )
        if found is None:
            raise _Missing(
                f"${{{ref}}} has no value: the step that extracts it did not run or did not succeed"
            )
        return str(found)

    return _TEMPLATE.sub(value, text)
