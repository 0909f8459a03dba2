"""End-to-end runs used by the CLI and usable from Python: score a folder, evaluate a dataset.

Data flows one way: files -> ``data`` (validated arrays) -> detector (backbone features,
method) -> ``metrics`` -> ``report`` outputs. Every run writes into a hidden staging folder
that becomes the output folder only when the run succeeds, so a crash or Ctrl-C never leaves
half-written outputs, and an existing output folder is replaced only with ``overwrite``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from defectscope.data.batch import read_batch  # noqa: F401  (kept importable from here)
from defectscope.data.io import read_mask
from defectscope.data.layouts import Category, Sample, discover
from defectscope.errors import ConfigError
from defectscope.methods.base import Detector, Result
from defectscope.metrics import image_metrics, pixel_metrics, verdict_metrics
from defectscope.options import RunOptions, apply_threads
from defectscope.progress import Progress as ProgressCallback
from defectscope.progress import prefixed
from defectscope.report.atomic import atomic_write_text, json_text, staged_output
from defectscope.report.batch import write_batch_outputs
from defectscope.report.tables import metrics_markdown
from defectscope.runs import RunSpec, folder_images, resolve, run_batch


def build_detector(options: RunOptions | RunSpec, command: str = "score") -> Detector:
    """A zero-shot detector (see :mod:`defectscope.methods.registry`) configured from ``options``
    (resolved for ``command`` unless already a :class:`RunSpec`)."""
    spec = resolve(command, options)
    return spec.entry.build(spec.options)


def score_folder(
    folder: str | Path, out: str | Path, options: RunOptions | RunSpec | None = None, progress: ProgressCallback | None = None
) -> Result:
    """Score every image under ``folder`` (recursive) and write ``out``: scores.csv, settings.json,
    maps/, report.html (and skipped.csv when files were skipped). With ``options.good`` the
    verdict is calibrated on those images and each image is scored against them."""
    spec = resolve("score", options)
    apply_threads(spec.threads)
    samples = folder_images(folder)
    detector = build_detector(spec)
    with staged_output(out, spec.overwrite) as staging:
        result, batch = run_batch(detector, samples, spec, progress, minimum=2, what=str(folder), input=Path(folder))
        write_batch_outputs(staging, result, batch.images, title=f"defectscope: {Path(folder).name}", skipped=batch.skipped, communities=result.extras.get("communities"))
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
    category: Category, options: RunOptions | RunSpec, progress: ProgressCallback | None = None, *, seed: int = 0
) -> tuple[Result, list[np.ndarray], list[Sample], list[tuple[Path, str]], dict[str, float | None]]:
    """Score one category's test set and measure it. Zero-shot methods: the test batch scores
    itself. Trained methods: see :func:`defectscope.training.evaluate_trained_category`."""
    spec = resolve("evaluate", options)
    if spec.entry.needs_training:
        from defectscope.training import evaluate_trained_category

        result, images, samples, protocol, skipped = evaluate_trained_category(category, spec, seed=seed, progress=progress)
        return result, images, samples, skipped, category_metrics(result, samples, images, category.has_masks)
    detector = build_detector(spec, "evaluate")
    result, batch = run_batch(detector, category.test, spec, progress, category=category.name, input=category.root)
    metrics = category_metrics(result, batch.samples, batch.images, category.has_masks)
    return result, batch.images, batch.samples, batch.skipped, metrics


def evaluate_dataset(
    root: str | Path,
    out: str | Path,
    options: RunOptions | RunSpec | None = None,
    *,
    categories: Sequence[str] | None = None,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
    on_category: Callable[[str, dict[str, float | None]], None] | None = None,
) -> dict[str, dict[str, float | None]]:
    """Evaluate every category under ``root``; writes ``out/metrics.json`` ({category: {metric:
    value}}, fractions, null = undefined), ``out/metrics.md`` (table with a mean row) and the
    per-image outputs of each category under ``out/<category>/``.

    ``options.good`` holds the good images of one product, so with several categories it is
    refused, except ``good == root`` for a zero-shot method: then each category is calibrated
    on (and scored against) its own ``train/good``. ``seed`` (default 0) chooses the seeded splits
    (magnetic tiles, PRN's k-shot protocol); given where there is none, it is refused."""
    spec = resolve("evaluate", options)
    found = discover(root, seed=seed or 0)
    if seed is not None and not spec.entry.takes_anomalies and all(c.layout != "magnetic_tile" for c in found):
        raise ConfigError(f"--seed chooses the seeded splits (magnetic tiles, labelled defects for training); '{root}' has none for {spec.entry.label}")
    if categories:
        wanted = set(categories)
        unknown = wanted - {c.name for c in found}
        if unknown:
            raise ConfigError(f"no category named {', '.join(sorted(unknown))} under '{root}'; found {', '.join(c.name for c in found)}")
        found = [c for c in found if c.name in wanted]
    own_good = spec.good is not None and len(found) > 1
    if own_good:
        trained = spec.entry.needs_training
        if trained or Path(spec.good).resolve() != Path(root).resolve():
            hint = "" if trained else f", or pass --good '{root}' to use each category's own train/good"
            raise ConfigError(
                f"--good '{spec.good}' holds the good images of one product but '{root}' has {len(found)} categories "
                f"({', '.join(c.name for c in found)}): evaluate one with --category NAME{hint}"
            )
    return evaluate_categories(found, out, spec, progress=progress, on_category=on_category, seed=seed or 0, own_good=own_good)


def evaluate_categories(
    found: Sequence[Category],
    out: str | Path,
    options: RunOptions | RunSpec | None = None,
    *,
    progress: ProgressCallback | None = None,
    on_category: Callable[[str, dict[str, float | None]], None] | None = None,
    seed: int = 0,
    own_good: bool = False,
) -> dict[str, dict[str, float | None]]:
    """Evaluate the given categories into ``out`` (see :func:`evaluate_dataset`); ``own_good``:
    each category's verdict is calibrated on its own folder's ``train/good``."""
    spec = resolve("evaluate", options)
    apply_threads(spec.threads)
    results: dict[str, dict[str, float | None]] = {}
    with staged_output(out, spec.overwrite) as staging:
        for category in found:
            report = prefixed(progress, category.name)
            category_spec = spec.with_good(category.root) if own_good else spec
            result, images, samples, skipped, metrics = evaluate_category(category, category_spec, report, seed=seed)
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
        atomic_write_text(staging / "metrics.json", json_text(results, indent=2) + "\n")
        atomic_write_text(staging / "metrics.md", metrics_markdown(results))
    return results
