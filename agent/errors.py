"""The agent's exceptions, small enough to draw::

    VantageError
    ├── ConfigError      bad environment, check file or check settings: exit status 2
    └── PluginError      a probe plugin that cannot be loaded or breaks its contract

Anything else that escapes is a bug.
"""

from __future__ import annotations

__all__ = ["ConfigError", "PluginError", "VantageError"]


class VantageError(Exception):
    """Base of the errors the agent raises on purpose."""


class ConfigError(VantageError):
    """The configuration is wrong; the message names the variable, check and field."""


class PluginError(VantageError):
    """A probe plugin cannot be loaded or does not honour the plugin contract."""
