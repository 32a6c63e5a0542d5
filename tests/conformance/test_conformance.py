"""Each case run by blackbox_exporter and by the agent against the same local target: the same
verdict, and the same value under every name they share (timings: present on both sides)."""

from __future__ import annotations

import pytest

from .cases import CASES
from .harness import Blackbox, Case, VantageLoop, differences, fill, parse
from .targets import Targets

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("case", CASES)
def test_case(case: Case, blackbox: Blackbox, targets: Targets, vantage: VantageLoop) -> None:
    target = fill(case.bb_target, targets.values)
    theirs = parse(blackbox.probe(case.name, target))
    ours = vantage.run(case, targets.values)
    assert ("probe_success", frozenset()) in theirs, "blackbox gave no verdict"
    found = differences(theirs, ours, case.ignore)
    if found:
        log = blackbox.probe(case.name, target, debug=True)
        said = [
            line.split(" msg=", 1)[-1]
            for line in log.split("Metrics that would")[0].splitlines()
            if " msg=" in line
        ]
        pytest.fail("\n".join(["Vantage and blackbox disagree:", *found, "blackbox's log:", *said]))
