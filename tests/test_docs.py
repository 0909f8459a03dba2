"""The documentation stays a front door: short pages, links that resolve, the two commands first."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_and_benchmarks_stay_short():
    assert len((ROOT / "README.md").read_text().splitlines()) < 150
    assert len((ROOT / "docs" / "BENCHMARKS.md").read_text().splitlines()) < 500


def test_the_two_quick_start_commands_are_on_the_first_screen():
    head = "\n".join((ROOT / "README.md").read_text().splitlines()[:40])
    assert "defectscope demo --out demo-out" in head
    assert 'pip install -e ".[test]"' in head and "python -m pytest -q" in head


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
