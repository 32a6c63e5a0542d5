"""The ``vantage`` command: ``run``, ``once``, ``validate``, ``plugins`` and ``import``.

Exit status: 0 on success, 1 when ``once`` saw a failing check, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

from agent import __version__
from agent.errors import ConfigError, PluginError

if TYPE_CHECKING:
    from agent.config.settings import Config

__all__ = ["main"]

EXIT_FAILED, EXIT_CONFIG = 1, 2


class Command(StrEnum):
    """The commands, by the name they are given on the command line."""

    RUN = "run"
    ONCE = "once"
    VALIDATE = "validate"
    PLUGINS = "plugins"
    HEALTHCHECK = "healthcheck"
    IMPORT = "import"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vantage", description="Synthetic monitoring of third-party integrations."
    )
    parser.add_argument("--version", action="version", version=f"vantage {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(Command.RUN, help="run the agent (the default)")
    commands.add_parser(Command.ONCE, help="run every check once now, print a table, exit 1 if any failed")
    commands.add_parser(Command.VALIDATE, help="check the configuration and exit")
    commands.add_parser(Command.PLUGINS, help="list the installed probe types and their settings")
    commands.add_parser(
        Command.HEALTHCHECK,
        help="exit 0 if the agent on VANTAGE_PORT answers /healthz (for a container HEALTHCHECK)",
    )
    importer = commands.add_parser(
        Command.IMPORT, help="write a check file from another tool's configuration"
    )
    sources = importer.add_subparsers(dest="source", metavar="SOURCE", required=True)
    blackbox = sources.add_parser(
        "blackbox", help="blackbox_exporter modules and the Prometheus scrape jobs that use them"
    )
    blackbox.add_argument("--config", required=True, help="blackbox_exporter's module file (blackbox.yml)")
    blackbox.add_argument("--targets", required=True, help="the Prometheus configuration (prometheus.yml)")
    blackbox.add_argument("--output", help="where to write the check file (default: standard output)")
    args = parser.parse_args(argv)
    command = Command(args.command or Command.RUN)

    if command is Command.IMPORT:
        return _import_blackbox(args.config, args.targets, args.output)
    if command is Command.PLUGINS:
        return _plugins()
    if command is Command.HEALTHCHECK:
        return _healthcheck()
    if command is Command.RUN:
        # Until the agent's own handler is installed, a hangup must not kill it (the default
        # action): SIGHUP is logged and ignored once the agent runs.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        status = _command(command)
    except (ConfigError, PluginError) as exc:
        status = _config_error(exc)
    except BaseExceptionGroup as group:
        # A port that cannot be bound fails inside the task group that serves it.
        matched, _rest = group.split((ConfigError, PluginError))
        if matched is None:
            raise
        status = _config_error(_first(matched))
    if command is Command.RUN:
        from agent.logs import close_logging

        # Interpreter teardown would run the SDK's atexit hooks (another export, which a dead
        # backend makes wait) and join threads: a stopped agent ends here instead.
        close_logging(1.0)
        sys.stdout.flush()
        os._exit(status)
    return status


def _command(command: Command) -> int:
    # Imported here, not at the top: ``healthcheck`` and ``--version`` need none of it, and a
    # container's health check runs every few seconds.
    from agent.server._aiohttp import import_aiohttp

    # First, while no other thread runs: aiohttp's client contexts without their CA certificates
    # until a client needs them (agent/server/_aiohttp.py).
    import_aiohttp()
    from agent.config.settings import load_config
    from agent.logs import configure_logging

    config = load_config(os.environ)
    if command is Command.VALIDATE:
        from agent.telemetry.providers import build_resource, build_telemetry

        build_telemetry(
            os.environ,
            build_resource(os.environ, region=config.settings.region, version=__version__),
            redactor=config.redactor,
        )
        from agent.schedule.sharding import select

        mine = select(config.entries, config.settings.region, config.shard)
        print(
            f"configuration OK: {len(config.entries)} checks from {config.source}; "
            f"{len(mine)} run in region {config.settings.region} "
            f"(shard {config.shard.index}/{config.shard.count})"
        )
        return 0
    configure_logging(config.settings.log_level, config.settings.log_format, config.redactor)
    if command is Command.ONCE:
        return _once(config)
    if config.settings.worker:
        from agent.process.workers import die_with_supervisor

        die_with_supervisor(os.environ)
    if config.settings.worker_count() > 1 and not config.settings.worker:
        import anyio

        from agent.app import _backend
        from agent.process.workers import supervise
        from agent.telemetry.providers import validate_otel_env

        # The workers build the telemetry; the supervisor refuses what they would refuse, first.
        validate_otel_env(os.environ)

        status: int = anyio.run(supervise, config, os.environ, **_backend())
        return status
    from agent.app import run_agent

    run_agent(config, os.environ)


def _config_error(exc: BaseException) -> int:
    print("vantage: configuration error:\n  " + str(exc).replace("\n", "\n  "), file=sys.stderr)
    return EXIT_CONFIG


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _once(config: Config) -> int:
    import anyio

    from agent.app import _backend, build_agent, flush_telemetry

    agent = build_agent(config, os.environ, set_global_providers=True)

    async def go() -> None:
        await agent.scheduler.run_once()
        await agent.http.aclose()
        await flush_telemetry(agent.telemetry, config.settings.shutdown_timeout, shutdown=True)

    anyio.run(go, **_backend())
    rows = [("CHECK", "TYPE", "RESULT", "REASON", "DURATION", "MESSAGE")]
    failed = 0
    for state in agent.recorder.states.values():
        result = state.last
        if result is None:
            continue
        failed += not result.success
        rows.append(
            (
                state.entry.check.name,
                state.entry.check.type,
                "ok" if result.success else "FAIL",
                result.reason.value if result.reason else "",
                f"{(result.duration or 0) * 1000:.0f}ms",
                config.redactor(result.message)[:100],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
    print(f"\n{len(rows) - 1 - failed} passed, {failed} failed")
    return EXIT_FAILED if failed else 0


def _import_blackbox(config: str, targets: str, output: str | None) -> int:
    # Imported here: only this command needs the importer.
    from pathlib import Path

    from agent.config.blackbox import import_blackbox

    try:
        texts = [Path(path).read_text(encoding="utf-8") for path in (config, targets)]
        imported = import_blackbox(
            *texts,
            prometheus_dir=Path(targets).parent,
            blackbox_source=Path(config).name,
            prometheus_source=Path(targets).name,
        )
    except (OSError, UnicodeDecodeError) as exc:
        return _config_error(ConfigError(f"cannot read the input: {exc}"))
    except ConfigError as exc:
        return _config_error(exc)
    if output:
        try:
            Path(output).write_text(imported.text, encoding="utf-8")
        except OSError as exc:
            return _config_error(ConfigError(f"cannot write {output}: {exc.strerror}"))
    else:
        sys.stdout.write(imported.text)
    where = f" to {output}" if output else ""
    print(f"vantage: wrote {imported.checks} check(s){where}", file=sys.stderr)
    if imported.skipped:
        print(f"vantage: {imported.skipped} target(s) not imported (see NOT IMPORTED)", file=sys.stderr)
    if imported.variables:
        print("vantage: set " + ", ".join(imported.variables) + " (secrets not copied)", file=sys.stderr)
    return 0


def _healthcheck() -> int:
    import urllib.error
    import urllib.request

    port = os.environ.get("VANTAGE_PORT", "8080")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"vantage: the agent on port {port} is not healthy: {exc}", file=sys.stderr)
        return 1


def _plugins() -> int:
    from agent.config.registry import Registry

    registry = Registry()
    for name in registry.names():
        try:
            probe = registry.load(name)
        except (ConfigError, PluginError) as exc:
            print(f"{name}: unavailable: {exc}")
            continue
        print(f"{name}  ({type(probe).__module__}.{type(probe).__name__})")
        for field_name, field in probe.Settings.model_fields.items():
            shown = field.alias or field_name
            annotation = getattr(field.annotation, "__name__", None) or str(field.annotation).replace(
                "typing.", ""
            )
            default = "" if field.is_required() else f" = {field.get_default(call_default_factory=True)!r}"
            print(f"    {shown}: {annotation}{default}")
    return 0
