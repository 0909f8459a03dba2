"""Runs of the trained methods (U-Flow, PRN): fit, predict with a saved model, export, evaluate.

Like :mod:`defectscope.pipeline` this is library API the CLI calls. Models are folders of
safetensors + JSON (:mod:`defectscope.methods.modelfile`); training checkpoints go to a hidden
``.MODEL.checkpoint`` folder beside the model, used by ``resume`` and removed on success.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from defectscope.data.io import read_mask
from defectscope.data.layouts import Category, Sample, labelled_defects, plain_folder, training_images
from defectscope.errors import ConfigError
from defectscope.methods.base import Result, build_config
from defectscope.methods.modelfile import read_model_config
from defectscope.pipeline import TRAINED_METHODS, RunOptions, apply_threads, read_batch
from defectscope.report.atomic import staged_output
from defectscope.report.batch import write_batch_outputs

ProgressCallback = Callable[[str, int, int], None]
DEFAULT_KSHOT = 10


def _config(method: str, options: RunOptions, extra: Mapping[str, Any]):
    values: dict[str, Any] = {}
    if options.backbone is not None:
        values["backbone"] = options.backbone
    if options.image_size is not None:
        values["image_size"] = options.image_size
    if method == "uflow":
        from defectscope.methods.uflow import UFlow, UFlowConfig

        if options.weights is not None:
            values["weights"] = options.weights
        values["feature_batch_size"] = options.batch_size
        return UFlow(build_config(UFlowConfig, {**values, **extra}))
    if method == "prn":
        from defectscope.methods.prn import PRN, PRNConfig

        if options.weights is not None:
            values["backbone_weights"] = options.weights
        return PRN(build_config(PRNConfig, {**values, **extra}))
    raise ConfigError(f"method '{method}' is not trained; choose one of {', '.join(TRAINED_METHODS)}")


def _adapt_progress(method: str, progress: ProgressCallback | None):
    """PRN reports PRNProgress objects; U-Flow reports (stage, done, total)."""
    if progress is None or method == "uflow":
        return progress
    return lambda event: progress(event.stage, event.done, event.total)


def _read_pairs(samples: Sequence[Sample]) -> list[tuple[np.ndarray, np.ndarray]]:
    images, _, _ = read_batch([s.path for s in samples])
    return [(image, read_mask(s.mask_path, expected_shape=image.shape[:2])) for image, s in zip(images, samples)]


def train_detector(
    method: str,
    normal: Sequence[Sample],
    anomalies: Sequence[Sample] = (),
    options: RunOptions = RunOptions(),
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
):
    """Build and train a U-Flow or PRN detector on normal samples (and labelled defects for PRN)."""
    detector = _config(method, options, options.method_options)
    images, _, _ = read_batch([s.path for s in normal])
    kwargs = {"progress": _adapt_progress(method, progress), "checkpoint_dir": checkpoint_dir, "resume": resume}
    if method == "prn":
        detector.fit(images, _read_pairs(anomalies), **kwargs)
    else:
        if anomalies:
            raise ConfigError("U-Flow trains on normal images only; --anomalies is for --method prn")
        detector.fit(images, **kwargs)
    return detector


def fit_model(
    method: str,
    train_dir: str | Path,
    out: str | Path,
    options: RunOptions = RunOptions(),
    *,
    anomalies_dir: str | Path | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Train on ``train_dir`` (an MVTec category's train/good, or a folder of good parts) and
    save the model folder ``out`` atomically."""
    apply_threads(options.threads)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not options.overwrite:
        raise ConfigError(f"model folder '{out}' already exists; pass --overwrite to replace it")
    anomalies = labelled_defects(anomalies_dir) if anomalies_dir is not None else []
    if method == "prn" and not anomalies:
        raise ConfigError("PRN needs labelled defects: pass --anomalies DIR (defective images with masks)")
    checkpoint = out.with_name(f".{out.name}.checkpoint")
    detector = train_detector(method, training_images(train_dir), anomalies, options, checkpoint_dir=checkpoint, resume=resume, progress=progress)
    detector.save(out, overwrite=True)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return out


def load_detector(model: str | Path):
    """Load a saved U-Flow or PRN model, whichever method made it."""
    header = read_model_config(model)
    method = header.get("method")
    if method == "uflow":
        from defectscope.methods.uflow import UFlow

        return UFlow.load(model)
    if method == "prn":
        from defectscope.methods.prn import PRN

        return PRN.load(model)
    raise ConfigError(f"model '{model}' was made by method '{method}', which `predict` cannot load")


def predict_folder(
    model: str | Path, folder: str | Path, out: str | Path, options: RunOptions = RunOptions(), progress: ProgressCallback | None = None
) -> Result:
    """Score every image under ``folder`` with a saved model; writes the usual outputs (and
    ``masks/`` for U-Flow's automatic-threshold masks)."""
    apply_threads(options.threads)
    detector = load_detector(model)
    samples = plain_folder(folder)
    with staged_output(out, options.overwrite) as staging:
        images, paths, skipped = read_batch([s.path for s in samples], options.skip_unreadable)
        started = time.perf_counter()
        result = detector.predict(images, [str(p) for p in paths])
        result.settings = {**result.settings, "model": str(model), "input": str(folder), "seconds": round(time.perf_counter() - started, 2)}
        write_batch_outputs(staging, result, images, title=f"defectscope: {Path(folder).name}", skipped=skipped)
    return result


def export_model(model: str | Path, out: str | Path, fmt: str = "onnx") -> Path:
    """Export a saved U-Flow or PRN model (image -> anomaly map) to ONNX."""
    if fmt != "onnx":
        raise ConfigError(f"export format '{fmt}' is not supported; use onnx")
    method = read_model_config(model)["method"]
    detector = load_detector(model)
    if method == "uflow":
        from defectscope.methods.uflow.export import export_onnx
    else:
        from defectscope.methods.prn.export import export_onnx
    return export_onnx(detector, out)


def evaluate_trained_category(
    category: Category, options: RunOptions, *, kshot: int = DEFAULT_KSHOT, seed: int = 0, progress: ProgressCallback | None = None
) -> tuple[Result, list[np.ndarray], list[Sample], dict[str, Any]]:
    """Train on the category's normal training images (PRN: plus k labelled defects per type
    taken from the test set by the seeded protocol), then predict the remaining test images.

    Returns (result, test images, test samples scored, protocol description)."""
    method = options.method
    test = list(category.test)
    anomalies: list[Sample] = []
    if method == "prn":
        from defectscope.methods.prn import kshot_split

        anomalies, test = kshot_split(test, k=kshot, seed=seed)
        if not anomalies:
            raise ConfigError(f"category '{category.name}' has no defective images with masks to train PRN on")
    if not category.train:
        raise ConfigError(f"category '{category.name}' has no normal training images for {method}")
    detector = train_detector(method, category.train, anomalies, options, progress=progress)
    images, kept, _ = read_batch([s.path for s in test])
    by_path = {s.path: s for s in test}
    result = detector.predict(images, [str(p) for p in kept])
    protocol = {"train_normal": len(category.train), "train_defective": len(anomalies), "test": len(kept), "kshot": kshot if method == "prn" else None, "seed": seed}
    return result, images, [by_path[p] for p in kept], protocol
