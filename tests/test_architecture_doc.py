"""docs/architecture.md stays true: every path it names exists, every function and method it names
in "How one run travels through the code" is defined in a module named beside it, and each folder
of the table imports from the agent no more than its row says."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from .helpers import ROOT
from .test_layout import GRAPH, under

PAGE = ROOT / "docs" / "architecture.md"
_PATH = re.compile(r"^(agent|plugins|examples|docs|tests)(/[\w.-]+)*/?$")
_CODE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\]\(([^)#\s]+)\)")
_METHOD = re.compile(r"^([A-Z]\w*)\.(\w+)$")  # Scheduler._run_one, not ctx.stage
_FUNCTION = re.compile(r"^(\w+)\(\)$")  # build_agent()


def text() -> str:
    return PAGE.read_text(encoding="utf-8")


def paths() -> list[str]:
    return [token for token in _CODE.findall(text()) if _PATH.match(token)]


def test_every_path_the_page_names_exists() -> None:
    named = paths()
    assert len(named) >= 20, named  # the page does name the layout
    missing = [path for path in named if not (ROOT / path).exists()]
    assert not missing, missing


def test_every_link_leads_to_a_file() -> None:
    links = [link for link in _LINK.findall(text()) if "://" not in link]
    assert links
    missing = [link for link in links if not (PAGE.parent / link).resolve().exists()]
    assert not missing, missing


@cache
def definitions(path: str) -> set[str]:
    """``f`` for each top-level function and ``C.m`` for each class member (methods and
    class-level attributes) of a module."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found.add(node.name)
        elif isinstance(node, ast.ClassDef):
            for member in node.body:
                if isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef):
                    found.add(f"{node.name}.{member.name}")
                elif isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name):
                    found.add(f"{node.name}.{member.target.id}")
    return found


def run_blocks() -> list[str]:
    """The numbered steps and paragraphs of the section on a run's travel."""
    section = text().split("## How one run travels through the code", 1)[1].split("\n## ", 1)[0]
    return [block for block in re.split(r"\n(?=\d+\. )|\n\s*\n", section) if block.strip()]


def test_the_functions_a_run_goes_through_exist_where_the_page_says() -> None:
    checked, wrong = 0, []
    for block in run_blocks():
        tokens = _CODE.findall(block)
        modules = [token for token in tokens if token.endswith(".py") and _PATH.match(token)]
        for token in tokens:
            method, function = _METHOD.match(token), _FUNCTION.match(token)
            if not (method or function):
                continue
            name = token.removesuffix("()")
            checked += 1
            if not any(name in definitions(module) for module in modules):
                wrong.append(f"{token} is in none of {modules}: {block.strip()[:60]!r}...")
    assert checked >= 25, checked
    assert not wrong, "\n".join(wrong)


def test_the_checker_tells_a_wrong_name() -> None:
    # Not vacuous: the definitions it reads are the real ones, and a made-up name is not among them.
    scheduler = definitions("agent/schedule/scheduler.py")
    assert {"Scheduler._run_one", "Scheduler.run"} <= scheduler
    assert "Scheduler._run_twice" not in scheduler
    assert "build_agent" in definitions("agent/app.py")


def test_the_readme_links_the_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(docs/architecture.md)" in readme
    assert Path(PAGE).exists()


def table() -> dict[str, set[str]]:
    """Folder (``agent.config``) → what its row says it imports (``agent.sdk``, ``agent.errors``)."""
    rows = {}
    for line in text().split("## What each folder owns", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`agent/"):
            continue
        folder = cells[0].strip("`/").replace("/", ".")
        claimed = _CODE.findall(cells[2].split(";")[0])
        rows[folder] = {"agent." + token.removesuffix(".py").replace("/", ".") for token in claimed}
    return rows


def test_each_folder_imports_no_more_than_its_row_says() -> None:
    rows = table()
    assert set(rows) == {
        f"agent.{f}" for f in ("sdk", "config", "schedule", "net", "telemetry", "server", "process")
    }
    # agent/sdk's row says nothing; its testing harness has its own pins in test_layout.py.
    assert rows["agent.sdk"] == set()
    beyond = []
    for folder, claimed in rows.items():
        for module, targets in GRAPH.items():
            if not under(module, folder) or module == "agent.sdk.testing":
                continue
            for target in targets:
                # The package itself holds only __version__, which anything may show.
                if under(target, "agent") and target != "agent" and not under(target, folder):
                    if not any(under(target, allowed) for allowed in claimed):
                        beyond.append(f"{module} imports {target}, which the row of {folder} does not list")
    assert rows["agent.server"] >= {"agent.schedule.sharding", "agent.config"}
    assert not beyond, "\n".join(sorted(beyond))
