"""The scorers of `defectscope watch` built from the run's options: a detector that scores each
image by itself (a saved model, or a zero-shot detector calibrated on ``--good`` images: its
reference mode, the same code and verdict as ``score --good``), or a zero-shot detector on the
rolling bank of the stream (:class:`defectscope.methods.rolling.ZeroShotScorer`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from defectscope.errors import ConfigError
from defectscope.methods.rolling import Scored, ZeroShotScorer
from defectscope.options import RunOptions
from defectscope.runs.sequence import calibrate_on_good
from defectscope.runs.spec import RunSpec, resolve_run

WATCH_DEFAULTS = {"bank_size": 100, "min_bank": 20}
"""The rolling bank's size and first batch when not given."""


class ModelScorer:
    """A fitted detector, one image at a time: a trained U-Flow or PRN model, or MuSc/CoDeGraph
    in reference mode (calibrated on good images; ``good`` lists them)."""

    rolling = False

    def __init__(self, detector, good: list[str] | None = None) -> None:
        self.detector = detector
        self.good = good or []

    def settings(self) -> dict:
        """The model's settings (for the watch's settings)."""
        return self.detector.settings()

    def batch_facts(self) -> dict:
        """Reference mode's ``part_crop`` decision on the good images (none for a trained model)."""
        plan = getattr(self.detector, "reference_crop", None)
        return {} if plan is None or self.detector.config.part_crop == "off" else {"part_crop": plan.facts}

    def score(self, key: str, image: np.ndarray, ready_at: float) -> list[Scored]:
        result = self.detector.predict([image], [key])
        verdict = getattr(result, "is_anomalous", None)
        if verdict is not None:
            anomalous: bool | None = bool(verdict[0])
        elif result.masks is not None:
            anomalous = bool(result.masks[0].any())
        else:
            anomalous = None
        doubt = getattr(result, "needs_review", None)
        review = doubt is not None and bool(doubt[0]) and not anomalous
        return [Scored(key, image, float(result.image_scores[0]), anomalous, result.anomaly_maps[0], ready_at, review)]

    def flush(self) -> list[Scored]:
        return []


def build_scorer(
    options: RunOptions | RunSpec | None,
    *,
    false_alarm_rate: float | None = None,
    bank_size: int | None = None,
    min_bank: int | None = None,
    good: str | Path | None = None,
    model: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> ModelScorer | ZeroShotScorer:
    """The scorer a watch run uses: a trained model, a fixed good bank, or the rolling bank.
    ``false_alarm_rate`` and ``good`` join the options;
    ``bank_size`` and ``min_bank`` are refused where they would be ignored."""
    spec = watch_spec(options, false_alarm_rate=false_alarm_rate, good=good, model=model, bank_size=bank_size, min_bank=min_bank)
    if model is not None:
        from defectscope.training import model_spec

        return ModelScorer(model_spec("watch", model, spec)[1])
    bank_size = WATCH_DEFAULTS["bank_size"] if bank_size is None else bank_size
    min_bank = WATCH_DEFAULTS["min_bank"] if min_bank is None else min_bank
    detector = spec.entry.build(spec.options)
    if spec.good is None:
        return ZeroShotScorer(detector, spec.false_alarm_rate, bank_size, min(min_bank, bank_size), log=log)
    log(f"calibrating on the good images of {spec.good} ...")
    batch = calibrate_on_good(detector, spec.good, spec.false_alarm_rate, most=bank_size, skip_unreadable=True)
    for path, reason in batch.skipped:
        log(f"good image skipped: {reason}")
    log(f"ready: {detector.calibration.rule if detector.calibration is not None else 'calibrated'}")
    return ModelScorer(detector, good=[str(p) for p in batch.paths])


def watch_spec(
    options: RunOptions | RunSpec | None, *, false_alarm_rate: float | None = None, good: Any = None, model: Any = None,
    bank_size: int | None = None, min_bank: int | None = None,
) -> RunSpec:
    """The watch run's options resolved (:func:`defectscope.runs.spec.resolve_run`): a --model
    refuses method settings and the bank options; a fixed --good bank refuses --min-bank."""
    if isinstance(options, RunSpec):
        return options
    options = options or RunOptions()
    if false_alarm_rate is not None:
        options = replace(options, false_alarm_rate=false_alarm_rate)
    good = options.good if good is None else good
    if good is not None and model is not None:
        raise ConfigError("give either --good or --model, not both")
    if model is not None and (bank_size is not None or min_bank is not None):
        raise ConfigError("--bank-size and --min-bank size the zero-shot bank; a --model scores each image by itself")
    if good is not None and min_bank is not None:
        raise ConfigError("--min-bank is the rolling bank's first batch; with --good the bank is the good images from the start")
    return resolve_run("watch", options, model=model, good=good)
