"""PRN regression guard on real data: pixel AP on one paper type must not drop by more than 2
points below the figure stored in bench/expected/prn_reference.json (protocol ``guard`` of
bench/bench_prn.py: 128 px input, 2 epochs of 96 samples, k = 10, seed 0). Skips without
../shared. The stored figure was produced by ``python bench/bench_prn.py --suite --protocol guard
--only pa_btn01_rl --update``; a change that moves it on purpose must re-store it and say so."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from prn_benchmark import evaluate_category  # noqa: E402
CATEGORY = "pa_btn01_rl"
TOLERANCE = 0.02

pytestmark = [pytest.mark.shared, pytest.mark.slow]


def test_prn_pixel_ap_has_not_regressed(shared_datasets, one_thread):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from bench_prn import REFERENCE, protocol_config
    finally:
        sys.path.pop(0)
    stored = json.loads(REFERENCE.read_text())["guard"][CATEGORY]
    measured = evaluate_category(shared_datasets / "paper_impurities" / CATEGORY, protocol_config("guard"))
    pixel_ap = measured["metrics"]["pixel_ap"]
    assert measured["test"] == stored["test"]
    assert pixel_ap >= stored["pixel_ap"] - TOLERANCE, (
        f"PRN pixel AP on {CATEGORY} fell to {pixel_ap:.3f} from the stored {stored['pixel_ap']:.3f} "
        f"(commit {stored['commit']}); see docs/PRN.md"
    )
