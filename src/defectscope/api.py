"""The task functions of ``import defectscope as ds``: score, evaluate, fit, predict, load_model.

Each is the library run behind the CLI command of the same name (``pipeline.py`` and
``training.py``), taking the command's options as keyword arguments (any field of
:class:`defectscope.options.RunOptions`: ``method``, ``backbone``, ``image_size``, ``good``,
``false_alarm_rate``, ``skip_unreadable``, ``overwrite``, ``method_options``, ...) or a ready
``RunOptions`` as ``options``. Outputs are written the way the CLI writes them (atomically).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Sequence

from defectscope.errors import ConfigError
from defectscope.methods.base import Detector, Result
from defectscope.options import RunOptions
from defectscope.progress import Progress

__all__ = ["evaluate", "fit", "load_model", "predict", "score"]


def _options(options: RunOptions | None, settings: dict[str, Any]) -> RunOptions:
    """``options`` (default ``RunOptions()``) with ``settings`` replacing its fields."""
    base = RunOptions() if options is None else options
    known = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
    return dataclasses.replace(base, **settings) if settings else base


def score(
    folder: str | Path, out: str | Path, options: RunOptions | None = None, *, progress: Progress | None = None, **settings: Any
) -> Result:
    """Score every image under ``folder`` (recursive) with a zero-shot method; like
    ``defectscope score FOLDER --out OUT``.

    Writes ``out``: scores.csv, settings.json, maps/, report.html (skipped.csv when files were
    skipped). With ``good=DIR`` the verdict is calibrated on those known-good images and each
    image is scored against them; without it the batch scores itself (at least 2 images).
    Returns the :class:`Result` (scores, maps and verdicts in input order).

    Example: ``ds.score("parts/", "out/", image_size=256, good="good_parts/")``.
    """
    from defectscope.pipeline import score_folder

    return score_folder(folder, out, _options(options, settings), progress)


def evaluate(
    root: str | Path,
    out: str | Path,
    options: RunOptions | None = None,
    *,
    categories: Sequence[str] | None = None,
    seed: int | None = None,
    progress: Progress | None = None,
    on_category: Callable[[str, dict[str, float | None]], None] | None = None,
    **settings: Any,
) -> dict[str, dict[str, float | None]]:
    """Measure a method on labelled data (an MVTec AD category, a folder of categories, or a
    Magnetic Tile root); like ``defectscope evaluate ROOT --out OUT``.

    Zero-shot methods score each category's test set as one batch; trained methods (``method=
    "uflow"`` or ``"prn"``) train on ``train/good`` first. Returns ``{category: {metric: value}}``
    (fractions; None where a metric is undefined) and writes metrics.json, metrics.md and each
    category's outputs under ``out``. ``categories``: only these; ``seed``: the documented splits
    (default 0; refused where there is none). An option the method would ignore is refused.
    """
    from defectscope.pipeline import evaluate_dataset

    return evaluate_dataset(
        root, out, _options(options, settings), categories=categories, seed=seed, progress=progress, on_category=on_category
    )


def fit(
    train: str | Path,
    out: str | Path,
    *,
    method: str,
    anomalies: str | Path | None = None,
    resume: bool = False,
    options: RunOptions | None = None,
    progress: Progress | None = None,
    **settings: Any,
) -> Path:
    """Train a trained method (``method="uflow"`` or ``"prn"``) on good images and save the model
    folder ``out``; like ``defectscope fit TRAIN --method M --out OUT``.

    ``train``: an MVTec category (its train/good is used) or a folder of good parts.
    ``anomalies``: PRN's labelled defects (an MVTec category, or images with ``<name>_mask.png``
    beside them). ``resume``: continue an interrupted training from its checkpoint. Returns ``out``.
    """
    from defectscope.training import fit_model

    return fit_model(method, train, out, _options(options, {**settings, "method": method}), anomalies_dir=anomalies, resume=resume, progress=progress)


def predict(
    model: str | Path, folder: str | Path, out: str | Path, options: RunOptions | None = None, *, progress: Progress | None = None, **settings: Any
) -> Result:
    """Score every image under ``folder`` with a saved model (from :func:`fit`); like
    ``defectscope predict MODEL FOLDER --out OUT``. Writes the same outputs as :func:`score`
    (plus masks/ for U-Flow) and returns the :class:`Result`."""
    from defectscope.training import predict_folder

    return predict_folder(model, folder, out, _options(options, settings), progress)


def load_model(model: str | Path) -> Detector:
    """Load a saved model folder (U-Flow or PRN, whichever made it) as a fitted detector whose
    ``predict(images)`` takes a list of (H, W, 3) uint8 arrays."""
    from defectscope.training import load_detector

    return load_detector(model)
