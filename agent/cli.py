"""The ``vantage`` command: ``run``, ``once``, ``validate``, ``plugins`` and ``import``.

Exit status: 0 on success, 2 for a configuration error; ``once`` has its own, from 0 to 4
(``agent.once.Exit``: 1 a check failed, 3 a check not judged, 4 nothing selected).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any

from agent import __version__
from agent.errors import ConfigError, PluginError

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
    _once_parser(commands)
    validate = commands.add_parser(
        Command.VALIDATE,
        help="check the configuration and exit (2 on any problem, each named)",
        description="Check the settings (VANTAGE_*, OTEL_*) and the checks; exit 0 if all is well, "
        "2 with every problem named otherwise.",
    )
    validate.add_argument(
        "--offline",
        action="store_true",
        help="check without the production secrets and files (in CI): references are checked for "
        "their form, not resolved, and files that settings name need not exist",
    )
    validate.add_argument(
        "--checks", metavar="FILE", help="the checks file (instead of VANTAGE_CHECKS or VANTAGE_CHECKS_FILE)"
    )
    plugins = commands.add_parser(
        Command.PLUGINS, help="list the installed probe types and their settings, with defaults"
    )
    plugins.add_argument("--json", action="store_true", help="as one JSON document, for tools")
    plugins.add_argument("types", nargs="*", metavar="TYPE", help="only these probe types (default: all)")
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
        return _plugins(args.types, as_json=args.json)
    if command is Command.HEALTHCHECK:
        return _healthcheck()
    if command is Command.RUN:
        # Until the agent's own handler is installed, a hangup must not kill it (the default
        # action): SIGHUP is logged and ignored once the agent runs.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        if command is Command.VALIDATE:
            status = _validate(offline=args.offline, checks_file=args.checks)
        elif command is Command.ONCE:
            status = _once(args)
        else:
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

    try:
        # A worker's supervisor has shown the progress of the same load.
        config = load_config(os.environ, progress=None if os.environ.get("VANTAGE_WORKER") else _progress)
    except ConfigError as exc:
        # A misspelt variable is often why (no checks file found): said with the error.
        from agent.config.settings import unknown_variables

        raise ConfigError("\n".join([str(exc), *unknown_variables(os.environ)])) from None
    configure_logging(config.settings.log_level, config.settings.log_format, config.redactor)
    if not config.settings.worker:  # a worker's supervisor has said it
        _warn_unknown_variables()
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


def _validate(*, offline: bool, checks_file: str | None) -> int:
    """``vantage validate``: every problem of the settings and the checks, or a summary."""
    from agent.server._aiohttp import import_aiohttp

    import_aiohttp()  # as in _command: first, aiohttp's client contexts without their CA certificates
    from agent.config.settings import load_config, unknown_variables
    from agent.telemetry.providers import build_resource, build_telemetry, validate_otel_env

    environ = dict(os.environ)
    if checks_file is not None:
        environ.pop("VANTAGE_CHECKS", None)
        environ["VANTAGE_CHECKS_FILE"] = checks_file
    problems = unknown_variables(environ)  # every problem at once: the variables, the checks, OTEL_*
    config = None
    try:
        config = load_config(environ, offline=offline, progress=_progress)
    except (ConfigError, PluginError) as exc:
        problems.append(str(exc))
    try:
        if offline or config is None:  # offline, the production OTLP headers are not here either
            validate_otel_env(environ)
        else:
            build_telemetry(
                environ,
                build_resource(environ, region=config.settings.region, version=__version__),
                redactor=config.redactor,
            )
    except (ConfigError, PluginError) as exc:
        problems.append(config.redactor(str(exc)) if config is not None else str(exc))
    from agent.schedule.sharding import select
    from agent.sdk.durations import plural

    mine = select(config.entries, config.settings.region, config.shard) if config is not None else []
    if config is not None and not offline:  # offline, VANTAGE_PUBLIC_URL may be unset in CI
        from agent.once import hook_url_problems

        problems.extend(hook_url_problems(mine, config.settings.public_url, config.source))
    if problems or config is None:
        raise ConfigError("\n".join(problems))
    print(
        f"configuration OK{' (offline: references not resolved)' if offline else ''}: "
        f"{plural(len(config.entries), 'check')} from {config.source}; "
        f"{len(mine)} run in region {config.settings.region} "
        f"(shard {config.shard.index}/{config.shard.count})"
    )
    return 0


def _progress(done: int, total: int) -> None:
    """A line on stderr while a large check set is validated (every 5,000 checks)."""
    line = f"validating {total:,} checks" if done == 0 else f"validated {done:,} of {total:,} checks"
    print(f"vantage: {line}", file=sys.stderr, flush=True)


def _warn_unknown_variables() -> None:
    import logging

    from agent.config.settings import unknown_variables

    for line in unknown_variables(os.environ):
        logging.getLogger("vantage.config").warning(line)


def _config_error(exc: BaseException) -> int:
    print("vantage: configuration error:\n  " + str(exc).replace("\n", "\n  "), file=sys.stderr)
    return EXIT_CONFIG


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


_ONCE_EXIT = """exit status (agent.once.Exit):
  0  every selected check ran and passed
  1  at least one check failed
  2  the configuration or the command line is wrong (nothing ran)
  3  nothing failed, but a check was not judged: a passive webhook or heartbeat check, which
     one run cannot judge (see --wait-passive)
  4  no check was selected (none in the file, none matching --check/--label, or none of
     them runs in this region or shard)"""


def _once_parser(commands: Any) -> None:
    # Nothing of agent.once is imported here: every command builds this parser, `healthcheck` too.
    def label(text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. --label team=payments)")
        return key.strip(), value.strip()

    def duration(text: str) -> float:
        from agent.sdk.durations import parse_duration

        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        if seconds <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: give a duration above zero, e.g. 30s")
        return seconds

    once = commands.add_parser(
        Command.ONCE,
        help="run the checks once now, report, and exit non-zero unless every one passed (a CI gate)",
        description="Run the selected checks once, judge them as `vantage run` does (inbound endpoints "
        "included), print a report and exit with a status a CI pipeline can trust.",
        epilog=_ONCE_EXIT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    once.add_argument(
        "--check",
        dest="check_patterns",
        action="append",
        default=[],
        metavar="NAME",
        help="run the checks whose name matches NAME, a glob ('stripe-*'); repeatable; "
        "a NAME that matches no check is an error",
    )
    once.add_argument(
        "--label",
        dest="labels",
        action="append",
        type=label,
        default=[],
        metavar="KEY=VALUE",
        help="run the checks with this label (the value may be a glob); repeatable, all must match",
    )
    once.add_argument(
        "--checks", metavar="FILE", help="the check file (instead of VANTAGE_CHECKS_FILE or VANTAGE_CHECKS)"
    )
    once.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    once.add_argument("--junit", metavar="PATH", help="also write the report as JUnit XML to PATH")
    once.add_argument(
        "-v",
        "--debug",
        dest="verbose",
        action="store_true",
        help="per check, the requests and responses (redacted), assertions, log lines and waterfall",
    )
    once.add_argument(
        "--wait-passive",
        type=duration,
        metavar="DURATION",
        help="wait up to DURATION (30s, 2m) for passive webhook and heartbeat checks to receive a "
        "delivery, and fail those that get none; without it they are reported as not judged",
    )


def _once(args: argparse.Namespace) -> int:
    from agent.server._aiohttp import import_aiohttp

    import_aiohttp()  # first, as in _command
    from agent.config.settings import load_config
    from agent.logs import configure_logging
    from agent.once import Options, run

    environ = dict(os.environ)
    if args.checks:
        # The flag names the check set for this command: it replaces both variables.
        environ.pop("VANTAGE_CHECKS", None)
        environ["VANTAGE_CHECKS_FILE"] = args.checks
    try:
        config = load_config(environ, progress=_progress)
    except ConfigError as exc:
        # A misspelt variable is often why (no checks file found): said with the error.
        from agent.config.settings import unknown_variables

        raise ConfigError("\n".join([str(exc), *unknown_variables(environ)])) from None
    configure_logging(config.settings.log_level, config.settings.log_format, config.redactor)
    _warn_unknown_variables()
    options = Options(
        checks=tuple(args.check_patterns),
        labels=tuple(args.labels),
        json=args.json,
        junit=args.junit,
        verbose=args.verbose,
        wait_passive=args.wait_passive,
    )
    return run(config, environ, options)


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


def _plugins(types: Sequence[str], *, as_json: bool) -> int:
    """``vantage plugins``: each installed probe type and its settings (``--json`` for tools)."""
    import json

    from agent.config._describe import describe_probe, render_text
    from agent.config._explain import did_you_mean
    from agent.config.registry import Registry

    registry = Registry()
    unknown = [name for name in types if name not in registry.names()]
    if unknown:
        lines = [
            f"unknown probe type {name!r}; {did_you_mean(name, registry.names())}".rstrip("; ")
            for name in unknown
        ]
        return _config_error(ConfigError("\n".join(lines) + f"\navailable: {', '.join(registry.names())}"))
    described = []
    for name in types or registry.names():  # each type is imported here, as a check of it would
        try:
            described.append(describe_probe(name, registry.load(name)))
        except (ConfigError, PluginError) as exc:
            described.append({"name": name, "error": str(exc)})
    if as_json:
        print(json.dumps({"probe_types": described}, indent=2))
    else:
        sys.stdout.write(render_text(described))
    return 0
