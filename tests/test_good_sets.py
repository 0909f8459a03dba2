"""Known-good mode (``--good``): the good images' leave-one-out scores and the scores of new
normal images are exchangeable, and an image's score depends on the good set and itself only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defectscope.methods import musc as musc_module
from defectscope.methods.bank import reference_scores
from defectscope.methods.musc import MuSc, MuScConfig


class FeatureMuSc(MuSc):
    """MuSc whose "images" are indices into synthetic feature sets (the library's scoring path
    otherwise: leave-one-out calibration, reference scoring, border rule, blur, maxima)."""

    def __init__(self, config: MuScConfig, sets: list[torch.Tensor], grid: tuple[int, int]) -> None:
        super().__init__(config)
        self._sets, self._grid = sets, grid

    def input_shape(self, images):
        return None

    def feature_sets(self, images, progress=None, *, native_grids=False, shape="batch"):
        index = torch.as_tensor(list(images), dtype=torch.long)
        return [s[index] for s in self._sets], self._grid, torch.zeros(len(index), 4)


def normal_parts(count: int, grid: tuple[int, int], seed: int) -> list[torch.Tensor]:
    """iid normal parts of two looks (70 / 30 %): two feature sets of unit patch vectors."""
    generator = torch.Generator().manual_seed(seed)
    length, channels = grid[0] * grid[1], 12
    looks = torch.randn(2, channels, generator=generator)
    which = (torch.rand(count, generator=generator) < 0.3).long()
    sets = []
    for spread in (0.6, 0.9):
        patches = looks[which][:, None, :] + spread * torch.randn(count, length, channels, generator=generator)
        sets.append(F.normalize(patches, dim=-1))
    return sets


def set_gaps(draws: int, size: int, fresh: int, grid=(6, 6)) -> np.ndarray:
    """Per random good set: mean score of fresh normal parts minus the mean leave-one-out score
    of the good set (both through MuSc's calibrate / predict)."""
    pool = draws * (size + fresh)
    sets = normal_parts(pool, grid, seed=11)
    detector = FeatureMuSc(MuScConfig(image_size=96, smoothing_sigma=2.0, part_crop="off"), sets, grid)
    gaps = []
    for d in range(draws):
        good = list(range(d * (size + fresh), d * (size + fresh) + size))
        new = list(range(good[-1] + 1, good[-1] + 1 + fresh))
        detector.calibrate(good, 0.2)
        own = detector.good_scores
        gaps.append(float(detector.predict(new).image_scores.mean() - own.mean()))
    return np.asarray(gaps)


def test_good_scores_and_new_normal_scores_are_exchangeable(monkeypatch):
    """Each good image is scored against the other n - 1; a new image against all n, averaged over
    leaving one out, so both are "an unseen normal part against n - 1 good ones" and their means
    agree over good sets. Scoring new images against all n instead (one reference more) shifts
    them, and the test sees it: it can fail."""
    gaps = set_gaps(draws=40, size=6, fresh=6)
    error = gaps.std(ddof=1) / np.sqrt(gaps.size)
    assert abs(gaps.mean()) < 3 * error, (gaps.mean(), error)

    plain = lambda q, r, lower, upper, drop_one=False: reference_scores(q, r, lower, upper, drop_one=False)  # noqa: E731
    monkeypatch.setattr(musc_module, "reference_scores", plain)
    shifted = set_gaps(draws=40, size=6, fresh=6)
    assert shifted.mean() > 3 * shifted.std(ddof=1) / np.sqrt(shifted.size), shifted.mean()


def test_reference_mode_score_does_not_depend_on_the_batch():
    """With keep_aspect a batch is resized to its own median aspect; in reference mode every image
    is resized as the good images were, so a part scores the same alone or among wide images
    (before, the wide batch got another input and was refused for its feature grid)."""
    from defectscope.data.synthetic import synthetic_images

    good, _ = synthetic_images(6, kind="texture", size=96, seed=5)
    part = synthetic_images(1, kind="texture", size=96, seed=6)[0][0]
    wide = [np.concatenate([image, image[:, :64]], axis=1) for image in synthetic_images(2, kind="texture", size=96, seed=7)[0]]
    detector = MuSc(MuScConfig(image_size=96)).calibrate(good, 0.2)
    alone = detector.predict([part]).image_scores
    among = detector.predict([part, *wide]).image_scores
    assert among.shape == (3,)
    assert np.allclose(alone[0], among[0], rtol=1e-5, atol=1e-6)
