"""Cron expressions as the agent reads them (heartbeat schedules, maintenance windows): five
fields, as Debian's cron and cronsim (healthchecks.io's parser) read them, or one of cron's
nicknames (``@daily``...), which stand for their expressions."""

from __future__ import annotations

__all__ = ["CRON_NICKNAMES", "cron_expression"]

CRON_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
"""The nicknames Debian's cron knows (but ``@reboot``), as the expressions they stand for."""


def cron_expression(cron: str) -> str:
    """``cron`` as cronsim reads it: a nickname (``@daily``) as its expression."""
    return CRON_NICKNAMES.get(cron.strip().lower(), cron)
