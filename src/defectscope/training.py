"""Runs of the trained methods (U-Flow, PRN): fit, predict with a saved model, export, evaluate.

Like :mod:`defectscope.pipeline` this is library API the CLI calls. Models are folders of
safetensors + JSON (:mod:`defectscope.methods.modelfile`); training checkpoints go to a hidden
``.MODEL.checkpoint`` folder beside the model, used by ``resume`` and removed on success.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from defectscope.data.io import read_mask
from defectscope.data.layouts import Category, Sample, labelled_defects
from defectscope.errors import ConfigError
from defectscope.memory import guard_run
from defectscope.methods.base import Detector, Result
from defectscope.methods.modelfile import read_model_config
from defectscope.methods.registry import MethodEntry, get_method, method_names
from defectscope.options import RunOptions, apply_threads
from defectscope.progress import Progress as ProgressCallback
from defectscope.report.atomic import staged_output
from defectscope.report.batch import write_batch_outputs
from defectscope.runs import RunSpec, folder_images, good_images, read_samples, resolve, run_batch
from defectscope.methods.config import DEFAULT_KSHOT  # noqa: F401  (kept importable from here)
from defectscope.runs.spec import resolve_run


def _trained_method(method: str) -> MethodEntry:
    entry = get_method(method)
    if not entry.needs_training:
        raise ConfigError(f"method '{method}' is not trained; choose one of {', '.join(method_names(trained=True))}")
    return entry


def _read_pairs(samples: Sequence[Sample]) -> list[tuple[np.ndarray, np.ndarray]]:
    images = read_samples(samples).images
    return [(image, read_mask(s.mask_path, expected_shape=image.shape[:2])) for image, s in zip(images, samples)]


def train_detector(
    method: str,
    normal: Sequence[Sample],
    anomalies: Sequence[Sample] = (),
    options: RunOptions | RunSpec | None = None,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
    detector: Detector | None = None,
):
    """Build and train a trained method's detector on normal samples (and labelled defects for
    methods that take them, e.g. PRN). ``detector``: one already built from ``options``."""
    entry = _trained_method(method)
    if anomalies and not entry.takes_anomalies:
        takers = [name for name in method_names(trained=True) if get_method(name).takes_anomalies]
        raise ConfigError(f"{entry.label} trains on normal images only; --anomalies is for --method {', '.join(takers)}")
    if detector is None:
        spec = resolve("fit", options if isinstance(options, RunSpec) else replace(options or RunOptions(), method=method))
        detector = entry.build(spec.options)
    guard_run(detector, [s.path for s in normal])
    images = read_samples(normal).images
    kwargs: dict[str, Any] = {"progress": progress, "checkpoint_dir": checkpoint_dir, "resume": resume}
    if entry.takes_anomalies:
        kwargs["anomalies"] = _read_pairs(anomalies)
    return detector.fit(images, **kwargs)


def fit_model(
    method: str,
    train_dir: str | Path,
    out: str | Path,
    options: RunOptions | None = None,
    *,
    anomalies_dir: str | Path | None = None,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Train on ``train_dir`` (an MVTec category's train/good, or a folder of good parts) and
    save the model folder ``out`` atomically."""
    spec = resolve("fit", replace(options or RunOptions(), method=method))
    apply_threads(spec.threads)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not spec.overwrite:
        raise ConfigError(f"model folder '{out}' already exists; pass --overwrite to replace it")
    entry = spec.entry
    anomalies = labelled_defects(anomalies_dir) if anomalies_dir is not None else []
    if entry.takes_anomalies and not anomalies:
        raise ConfigError(f"{entry.label} needs labelled defects: pass --anomalies DIR (defective images with masks)")
    checkpoint = out.with_name(f".{out.name}.checkpoint")
    detector = train_detector(method, good_images(train_dir), anomalies, spec, checkpoint_dir=checkpoint, resume=resume, progress=progress)
    detector.save(out, overwrite=True)
    shutil.rmtree(checkpoint, ignore_errors=True)
    return out


def load_detector(model: str | Path, device: str | None = None) -> Detector:
    """Load a saved model of a trained method, whichever method made it, on ``device`` (None:
    the device saved with it)."""
    method = read_model_config(model).get("method")
    entry = get_method(method) if method in method_names(trained=True) else None
    if entry is None:
        raise ConfigError(f"model '{model}' was made by method '{method}', which `predict` cannot load")
    return entry.load(model, device)


def model_spec(command: str, model: str | Path, options: RunOptions | RunSpec | None) -> tuple[RunSpec, Detector]:
    """Load a saved model for ``command`` (predict, watch, serve) and resolve the options against
    the method that made it; the run's false-alarm rate goes to a verdict that takes one."""
    spec = options if isinstance(options, RunSpec) else resolve_run(command, options, model=model)
    apply_threads(spec.threads)
    detector = load_detector(model, spec.device)
    setting = spec.entry.option_fields.get("false_alarm_rate")
    if setting is not None:
        detector.config = replace(detector.config, **{setting: spec.false_alarm_rate})
    return spec, detector


def predict_folder(
    model: str | Path, folder: str | Path, out: str | Path, options: RunOptions | RunSpec | None = None, progress: ProgressCallback | None = None
) -> Result:
    """Score every image under ``folder`` with a saved model; writes the usual outputs (and
    ``masks/`` for U-Flow's automatic-threshold masks)."""
    spec, detector = model_spec("predict", model, options)
    samples = folder_images(folder)
    with staged_output(out, spec.overwrite) as staging:
        result, batch = run_batch(detector, samples, spec, progress, model=str(model), input=str(folder))
        write_batch_outputs(staging, result, batch.images, title=f"defectscope: {Path(folder).name}", skipped=batch.skipped)
    return result


def export_model(model: str | Path, out: str | Path, fmt: str = "onnx") -> Path:
    """Export a saved model of a trained method (image -> anomaly map) to ONNX."""
    if fmt != "onnx":
        raise ConfigError(f"export format '{fmt}' is not supported; use onnx")
    detector = load_detector(model, "cpu")
    return get_method(detector.method).export(detector, out)


def evaluate_trained_category(
    category: Category, options: RunOptions | RunSpec, *, kshot: int | None = None, seed: int = 0, progress: ProgressCallback | None = None
) -> tuple[Result, list[np.ndarray], list[Sample], dict[str, Any], list[tuple[Path, str]]]:
    """Train on the category's normal training images (PRN: plus k labelled defects per type
    taken from the test set by the seeded protocol), then predict the remaining test images.

    The test set is read with ``options.skip_unreadable`` and checked against the memory guard
    before training starts. Returns (result, test images, test samples scored, protocol
    description, skipped test files as (path, reason))."""
    spec = resolve("evaluate", options if kshot is None or isinstance(options, RunSpec) else replace(options, kshot=kshot))
    entry = spec.entry
    started = time.perf_counter()
    test = list(category.test)
    anomalies: list[Sample] = []
    if entry.takes_anomalies:
        from defectscope.methods.prn.protocol import kshot_split

        anomalies, test = kshot_split(test, k=spec.kshot, seed=seed)
        if not anomalies:
            raise ConfigError(f"category '{category.name}' has no defective images with masks to train {entry.label} on")
    if not category.train:
        raise ConfigError(f"category '{category.name}' has no normal training images for {entry.name}")
    detector = entry.build(spec.options)
    guard_run(detector, [s.path for s in test])  # the test set too, before any training
    detector = train_detector(entry.name, category.train, anomalies, spec, progress=progress, detector=detector)
    result, batch = run_batch(detector, test, spec, progress, guarded=True, category=category.name, input=category.root)
    protocol = {"train_normal": len(category.train), "train_defective": len(anomalies), "test": len(batch.samples), "kshot": spec.kshot if entry.takes_anomalies else None, "seed": seed}
    result.settings.update(seconds=round(time.perf_counter() - started, 2), protocol=protocol)
    return result, batch.images, batch.samples, protocol, batch.skipped
