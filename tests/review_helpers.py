"""A small finished run for the review tests, written by the real batch writer on synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from defectscope.data.synthetic import synthetic_images
from defectscope.methods.base import Result
from defectscope.methods.verdict import Threshold, with_verdict
from defectscope.report.batch import write_batch_outputs

DEFECTIVE = (1, 4)
N_IMAGES = 6
THRESHOLD = 0.5


def make_run(
    root: Path,
    *,
    verdicts: bool = True,
    masks: bool = True,
    size: int = 48,
    verdict_scores: np.ndarray | None = None,
    threshold: float = THRESHOLD,
    review_from: float | None = None,
) -> tuple[Path, list[str]]:
    """Write input images under ``root/inputs`` and a run's outputs to ``root/out``.

    Images 1 and 4 are defective. Scores: defective images high, image 5 (good) is the highest of
    the good ones and above the threshold, so its verdict is a false alarm; image 4's score is
    below the threshold, so it is a miss. With ``verdict_scores`` the verdict is ``threshold``
    applied to them instead of the scores (as MuSc decides on its map maxima); ``review_from``
    opens a review band from there up to the threshold. Returns the output folder and the input
    paths.
    """
    images, truth = synthetic_images(N_IMAGES, size=size, defective=DEFECTIVE, seed=3)
    inputs = root / "inputs"
    paths = []
    for index, image in enumerate(images):
        kind = "bad" if index in DEFECTIVE else "good"
        path = inputs / kind / f"{index:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
        paths.append(str(path))
    scores = np.array([0.10, 0.90, 0.20, 0.30, 0.45, 0.60])
    maps = np.stack([m.astype(np.float32) * s + 0.05 * i for i, (m, s) in enumerate(zip(truth, scores))])
    decided = scores if verdict_scores is None else np.asarray(verdict_scores)
    outlined = np.stack([t & (d > threshold) for t, d in zip(truth, decided)])  # a method outlines what it flags
    result = Result(paths=paths, image_scores=scores, anomaly_maps=maps, masks=outlined if masks else None,
                    settings={"method": "test", "false_alarm_rate": 0.05})
    if verdicts:
        with_verdict(result, Threshold(threshold, "test rule", review_from), verdict_scores)
    out = root / "out"
    write_batch_outputs(out, result, images, title="test run", workers=1)
    return out, paths
