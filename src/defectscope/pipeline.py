"""End-to-end runs used by the CLI and usable from Python: score a folder, evaluate a dataset.

Data flows one way: files -> ``data`` (validated arrays) -> detector (backbone features,
method) -> ``metrics`` -> ``report`` outputs. Every run writes into a hidden staging folder
that becomes the output folder only when the run succeeds, so a crash or Ctrl-C never leaves
half-written outputs, and an existing output folder is replaced only with ``overwrite``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from defectscope.calibration import calibrate_on_good, finish_verdict, verdict_settings
from defectscope.data.batch import read_batch
from defectscope.data.io import read_mask
from defectscope.data.layouts import Category, Sample, discover, plain_folder
from defectscope.errors import ConfigError
from defectscope.memory import guard_run
from defectscope.methods.base import Detector, Result
from defectscope.methods.registry import get_method
from defectscope.metrics import image_metrics, pixel_metrics, verdict_metrics
from defectscope.options import RunOptions, apply_threads
from defectscope.progress import Progress as ProgressCallback
from defectscope.progress import prefixed
from defectscope.report.atomic import atomic_write_text, staged_output
from defectscope.report.batch import write_batch_outputs
from defectscope.report.tables import metrics_markdown


def build_detector(options: RunOptions) -> Detector:
    """A zero-shot detector (see :mod:`defectscope.methods.registry`) configured from ``options``."""
    entry = get_method(options.method)
    if entry.needs_training:
        raise ConfigError(
            f"method '{options.method}' needs training: use `defectscope fit --method {options.method}` "
            f"then `defectscope predict`, or `defectscope evaluate --method {options.method}`"
        )
    return entry.build(options)


def _settings_with_inputs(result: Result, **inputs: Any) -> None:
    result.settings = {**result.settings, **{k: str(v) if isinstance(v, Path) else v for k, v in inputs.items()}}


def score_folder(
    folder: str | Path, out: str | Path, options: RunOptions = RunOptions(), progress: ProgressCallback | None = None
) -> Result:
    """Score every image under ``folder`` (recursive) and write ``out``: scores.csv, settings.json,
    maps/, report.html (and skipped.csv when files were skipped). With ``options.good`` the
    verdict is calibrated on those images and each image is scored against them."""
    apply_threads(options.threads)
    samples = plain_folder(folder)
    detector = build_detector(options)
    guard_run(detector, [s.path for s in samples])
    with staged_output(out, options.overwrite) as staging:
        if options.good is not None:
            calibrate_on_good(detector, options.good, options.false_alarm_rate, progress)
        images, paths, skipped = read_batch([s.path for s in samples], options.skip_unreadable)
        if len(images) < 2 and options.good is None:
            raise ConfigError(f"'{folder}' holds {len(images)} readable image(s); mutual scoring needs at least 2")
        started = time.perf_counter()
        result = finish_verdict(detector.predict(images, [str(p) for p in paths], progress=progress), options)
        _settings_with_inputs(result, input=Path(folder), seconds=round(time.perf_counter() - started, 2), **verdict_settings(options))
        write_batch_outputs(staging, result, images, title=f"defectscope: {Path(folder).name}", skipped=skipped, communities=result.extras.get("communities"))
    return result


def _mask_at(mask: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize a ground-truth mask to the map resolution (a side or (height, width); bilinear,
    then > 0.5)."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if mask.shape == (height, width):
        return mask
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.BILINEAR)
    return np.asarray(resized) > 127


def load_ground_truth(samples: Sequence[Sample], images: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Full-resolution boolean masks for labelled samples (empty for normal images)."""
    masks = []
    for sample, image in zip(samples, images):
        if sample.mask_path is not None:
            masks.append(read_mask(sample.mask_path, expected_shape=image.shape[:2]))
        else:
            masks.append(np.zeros(image.shape[:2], dtype=bool))
    return masks


def category_metrics(
    result: Result,
    samples: Sequence[Sample],
    images: Sequence[np.ndarray],
    has_masks: bool,
    *,
    ground_truth: Sequence[np.ndarray] | None = None,
) -> dict[str, float | None]:
    """Image metrics always; pixel metrics at the maps' resolution when the category has masks,
    else reported as absent (None). ``ground_truth``: the full-resolution masks if already read."""
    labels = np.array([s.label for s in samples], dtype=int)
    metrics: dict[str, float | None] = dict(image_metrics(result.image_scores, labels))
    metrics.update(verdict_metrics(result.is_anomalous, labels, result.needs_review))
    size = tuple(result.anomaly_maps.shape[-2:])
    if has_masks:
        full = ground_truth if ground_truth is not None else load_ground_truth(samples, images)
        masks = np.stack([_mask_at(m, size) for m in full])
        metrics.update(pixel_metrics(result.anomaly_maps, masks))
        if result.masks is not None:
            from defectscope.metrics import binary_mask_metrics

            metrics.update(binary_mask_metrics(result.masks, masks, result.anomaly_maps))
    else:
        metrics.update({k: None for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")})
    return metrics


def _labels_text(samples: Sequence[Sample]) -> list[str | None]:
    return [("good" if s.label == 0 else (s.defect_type or "defective")) if s.label is not None else None for s in samples]


def evaluate_category(
    category: Category, options: RunOptions, progress: ProgressCallback | None = None, *, seed: int = 0
) -> tuple[Result, list[np.ndarray], list[Sample], list[tuple[Path, str]], dict[str, float | None]]:
    """Score one category's test set and measure it. Zero-shot methods: the test batch scores
    itself. Trained methods: see :func:`defectscope.training.evaluate_trained_category`."""
    if get_method(options.method).needs_training:
        from defectscope.training import evaluate_trained_category

        started = time.perf_counter()
        result, images, samples, protocol, skipped = evaluate_trained_category(category, options, kshot=options.kshot, seed=seed, progress=progress)
        _settings_with_inputs(result, category=category.name, input=category.root, seconds=round(time.perf_counter() - started, 2), protocol=protocol, **verdict_settings(options))
        return result, images, samples, skipped, category_metrics(result, samples, images, category.has_masks)
    detector = build_detector(options)
    guard_run(detector, [s.path for s in category.test])
    if options.good is not None:
        calibrate_on_good(detector, options.good, options.false_alarm_rate, progress)
    images, kept, skipped = read_batch([s.path for s in category.test], options.skip_unreadable)
    by_path = {s.path: s for s in category.test}
    samples = [by_path[p] for p in kept]
    ground_truth = load_ground_truth(samples, images) if category.has_masks else None
    started = time.perf_counter()
    result = finish_verdict(detector.predict(images, [str(s.path) for s in samples], progress=progress), options)
    _settings_with_inputs(result, category=category.name, input=category.root, seconds=round(time.perf_counter() - started, 2), **verdict_settings(options))
    metrics = category_metrics(result, samples, images, category.has_masks, ground_truth=ground_truth)
    return result, images, samples, skipped, metrics


def evaluate_dataset(
    root: str | Path,
    out: str | Path,
    options: RunOptions = RunOptions(),
    *,
    categories: Sequence[str] | None = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
    on_category: Callable[[str, dict[str, float | None]], None] | None = None,
) -> dict[str, dict[str, float | None]]:
    """Evaluate every category under ``root``; writes ``out/metrics.json`` ({category: {metric:
    value}}, fractions, null = undefined), ``out/metrics.md`` (table with a mean row) and the
    per-image outputs of each category under ``out/<category>/``.

    ``options.good`` holds the good images of one product, so with several categories it is
    refused, except ``good == root`` for a zero-shot method: then each category is calibrated
    on (and scored against) its own ``train/good``."""
    found = discover(root, seed=seed)
    if categories:
        wanted = set(categories)
        unknown = wanted - {c.name for c in found}
        if unknown:
            raise ConfigError(f"no category named {', '.join(sorted(unknown))} under '{root}'; found {', '.join(c.name for c in found)}")
        found = [c for c in found if c.name in wanted]
    own_good = options.good is not None and len(found) > 1
    if own_good:
        trained = get_method(options.method).needs_training
        if trained or Path(options.good).resolve() != Path(root).resolve():
            hint = "" if trained else f", or pass --good '{root}' to use each category's own train/good"
            raise ConfigError(
                f"--good '{options.good}' holds the good images of one product but '{root}' has {len(found)} categories "
                f"({', '.join(c.name for c in found)}): evaluate one with --category NAME{hint}"
            )
    return evaluate_categories(found, out, options, progress=progress, on_category=on_category, seed=seed, own_good=own_good)


def evaluate_categories(
    found: Sequence[Category],
    out: str | Path,
    options: RunOptions = RunOptions(),
    *,
    progress: ProgressCallback | None = None,
    on_category: Callable[[str, dict[str, float | None]], None] | None = None,
    seed: int = 0,
    own_good: bool = False,
) -> dict[str, dict[str, float | None]]:
    """Evaluate the given categories into ``out`` (see :func:`evaluate_dataset`); ``own_good``:
    each category's verdict is calibrated on its own folder's ``train/good``."""
    apply_threads(options.threads)
    results: dict[str, dict[str, float | None]] = {}
    with staged_output(out, options.overwrite) as staging:
        for category in found:
            report = prefixed(progress, category.name)
            category_options = dataclasses.replace(options, good=category.root) if own_good else options
            result, images, samples, skipped, metrics = evaluate_category(category, category_options, report, seed=seed)
            results[category.name] = metrics
            write_batch_outputs(
                staging / category.name,
                result,
                images,
                title=f"defectscope: {category.name}",
                skipped=skipped,
                labels=_labels_text(samples),
                metrics={category.name: metrics},
                communities=result.extras.get("communities"),
            )
            if on_category is not None:
                on_category(category.name, metrics)
        atomic_write_text(staging / "metrics.json", json.dumps(results, indent=2) + "\n")
        atomic_write_text(staging / "metrics.md", metrics_markdown(results))
    return results
