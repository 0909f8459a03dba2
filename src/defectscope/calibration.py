"""``--good DIR``: calibrate a detector's verdict on a folder of known-good images.

Used by :mod:`defectscope.pipeline` (score, evaluate) and :mod:`defectscope.training` (predict,
evaluate of trained methods), so that neither imports the other for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from defectscope.data.batch import read_batch
from defectscope.data.layouts import training_images
from defectscope.memory import guard_run
from defectscope.methods.base import Detector, Result
from defectscope.methods.verdict import limit_review, require_good_images
from defectscope.options import RunOptions
from defectscope.progress import Progress, prefixed


def calibrate_on_good(detector: Detector, good: str | Path, false_alarm_rate: float, progress: Progress | None = None) -> Detector:
    """Read the good images under ``good`` (an MVTec category's ``train/good``, else every image
    in the folder) and calibrate ``detector`` on them at ``false_alarm_rate``
    (:meth:`Detector.calibrate`). A folder too small for that rate, or too large for memory, is
    refused before any image is decoded."""
    samples = training_images(good)
    require_good_images(len(samples), false_alarm_rate)
    guard_run(detector, [s.path for s in samples])
    images, _, _ = read_batch([s.path for s in samples])
    return detector.calibrate(images, false_alarm_rate, progress=prefixed(progress, "good images"))


def verdict_settings(options: RunOptions) -> dict[str, Any]:
    """The run settings that shape the verdict, for ``settings.json`` (with the device used)."""
    from defectscope.device import device_name

    return {
        "false_alarm_rate": options.false_alarm_rate,
        "review_budget": options.review_budget,
        "good": None if options.good is None else str(options.good),
        "device": device_name(options.device),
    }


def finish_verdict(result: Result, options: RunOptions) -> Result:
    """Apply the run's review budget to ``result``'s verdict (every run calls this after predict)."""
    return limit_review(result, options.review_budget)
