"""The layering of docs/ARCHITECTURE.md, as import-linter contracts (pyproject [tool.importlinter])."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("importlinter")

ROOT = Path(__file__).resolve().parents[1]
LINT = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"


def lint(root: Path) -> subprocess.CompletedProcess:
    """Run lint-imports over the defectscope package under ``root/src`` with ``root``'s config."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([sys.executable, "-c", LINT, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_import_contracts_are_kept():
    run = lint(ROOT)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "2 kept, 0 broken" in run.stdout


@pytest.fixture(scope="module")
def copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layered")
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copytree(ROOT / "src" / "defectscope", root / "src" / "defectscope", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _with_line(path: Path, line: str) -> str:
    before = path.read_text()
    path.write_text(before + f"\n\ndef _reach():\n    {line}\n")
    return before


@pytest.mark.parametrize(
    "module, line, broken",
    [
        ("data/io.py", "from defectscope.methods import base", "no module reaches back up"),  # a layer reaching up
        ("errors.py", "import defectscope.report.atomic", "no module reaches back up"),
        ("methods/featurestore.py", "from defectscope.methods.rolling import RollingBank", "No import circle"),  # a hidden circle
    ],
)
def test_a_broken_layer_or_a_circle_fails(copy, module, line, broken):
    path = copy / "src" / "defectscope" / module
    before = _with_line(path, line)
    try:
        run = lint(copy)
    finally:
        path.write_text(before)
    assert run.returncode != 0
    assert f"{broken}" in run.stdout.split("Broken contracts", 1)[-1]
