"""Default MuSc on real shared data keeps its documented figures (skips without ../shared).

The stored figures come from `python bench/regression_figures.py` (same code path). A drop of
more than 2 points of image AUROC or pixel AP, or a false-alarm rate above the 5 % budget, fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

STORED = json.loads((Path(__file__).resolve().parents[1] / "bench" / "expected" / "regression_musc.json").read_text())


@pytest.mark.shared
@pytest.mark.parametrize("name", sorted(STORED))
def test_default_musc_keeps_its_figures(shared_datasets, name):
    from regression_figures import measure

    got, want = measure(name, shared_datasets), STORED[name]
    assert got["image_auroc"] >= want["image_auroc"] - 0.02, (name, got, want)
    assert got["pixel_ap"] >= want["pixel_ap"] - 0.02, (name, got, want)
    assert got["verdict_false_alarm_rate"] <= 0.05, (name, got)

