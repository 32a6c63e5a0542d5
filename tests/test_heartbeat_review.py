"""Heartbeats under a hostile or careless caller: what one check may hold in memory, and what
reaches a message."""

from __future__ import annotations

import io
import uuid

import pytest

from agent.sdk import InboundRequest, Reason
from agent.server.inbox import KEEP_BYTES, Inbox

from .test_heartbeat_runs import TOKEN, clocked_agent, heartbeat

pytestmark = pytest.mark.anyio


def request(check: str, body: bytes) -> InboundRequest:
    return InboundRequest(
        endpoint="heartbeat",
        check=check,
        method="POST",
        headers={},
        query={},
        body=body,
        remote="127.0.0.1",
        received=0.0,
        received_monotonic=0.0,
    )


def held(inbox: Inbox, check: str) -> int:
    return sum(len(d.request.body) for d in inbox.after(check, 0))


def test_an_inbox_holds_a_bounded_number_of_bytes_per_check() -> None:
    inbox = Inbox(keep=256)
    for _ in range(256):
        inbox.deliver(request("job", b"x" * (256 << 10)))  # the default VANTAGE_INBOUND_MAX_BODY
    assert held(inbox, "job") <= KEEP_BYTES
    newest = inbox.deliver(request("job", b"small")).sequence
    assert inbox.after("job", newest - 1)[0].request.body == b"small"  # the newest always kept
    huge = inbox.deliver(request("job", b"y" * (KEEP_BYTES + 1))).sequence
    assert [d.sequence for d in inbox.after("job", 0)] == [huge]  # one over the budget: alone
    assert held(inbox, "other") == 0
    for _ in range(300):
        inbox.deliver(request("other", b"z"))
    assert len(inbox.after("other", 0)) == 256  # the count bound holds as before
    inbox.drop("job")
    assert held(inbox, "job") == 0
    inbox.deliver(request("job", b"a" * 10))
    assert held(inbox, "job") == 10  # a dropped check starts its budget afresh


async def test_a_job_sending_its_output_every_run_costs_bounded_memory() -> None:
    """Jobs send their output with every end ping (the recipe does): the check's pings are read
    every run, but the inbox kept the newest 256 of them with their bodies, up to 64 MiB a check
    at the default body limit, for as long as the agent ran."""
    async with clocked_agent([heartbeat("job")], {"VANTAGE_INBOUND_RATE": "off"}) as running:
        output = b"line of output\n" * (200 << 10 >> 4)  # 200 KiB
        for _ in range(64):
            status, _ = await running.ping("job", "0", data=output, headers={"Content-Type": "text/plain"})
            assert status == 200
        result = await running.check("job")
        assert result.success, result.message
        assert held(running.agent.inbox, "job") <= KEEP_BYTES
        # A caller without the token is reported (its request is held to say "wrong token"), but
        # its body is not: 16 large bodies would push the job's genuine pings out of the budget.
        for _ in range(64):
            status, _ = await running.ping("job", "0", data=output, token="wrong-token-0123456789")
            assert status == 401
        deliveries = running.agent.inbox.after("job", 0)
        assert held(running.agent.inbox, "job") <= KEEP_BYTES
        assert sum(d.problem is None for d in deliveries) == len(deliveries) - 64 >= 20
        assert all(d.request.body == b"" for d in deliveries if d.problem is not None)
        assert TOKEN  # the good token was used above


async def test_a_long_message_is_redacted_before_it_is_cut() -> None:
    """The job's ``message`` was cut at 4 KiB before redaction: a secret halved by that cut was no
    longer known, and once the copies before it had shrunk to ``<redacted>`` its first half was
    in the failure message's 200 characters."""
    secret = "s3cr3t-" + "k" * 293  # a long token (a JWT, a key) the job echoes in its message
    check = heartbeat("job")
    check["settings"]["token"] = "${LONG_TOKEN}"
    async with clocked_agent([check], {"LONG_TOKEN": secret}) as running:
        status, _ = await running.ping("job", token=secret, json={"status": "fail", "message": secret * 14})
        assert status == 200
        result = await running.check("job")
        assert result.message.startswith("the job reported a failure: <redacted>")
        assert "s3cr3t" not in result.message and "kkkkkkkk" not in result.message, result.message


async def test_a_stranger_flooding_a_check_pushes_out_none_of_the_jobs_pings() -> None:
    """Requests that fail authentication are held for the probe to report, but the inbox's count
    bound dropped the oldest whatever it was: 256 requests with a wrong token (under the default
    rate limit of 600 a minute) between two runs erased the job's `/fail`, and the check passed."""
    async with clocked_agent([heartbeat("job")], {"VANTAGE_INBOUND_RATE": "off"}) as running:
        assert (await running.check("job")).success
        status, _ = await running.ping(
            "job", "fail", data="disk full", headers={"Content-Type": "text/plain"}
        )
        assert status == 200
        for _ in range(300):
            status, _ = await running.ping("job", token="wrong-token-0123456789")
            assert status == 401
        result = await running.check("job")
        assert result.reason is Reason.JOB_FAILED, result.message
        assert result.message == "the job reported a failure: disk full"
        assert len(running.agent.inbox.after("job", 0)) == 256  # the count bound holds


async def test_the_failure_message_quotes_the_log_of_an_end_not_shown_on_the_span() -> None:
    """Only the 16 newest pings of a run have their log read; the verdict's message quotes the last
    end's log, and lost it when 16 `/log` pings came after that end."""
    async with clocked_agent([heartbeat("job")], {"VANTAGE_INBOUND_RATE": "off"}) as running:
        text = {"Content-Type": "text/plain"}
        assert (await running.ping("job", "3", data="step 1\nERROR: disk full\n", headers=text))[0] == 200
        for index in range(20):
            assert (await running.ping("job", "log", data=f"cleanup {index}", headers=text))[0] == 200
        result = await running.check("job")
        assert result.message == "the job exited with code 3: ERROR: disk full"
        assert len(running.events("job")) == 16


async def test_the_checks_own_token_is_redacted_even_when_written_literally() -> None:
    """`curl -v` prints the job's Authorization header in the output it sends; a token written in
    the configuration rather than as ${ENV} was not known to the redactor and reached the span."""
    literal = "literal-token-0123456789abcdef"
    check = heartbeat("job")
    check["settings"]["token"] = literal
    async with clocked_agent([check]) as running:
        output = (
            f"> GET /heartbeat/job/start HTTP/1.1\n> Authorization: Bearer {literal}\n< HTTP/1.1 200\nboom\n"
        )
        assert (await running.ping("job", "1", token=literal, data=output))[0] == 200
        result = await running.check("job")
        assert result.reason is Reason.JOB_FAILED
        logs = [str(event.get("vantage.heartbeat.log")) for event in running.events("job")]
        assert logs and all(literal not in log for log in logs), logs
        assert "Authorization: Bearer <redacted>" in logs[-1]


async def test_a_job_whose_output_outgrows_the_body_limit_still_ends_its_run() -> None:
    """healthchecks.io keeps the first 100 kB of a ping's body and takes the ping; here a body over
    VANTAGE_INBOUND_MAX_BODY was a 413, so the job's end never counted: a failed job whose output
    grew past 256 KiB went unreported, and its open run later failed as runtime_exceeded."""
    async with clocked_agent(
        [heartbeat("job", max_runtime="1h")], {"VANTAGE_INBOUND_RATE": "off"}
    ) as running:
        assert (await running.ping("job", "start"))[0] == 200
        output = b"progress line\n" * (1 << 20 >> 4) + b"ERROR: the ERP refused the batch\n"  # 1 MiB
        status, _ = await running.ping("job", "2", data=output)
        assert status == 200
        result = await running.check("job")
        assert result.message == "the job exited with code 2: ERROR: the ERP refused the batch"
        last = running.events("job")[-1]
        assert str(last["vantage.heartbeat.log"]).endswith("ERROR: the ERP refused the batch")
        assert last["vantage.heartbeat.log.bytes"] == 256 << 10  # the tail kept: where the error is
        # Beyond 16 times the limit the body is still refused, after reading no more than that.
        status, _ = await running.ping("job", "2", data=io.BytesIO(b"x" * (16 * (256 << 10) + 1)))
        assert status == 413
        # The plain endpoint's fields are read from a whole body only: a cut JSON body is a 400.
        status, text = await running.ping(
            "job", data=b'{"status": "fail", "message": "' + b"x" * (300 << 10) + b'"}',
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        assert (status, text) == (400, '{"error": "the body is not JSON"}')


async def test_a_start_never_ended_is_forgotten_after_72_hours_without_max_runtime() -> None:
    """healthchecks.io takes a start and an end more than 72 hours apart as unrelated. Here a run
    whose process was killed (a `rid` no end ever names) stayed open for ever without max_runtime:
    `probe_heartbeat_running` said 1 from then on, and an end days later made a run of days."""
    rid = str(uuid.uuid4())
    async with clocked_agent([heartbeat("job", period="1h")]) as running:
        assert (await running.ping("job", "start", params={"rid": rid}))[0] == 200
        assert (await running.check("job")).values["probe.heartbeat.running"] == 1.0
        await running.clock.advance(71 * 3600)
        assert (await running.check("job")).values["probe.heartbeat.running"] == 1.0
        await running.clock.advance(2 * 3600)  # 73 h
        assert (await running.check("job")).values["probe.heartbeat.running"] == 0.0
        assert (await running.ping("job", "0", params={"rid": rid}))[0] == 200
        result = await running.check("job")
        assert result.success, result.message
        assert not [s for s in result.samples if s.metric == "probe.heartbeat.run.duration"]
    # With max_runtime the stuck run keeps failing the check until a later run ends (documented).
    async with clocked_agent([heartbeat("job", period="1h", max_runtime="1h")]) as running:
        assert (await running.ping("job", "start", params={"rid": rid}))[0] == 200
        await running.clock.advance(80 * 3600)
        assert (await running.check("job")).reason is Reason.RUNTIME_EXCEEDED
