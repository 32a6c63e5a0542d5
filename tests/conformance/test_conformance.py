"""Each case run by blackbox_exporter and by the agent against the same local target: the same
verdict, and the same value under every name they share (timings: present on both sides)."""

from __future__ import annotations

import pytest
from _pytest.mark.structures import ParameterSet

from .cases import CASES, pending
from .harness import PENDING, Blackbox, Case, VantageLoop, differences, fill, imported, parse, reasons
from .targets import Targets

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", CASES)
def test_case(case: Case, blackbox: Blackbox, targets: Targets, vantage: VantageLoop) -> None:
    target = fill(case.bb_target, targets.values)
    running = vantage.start(case, targets.values)
    page, said = blackbox.probe_logged(case.name, target)
    theirs = parse(page)
    ours = running()
    assert ("probe_success", frozenset()) in theirs, "blackbox gave no verdict"
    found = differences(theirs, ours, case.ignore)
    if case.reason is not None and reasons(ours) != {case.reason}:
        found.append(f"the agent's reason: {sorted(reasons(ours))}, not {case.reason!r}")
    if found:
        pytest.fail("\n".join(["Vantage and blackbox disagree:", *found, "blackbox's log:", *said]))


CASE_BY_NAME: dict[str, Case] = {
    case.name: case for param in CASES for case in param.values if isinstance(case, Case)
}

EXPORTS = [
    # (case, blackbox family, label that must be there too): what blackbox exports that the agent
    # must export as well; a case's comparison skips a PENDING family the agent does not have yet.
    *(
        (case, family, None)
        for case in ("http_ok", "tcp_connect", "icmp_loopback", "grpc_overall")
        for family in ("probe_ip_protocol", "probe_ip_addr_hash", "probe_dns_lookup_time_seconds")
    ),
    ("dns_a_record", "probe_ip_protocol", None),
    ("dns_a_record", "probe_ip_addr_hash", None),
    ("http_ok", "probe_failed_due_to_regex", None),
    ("http_ok", "probe_http_uncompressed_body_length", None),
    ("http_last_modified", "probe_http_last_modified_timestamp_seconds", None),
    ("http_tls_ok", "probe_ssl_last_chain_info", None),
    ("icmp_loopback", "probe_icmp_reply_hop_limit", None),
    ("dns_a_record", "probe_dns_duration_seconds", ("phase", "connect")),
    ("icmp_loopback", "probe_icmp_duration_seconds", ("phase", "setup")),
]

PHASES_PENDING: dict[str, str] = {}


def _export_param(case: str, family: str, label: tuple[str, str] | None) -> object:
    why = PHASES_PENDING.get(family) if label else PENDING.get(family)
    marks = [pytest.mark.xfail(strict=True, reason=why)] if why else []
    name = f"{case}-{family}" + (f"-{label[1]}" if label else "")
    return pytest.param(case, family, label, id=name, marks=marks)


@pytest.mark.parametrize(("name", "family", "label"), [_export_param(*row) for row in EXPORTS])
def test_exports(
    name: str,
    family: str,
    label: tuple[str, str] | None,
    blackbox: Blackbox,
    targets: Targets,
    vantage: VantageLoop,
) -> None:
    case = CASE_BY_NAME[name]
    theirs = parse(blackbox.probe(case.name, fill(case.bb_target, targets.values)))
    ours = vantage.run(case, targets.values)

    def has(series: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> bool:
        return any(n == family and (label is None or label in labels) for n, labels in series)

    assert has(theirs), f"blackbox does not export {family} {label or ''} in {name}: fix the table"
    assert has(ours), f"the agent does not export {family} {label or ''} in {name}"


RESOLVE_PHASE = {
    "http": "probe_http_duration_seconds",
    "dns": "probe_dns_duration_seconds",
    "icmp": "probe_icmp_duration_seconds",
    "grpc": "probe_grpc_duration_seconds",
}

LOOKUP_PENDING: dict[str, str] = {}
"""case -> the issue that makes its agent side follow blackbox's rule (a strict xfail until then)."""


def _lookup_param(name: str) -> object:
    why = LOOKUP_PENDING.get(name)
    return pytest.param(name, marks=[pytest.mark.xfail(strict=True, reason=why)] if why else [])


@pytest.mark.parametrize(
    "name", [_lookup_param(n) for n in ("http_ok", "dns_a_record", "icmp_loopback", "grpc_overall")]
)
def test_lookup_time_is_the_resolve_phase(
    name: str, blackbox: Blackbox, targets: Targets, vantage: VantageLoop
) -> None:
    """blackbox's probe_dns_lookup_time_seconds is the time to resolve the target's name: in every
    prober the same number as its ``resolve`` phase. A timing compared by its meaning, not its value."""
    case = CASE_BY_NAME[name]
    family = RESOLVE_PHASE[case.prober]
    resolve = (family, frozenset({("phase", "resolve")}))
    lookup: tuple[str, frozenset[tuple[str, str]]] = ("probe_dns_lookup_time_seconds", frozenset())
    theirs = parse(blackbox.probe(case.name, fill(case.bb_target, targets.values)))
    assert theirs[lookup] == theirs[resolve], "blackbox's own rule does not hold: fix the test"
    ours = vantage.run(case, targets.values)
    assert lookup in ours and resolve in ours, "the agent exports no lookup time or no resolve phase"
    assert ours[lookup] == ours[resolve]


SECRETS = {"http_bearer_header", "http_bearer_token", "http_basic_auth", "http_basic_auth_wrong"}
"""Cases whose module holds a credential: the import refers to an environment variable instead."""


IMPORT_DISAGREEMENTS = {
    "http_size_2mib_regex_at_end": "the import keeps the default max_body (1 MiB) for a module with "
    "body regexes and no body_size_limit; blackbox matches the whole body",
}
"""case -> where the imported check still says something else than blackbox (strict xfail)."""


def _imported_param(param: ParameterSet) -> ParameterSet | None:
    (case,) = param.values
    assert isinstance(case, Case)
    if case.name in SECRETS:
        return None
    if why := IMPORT_DISAGREEMENTS.get(case.name):
        return pytest.param(case, id=case.name, marks=[*param.marks, pending("(new) import: " + why)])
    return param


@pytest.mark.parametrize("case", [p for p in map(_imported_param, CASES) if p is not None])
def test_imported(case: Case, blackbox: Blackbox, targets: Targets, vantage: VantageLoop) -> None:
    """The check ``vantage import blackbox`` writes for the case's module says what blackbox says."""
    check = imported(case, targets.values)
    assert check is not None, "the import wrote no check for this module"
    running = vantage.run_check(check, case.timeout)
    target = fill(case.bb_target, targets.values)
    theirs = parse(blackbox.probe(case.name, target))
    ours = running()
    found = differences(theirs, ours, case.ignore)
    assert not found, "\n".join(["the imported check and blackbox disagree:", *found, str(check)])
