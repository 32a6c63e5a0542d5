"""Finds probe types by entry point (group ``vantage.probes``) and loads only the ones in use.

An entry point names its module (``plugins.http:HttpProbe``) without importing it: a probe type's
module, with what only it imports (grpcio for ``grpc``), is imported when a check of that type is
configured, or when ``vantage plugins`` lists every type. The probe SDK itself is imported at the
first ``load``, not with this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from agent.sdk.probe import Probe

__all__ = ["GROUP", "Registry"]

GROUP = "vantage.probes"


class Registry:
    """The installed probe types; ``load`` imports a type the first time a check uses it."""

    def __init__(self, points: Iterable[EntryPoint] | None = None) -> None:
        found = entry_points(group=GROUP) if points is None else points
        self._points = {point.name: point for point in found}
        self._loaded: dict[str, Probe[Any]] = {}

    def names(self) -> list[str]:
        """The names of the installed probe types, sorted."""
        return sorted(self._points)

    def load(self, name: str) -> Probe[Any]:
        """The probe for type ``name``; ConfigError for an unknown type, PluginError for a broken one."""
        if (probe := self._loaded.get(name)) is not None:
            return probe
        from pydantic import BaseModel

        from agent.sdk.probe import Probe

        point = self._points.get(name)
        if point is None:
            raise ConfigError(f"unknown probe type {name!r}; available: {', '.join(self.names()) or 'none'}")
        try:
            cls = point.load()
        except ImportError as exc:
            raise PluginError(f"probe type {name!r} cannot be imported ({point.value}): {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Probe)):
            raise PluginError(f"entry point {name!r} ({point.value}) is not a Probe subclass")
        settings = getattr(cls, "Settings", None)
        if not (isinstance(settings, type) and issubclass(settings, BaseModel)):
            raise PluginError(f"probe type {name!r} has no pydantic Settings model")
        if settings.model_config.get("extra") != "forbid":
            raise PluginError(
                f"probe type {name!r}: its Settings must forbid unknown fields (extra='forbid')"
            )
        if getattr(cls, "name", None) != name:
            raise PluginError(
                f"probe type {name!r}: the class says its name is {getattr(cls, 'name', None)!r}"
            )
        probe = cls()
        self._loaded[name] = probe
        return probe
