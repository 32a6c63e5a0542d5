"""The session's targets and its one blackbox_exporter, with every case's module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .cases import CASES
from .harness import Blackbox, Case, VantageLoop, blackbox_binary, module_of
from .targets import Targets


@pytest.fixture(scope="session")
def targets(tmp_path_factory: pytest.TempPathFactory, vantage: VantageLoop) -> Iterator[Targets]:
    # Set up after the agent's loop, and so stopped before it: the loop sees its connections end.
    started = Targets(tmp_path_factory.mktemp("conformance-targets")).start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def blackbox(targets: Targets, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Blackbox]:
    blackbox_binary()  # fails in CI, skips elsewhere, before anything else
    modules: dict[str, dict[str, Any]] = {}
    for param in CASES:
        (case,) = param.values
        assert isinstance(case, Case)
        assert case.name not in modules, f"two cases are named {case.name}"
        modules[case.name] = module_of(case, targets.values)
    process = Blackbox(modules, tmp_path_factory.mktemp("blackbox")).start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="session")
def vantage() -> Iterator[VantageLoop]:
    loop = VantageLoop()
    try:
        yield loop
    finally:
        loop.stop()
