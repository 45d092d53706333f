"""docs/reliability.md names every fault test and counts them right."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

from tests.conftest import PYTHON, env

ROOT = Path(__file__).resolve().parents[1]


#: Where the fault cases live: every test there is a row of the table, and counted.
FAULT_FILES = ["tests/faults", "tests/test_paths.py", "tests/predict/test_predict_faults.py"]


def _test_names(paths) -> list[str]:
    names = []
    for path in paths:
        tree = ast.parse(path.read_text())
        names += [n.name for n in tree.body
                  if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]
    return names


def _fault_tests() -> list[str]:
    return _test_names(sorted(p for f in FAULT_FILES for p in (
        [ROOT / f] if f.endswith(".py") else (ROOT / f).glob("test_*.py"))))


def test_every_test_the_table_names_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(test_\w+)`", text))
    existing = set(_test_names((ROOT / "tests").rglob("test_*.py")))
    assert not named - existing, f"docs/reliability.md names no such test: {named - existing}"


def test_every_fault_test_is_in_the_table():
    text = (ROOT / "docs" / "reliability.md").read_text()
    missing = [n for n in _fault_tests() if f"`{n}`" not in text]
    assert not missing, f"docs/reliability.md does not name {missing}"


def test_the_figure_counts_the_collected_fault_cases():
    proc = subprocess.run([PYTHON, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *FAULT_FILES], capture_output=True, text=True, env=env(), cwd=ROOT,
                          timeout=300)
    cases = [ln for ln in proc.stdout.splitlines() if "::" in ln]
    assert cases, proc.stdout + proc.stderr
    text = (ROOT / "docs" / "reliability.md").read_text()
    figure = re.search(r"\*\*(\d+) fault cases\*\*", text)
    assert figure and int(figure.group(1)) == len(cases), (
        f"docs/reliability.md should say **{len(cases)} fault cases**")
