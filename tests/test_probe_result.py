"""ProbeResult (agent/sdk/probe.py): what a target sent cannot reach a log line or span raw."""

from __future__ import annotations

from agent.sdk import ProbeResult, Reason


def test_control_characters_in_the_message_and_attributes_are_made_visible() -> None:
    result = ProbeResult(
        success=False,
        reason=Reason.ASSERTION,
        message="bad\r\nX-Forged: 1",
        attributes={"count": 3, "banner": "ok", "server": "nginx\x1b[31m", "flag": True},
    )
    assert result.message == "bad\\r\\nX-Forged: 1"
    assert result.attributes == {"count": 3, "banner": "ok", "server": "nginx\\x1b[31m", "flag": True}


def test_clean_attributes_are_kept_as_given() -> None:
    attributes = {"count": 3, "banner": "ok"}
    result = ProbeResult(success=True, attributes=attributes)
    assert result.attributes is attributes
