"""The test suite's own layout: every test module is in the folder of its layer (unit,
integration, acceptance), and no test module imports another (what they share is in
tests/helpers or a conftest.py fixture), so that a module can move, or run alone, as is."""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO

TESTS = REPO / "tests"
LAYERS = ("unit", "integration", "acceptance")


def modules_of_the_suite() -> list[Path]:
    return sorted(p for p in TESTS.rglob("test_*.py") if "helpers" not in p.parts)


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_test_module_is_in_the_folder_of_its_layer():
    stray = [str(p.relative_to(TESTS)) for p in modules_of_the_suite()
             if p.relative_to(TESTS).parts[0] not in LAYERS or len(p.relative_to(TESTS).parts) != 2]
    assert stray == [], "move these into tests/unit, tests/integration or tests/acceptance"


def test_no_test_module_imports_another_or_a_conftest():
    suite = modules_of_the_suite()
    names = {p.stem for p in suite} | {"conftest"}
    importers = [*suite, *(TESTS / "helpers").glob("*.py")]
    found = {str(p.relative_to(TESTS)): sorted(imported(p) & names) for p in importers}
    assert {k: v for k, v in found.items() if v} == {}, \
        "share it through tests/helpers or a fixture in a conftest.py instead"


def test_no_two_test_modules_share_a_name():
    """pytest imports them by their file name: two test_x.py in two folders would clash."""
    names = [p.name for p in modules_of_the_suite()]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
