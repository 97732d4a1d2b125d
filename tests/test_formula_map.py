"""docs/formulas.md names real code: every `path.py:function` and every hand-computed test exists."""

from __future__ import annotations

import ast
import re

import pytest

from m3.config import REPO_ROOT

MAP = (REPO_ROOT / "docs" / "formulas.md").read_text()
ROWS = [line for line in MAP.splitlines() if line.startswith("| ") and "`" in line]
FUNCTIONS = sorted({m for line in ROWS for m in re.findall(r"`([\w/]+\.py):(\w+)`", line)})
TESTS = sorted({m for line in ROWS for m in re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", line)})


def _defined(path: str) -> set[str]:
    tree = ast.parse((REPO_ROOT / path).read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


def test_the_map_has_a_row_per_formula():
    assert len(ROWS) >= 20 and len(FUNCTIONS) >= 20 and len(TESTS) >= 15


@pytest.mark.parametrize(("path", "name"), FUNCTIONS)
def test_function_exists(path, name):
    assert (REPO_ROOT / path).is_file(), f"docs/formulas.md names {path}, which does not exist"
    assert name in _defined(path), f"docs/formulas.md names {path}:{name}, which is not defined there"


@pytest.mark.parametrize(("path", "name"), TESTS)
def test_hand_computed_test_exists(path, name):
    assert (REPO_ROOT / path).is_file(), f"docs/formulas.md names {path}, which does not exist"
    assert name in _defined(path), f"docs/formulas.md names {path}::{name}, which is not defined there"
