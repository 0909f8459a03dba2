"""The zero-shot defaults end to end at the default input size, where every default is active.

Most tests run at 64-96 px to stay fast; there the border rule switches itself off (a 8 x 8 or
12 x 12 grid has too small an interior to be the reference) and the several-looks gate sees
tiny batches. These run MuSc and CoDeGraph with their untouched default configuration (224 px
input, 28 x 28 grid) on a small synthetic batch and check that each default really ran.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import defectscope.methods.mutual as mutual
from defectscope.data.synthetic import synthetic_images
from defectscope.methods.codegraph import CoDeGraph, CoDeGraphConfig
from defectscope.methods.musc import MuSc, MuScConfig

DEFECTIVE = (3, 7)


@pytest.fixture(scope="module")
def batch() -> list[np.ndarray]:
    images, _ = synthetic_images(10, kind="texture", size=256, seed=11, defective=DEFECTIVE, defect="spot")
    return images


def _spy_border(monkeypatch) -> list[bool]:
    """Record, for every call of the border rule, whether it changed the scores."""
    changed: list[bool] = []
    real = mutual.calibrate_border

    def spy(patch_scores, grid, depth=2):
        out = real(patch_scores, grid, depth)
        changed.append(bool(grid[0] >= 14 and not torch.equal(out, patch_scores)))
        return out

    for module in ("defectscope.methods.musc", "defectscope.methods.codegraph", "defectscope.methods.mutual"):
        monkeypatch.setattr(f"{module}.calibrate_border", spy, raising=False)
    return changed


@pytest.mark.parametrize("make", [lambda: MuSc(MuScConfig()), lambda: CoDeGraph(CoDeGraphConfig())], ids=["musc", "codegraph"])
def test_defaults_at_the_default_size_run_every_rule(batch, monkeypatch, make) -> None:
    torch.set_num_threads(1)
    changed = _spy_border(monkeypatch)
    detector = make()
    result = detector.predict(batch)
    assert detector.config.image_size is None or detector.config.image_size >= 224
    assert tuple(result.extras["grid"]) == (28, 28)  # the default input: a grid where the border rule applies
    assert changed and any(changed), "the border rule never changed a score at the default size"
    top = set(np.argsort(result.image_scores)[-len(DEFECTIVE):].tolist())
    assert top == set(DEFECTIVE)
    assert result.verdicts() is not None and result.threshold_rule
    assert all(result.verdicts()[i] != "normal" for i in DEFECTIVE)
