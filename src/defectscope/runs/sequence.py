"""The one run sequence behind score, evaluate, predict, trained evaluate and (per image) watch:
memory guard, calibration on good images, read, predict, finish the verdict, settings.

Threads are applied and outputs written by the command functions around it
(:mod:`defectscope.pipeline`, :mod:`defectscope.training`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from defectscope.data.layouts import Sample
from defectscope.memory import guard_run
from defectscope.methods.base import Detector, Result
from defectscope.methods.verdict import limit_review, require_good_images
from defectscope.progress import Progress, prefixed
from defectscope.runs.inputs import Batch, good_images, read_samples
from defectscope.runs.spec import RunSpec


def calibrate_on_good(
    detector: Detector,
    good: str | Path,
    false_alarm_rate: float,
    progress: Progress | None = None,
    *,
    most: int | None = None,
    skip_unreadable: bool = False,
) -> Batch:
    """Read the good images under ``good`` (:func:`good_images`; a seeded sample of at most
    ``most``) and calibrate ``detector`` on them at ``false_alarm_rate``
    (:meth:`Detector.calibrate`); returns the images read. A set too small for that rate, or too
    large for memory, is refused before any image is decoded."""
    samples = good_images(good)
    if most is not None:
        from defectscope.methods.bank import reference_sample

        samples = [samples[i] for i in reference_sample(len(samples), most)]
    require_good_images(len(samples), false_alarm_rate)
    guard_run(detector, [s.path for s in samples])
    batch = read_samples(samples, skip_unreadable)
    detector.calibrate(batch.images, false_alarm_rate, progress=prefixed(progress, "good images"))
    return batch


def run_batch(
    detector: Detector,
    samples: Sequence[Sample],
    spec: RunSpec,
    progress: Progress | None = None,
    *,
    guarded: bool = False,
    minimum: int = 0,
    what: str = "",
    **inputs: Any,
) -> tuple[Result, Batch]:
    """Run ``detector`` over ``samples``: the memory guard (unless already ``guarded``), the
    calibration on ``spec.good``, reading with ``spec.skip_unreadable``, predict, the review
    budget; ``result.settings`` gets ``inputs`` (paths as text), the seconds of predict and the
    run options used (:meth:`RunSpec.run_settings`). ``minimum``: readable images a batch without
    ``--good`` needs (mutual scoring), refused naming ``what``."""
    from defectscope.errors import ConfigError

    if not guarded:
        guard_run(detector, [s.path for s in samples])
    if spec.good is not None:
        calibrate_on_good(detector, spec.good, spec.false_alarm_rate, progress)
    batch = read_samples(samples, spec.skip_unreadable)
    if len(batch.images) < minimum and spec.good is None:
        raise ConfigError(f"'{what}' holds {len(batch.images)} readable image(s); mutual scoring needs at least {minimum}")
    started = time.perf_counter()
    result = limit_review(detector.predict(batch.images, batch.paths, progress=progress), spec.review_budget)
    seconds = round(time.perf_counter() - started, 2)
    result.settings = {**result.settings, **{k: str(v) if isinstance(v, Path) else v for k, v in inputs.items()}, "seconds": seconds, **spec.run_settings()}
    return result, batch
