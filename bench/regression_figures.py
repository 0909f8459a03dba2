"""The figures the real-data regression test guards (tests/test_real_regression.py).

    python bench/regression_figures.py            # writes bench/expected/regression_musc.json (tracked)

MuSc with its default settings (as `defectscope evaluate` runs it) on two shared categories:
hazelnut_toy (23 test images, an object) and pa_fvn01_tl (72, the paper type whose border made
it hardest). Image AUROC, pixel AUROC and pixel AP, and the verdict's false-alarm rate. These are
development data: the figures guard against regressions, they are not held-out results.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from defectscope.data.layouts import mvtec_category
from defectscope.options import RunOptions
from defectscope.pipeline import evaluate_category

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
CATEGORIES = {"hazelnut_toy": "hazelnut_toy", "pa_fvn01_tl": "paper_impurities/pa_fvn01_tl"}
"""name -> folder under the shared datasets."""
KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "verdict_false_alarm_rate")
OUT = Path(__file__).resolve().parent / "expected" / "regression_musc.json"


def measure(name: str, shared: Path = SHARED) -> dict[str, float]:
    """Default MuSc on one category, the evaluate path, one thread."""
    torch.set_num_threads(1)
    category = mvtec_category(shared / CATEGORIES[name])
    metrics = evaluate_category(category, RunOptions(threads=1))[-1]
    return {key: float(metrics[key]) for key in KEYS}


if __name__ == "__main__":
    figures = {name: measure(name) for name in CATEGORIES}
    OUT.write_text(json.dumps(figures, indent=1) + "\n")
    print(json.dumps(figures, indent=1))
