"""PRN on one real category with a fixed protocol: the regression benchmark and its test use this.

Protocol (depends only on the file list, ``k``, ``seed`` and the PRN settings): an MVTec-layout
category trains on all its ``train/good`` images, a magnetic-tile root on the seeded half of
``MT_Free`` (:func:`defectscope.data.magnetic_tile`); ``kshot_split(test, k, seed)`` moves k
labelled defects per type into training, and every other test image is scored. Pixel metrics are
pooled over the test images with each map resized bilinearly to its image's own size
(:mod:`defectscope.metrics`; masks: value > 127), image metrics on the image scores, the verdict's
false-alarm rate, recall and review share on its decisions.

Two pixel protocols (:func:`pixel_figures`): ``image`` (each map resized bilinearly to its image's
own size, full-resolution masks: the figure this benchmark has always reported) and ``map`` (each
mask resized to the method's map size, bilinear then > 0.5, as ``defectscope evaluate`` and
bench/suite.py measure). ``musc=RunOptions(method="musc")`` also scores zero-shot MuSc, through
the library's evaluate path, on exactly PRN's test images (the batch scores itself), with the same
masks and metric code under both protocols, so that "PRN minus MuSc" is on one image set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data import magnetic_tile, mvtec_category, read_image, read_mask
from defectscope.data.layouts import Category
from defectscope.errors import ConfigError
from defectscope.methods.prn.detector import PRN, PRNConfig
from defectscope.methods.prn.protocol import kshot_split
from defectscope.metrics import image_metrics, pixel_metrics, verdict_metrics
from defectscope.report.overlay import resize_map


def load_category(root: str | Path, seed: int = 0) -> Any:
    """An MVTec-layout category, or the magnetic tiles (a root holding ``MT_Free``)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"category folder '{root}' does not exist")
    return magnetic_tile(root, seed=seed) if (root / "MT_Free").is_dir() else mvtec_category(root)



PROTOCOLS = {
    "image": "maps resized (bilinear) to each image's own size; full-resolution masks",
    "map": "masks resized (bilinear, > 0.5) to the method's map size; maps as they are",
}


def sample_masks(samples: list, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Full-resolution boolean ground truth of ``samples`` (value > 127; all False for normal
    images), each checked against its image's (height, width) in ``shapes``."""
    return [read_mask(s.mask_path, shape) if s.label == 1 else np.zeros(shape, dtype=bool) for s, shape in zip(samples, shapes)]


def pixel_figures(maps: Any, masks: list[np.ndarray], protocol: str) -> dict[str, Any]:
    """Pixel AUROC / AP / F1 / AUPRO of ``maps`` (at the method's map size) against the
    full-resolution ``masks`` under ``protocol`` (a key of :data:`PROTOCOLS`)."""
    from defectscope.pipeline import _mask_at

    if protocol not in PROTOCOLS:
        raise ValueError(f"pixel protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    if len(maps) != len(masks):
        raise ValueError(f"got {len(maps)} maps for {len(masks)} masks")
    if protocol == "image":
        return pixel_metrics([resize_map(m, k.shape) for m, k in zip(maps, masks)], masks)
    return pixel_metrics([np.asarray(m, dtype=np.float32) for m in maps], [_mask_at(k, tuple(np.shape(m)[-2:])) for m, k in zip(maps, masks)])


def musc_on_test(category: Any, test: list, options: Any = None) -> dict[str, Any]:
    """Zero-shot MuSc (``options``: a :class:`defectscope.options.RunOptions`, default MuSc at its
    defaults) on exactly the ``test`` samples of ``category`` as one batch, through the library's
    evaluate path; pixel figures under both protocols with :func:`pixel_figures`."""
    from defectscope.options import RunOptions
    from defectscope.pipeline import evaluate_category as evaluate_zero_shot

    options = options or RunOptions(method="musc")
    batch = Category(category.name, category.root, category.layout, [], list(test), category.has_masks)
    started = time.time()
    result, images, samples, skipped, metrics = evaluate_zero_shot(batch, options)
    seconds = round(time.time() - started, 1)
    if skipped or [str(s.path) for s in samples] != [str(s.path) for s in test]:
        raise RuntimeError(f"MuSc scored {len(samples)} of the {len(test)} test images of {category.name}")
    masks = sample_masks(samples, [image.shape[:2] for image in images])
    return {
        "method": options.method or "musc",
        "test": len(samples),
        "map_size": list(result.anomaly_maps.shape[-2:]),
        "pixel": {protocol: pixel_figures(result.anomaly_maps, masks, protocol) for protocol in PROTOCOLS},
        "image_auroc": metrics.get("image_auroc"),
        "verdict_false_alarm_rate": metrics.get("verdict_false_alarm_rate"),
        "verdict_recall": metrics.get("verdict_recall"),
        "seconds": seconds,
    }


def _chunks(detector: Any, test: list, batch: int) -> list[list[int]]:
    """Positions of ``test`` in prediction chunks of at most ``batch``, in order; for a PRN with
    ``tile_aspect`` the images it cuts into tiles are grouped by image size (a chunk of one size
    keeps its long maps' aspect, :mod:`defectscope.methods.prn.tiles`; the image scores do not
    depend on the chunk), after the images it does not cut."""
    order = list(range(len(test)))
    aspect = getattr(getattr(detector, "config", None), "tile_aspect", 0)
    groups: dict[Any, list[int]] = {None: []}
    if aspect > 0:
        from PIL import Image

        from defectscope.methods.prn.tiles import tile_count

        for position in order:
            with Image.open(test[position].path) as image:
                width, height = image.size
            key = (width, height) if tile_count((height, width), aspect) > 1 else None
            groups.setdefault(key, []).append(position)
    else:
        groups[None] = order
    return [group[i : i + batch] for group in groups.values() for i in range(0, len(group), batch)]


def predict_test(
    detector: Any, test: list, batch: int = 16, log: Any = None, *, raw_maps: list | None = None, review: list | None = None,
) -> tuple[list, list, list, list, list, Any]:
    """Predict the ``test`` samples in chunks of ``batch`` (:func:`_chunks`): (maps and
    ground-truth masks at each image's size, image scores, labels, verdict flags, the last
    chunk's Result), all in ``test`` order; ``log`` (a callable) hears the progress.
    ``raw_maps`` / ``review`` (lists), when given, receive each map at the detector's map size
    and each review flag."""
    rows: list[Any] = [None] * len(test)
    result, done = None, 0
    for chunk_positions in _chunks(detector, test, batch):
        chunk = [test[p] for p in chunk_positions]
        images = [read_image(s.path) for s in chunk]
        result = detector.predict(images, [str(s.path) for s in chunk])
        flags = [bool(v) for v in result.is_anomalous]
        reviews = [bool(v) for v in (result.needs_review if result.needs_review is not None else np.zeros(len(chunk), bool))]
        for i, (position, sample, image, anomaly_map, score) in enumerate(
            zip(chunk_positions, chunk, images, result.anomaly_maps, result.image_scores)
        ):
            shape = image.shape[:2]
            mask = read_mask(sample.mask_path, shape) if sample.label == 1 else np.zeros(shape, dtype=bool)
            rows[position] = (resize_map(anomaly_map, shape), mask, float(score), int(sample.label), flags[i], reviews[i],
                              np.asarray(anomaly_map, dtype=np.float32) if raw_maps is not None else None)
        done += len(chunk)
        if log is not None:
            log(f"predicted {done}/{len(test)}")
    maps, masks, scores, labels, flags, reviews, raw = (list(column) for column in zip(*rows)) if rows else ([],) * 7
    if raw_maps is not None:
        raw_maps.extend(raw)
    if review is not None:
        review.extend(reviews)
    return maps, masks, scores, labels, flags, result

def save_maps(detector: Any, test: list, normals: list, path: str | Path, batch: int = 16, log: Any = None) -> Path:
    """Write what the offline map studies need to ``path`` (.npz, atomically): the detector's maps
    on the ``test`` samples at its map size (float16), the maps of the model(s) that give the
    verdict on them (``verdict_maps``; the detector's own maps when there is no final model), the
    calibration maps (each held-back / cross-fitted normal image of ``normals``, the training
    normals in fit order, under the one model that never saw it), the image scores (top-k of the
    maps), labels, image sizes, image and mask paths, the cut and the top-k. One more prediction
    pass over the test images: the benchmark's own figures are left as they were."""
    import io

    import torch

    from defectscope.methods.prn.model import top_k_mean
    from defectscope.methods.prn.training import calibration_folds
    from defectscope.report.atomic import atomic_write_bytes

    with_final = detector.final_head is not None
    maps, verdict_maps, shapes = [], [], []
    for start in range(0, len(test), batch):
        chunk = test[start : start + batch]
        images = [read_image(s.path) for s in chunk]
        shapes.extend(image.shape[:2] for image in images)
        joined, fold = detector._maps_and_fold_maps(detector.map_heads(), detector.heads if with_final else None, images)
        maps.append(joined.cpu().numpy().astype(np.float16))
        verdict_maps.append((fold if fold is not None else joined).cpu().numpy().astype(np.float16))
        if log is not None:
            log(f"saved maps {min(start + batch, len(test))}/{len(test)}")
    folds = calibration_folds(len(normals), detector.config)
    calibration, calibration_paths = [], []
    for head, excluded in zip(detector.heads, folds):
        for start in range(0, len(excluded), batch):
            part = excluded[start : start + batch]
            calibration.append(detector.maps_of([head], [read_image(normals[i].path) for i in part]).cpu().numpy().astype(np.float16))
            calibration_paths.extend(str(normals[i].path) for i in part)
    all_maps = np.concatenate(maps)
    size = all_maps.shape[-1]
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        maps=all_maps,
        verdict_maps=np.concatenate(verdict_maps),
        calibration_maps=np.concatenate(calibration) if calibration else np.zeros((0, size, size), np.float16),
        calibration_paths=np.array(calibration_paths, dtype=str),
        image_scores=top_k_mean(torch.from_numpy(all_maps.astype(np.float32)), detector.config.top_k).numpy(),
        labels=np.array([int(s.label) for s in test]),
        shapes=np.array(shapes, dtype=np.int64),
        paths=np.array([str(s.path) for s in test], dtype=str),
        mask_paths=np.array([str(s.mask_path) if s.label == 1 and s.mask_path else "" for s in test], dtype=str),
        threshold=np.float64(detector.threshold().value),
        top_k=np.int64(detector.config.top_k),
        held_out_scores=detector.held_out_scores if detector.held_out_scores is not None else np.zeros(0),
    )
    return atomic_write_bytes(path, buffer.getvalue())


def category_split(root: str | Path, k: int = 10, seed: int = 0) -> tuple[Any, list, list]:
    """The protocol's (category, labelled defects moved to training, test samples) at ``root``."""
    category = load_category(root, seed)
    anomalies, test = kshot_split(category.test, k=k, seed=seed)
    return category, anomalies, test


def score_test(detector: Any, test: list, batch: int = 16) -> dict[str, Any]:
    """Predict the ``test`` samples (:func:`predict_test`) and measure them: pixel (both
    protocols), image and verdict metrics (``metrics``: pixel figures under the ``image``
    protocol), the cut, the map size, the number of defective test images and the seconds the
    predictions took (the metrics not counted)."""
    raw_maps: list = []
    review: list = []
    started = time.time()
    maps, masks, scores, labels, flags, last = predict_test(detector, test, batch, raw_maps=raw_maps, review=review)
    seconds = time.time() - started
    metrics = {
        **pixel_metrics(maps, masks),
        **image_metrics(np.array(scores), np.array(labels)),
        **verdict_metrics(np.array(flags), np.array(labels), np.array(review, dtype=bool)),
    }
    pixel_protocols = {"image": {key: metrics[key] for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")},
                       "map": pixel_figures(raw_maps, masks, "map")}
    return {
        "metrics": metrics,
        "pixel_protocols": pixel_protocols,
        "map_size": list(np.shape(raw_maps[0])[-2:]) if raw_maps else None,
        "threshold": last.threshold if last is not None else None,
        "test_defective": int(sum(labels)),
        "predict_seconds": seconds,
    }


def evaluate_category(
    root: str | Path, config: PRNConfig | None = None, *, k: int = 10, seed: int = 0, batch: int = 16,
    save_model: str | Path | None = None, save_maps_to: str | Path | None = None, log: Any = None, musc: Any = None,
) -> dict[str, Any]:
    """Train PRN on the category at ``root`` with the protocol above and score its test images;
    returns the metrics (pixel figures under the ``image`` protocol; ``pixel_protocols`` holds
    both), counts, the cut and seconds. ``save_model``: a folder to write the trained model to;
    ``save_maps_to``: an .npz for :func:`save_maps` (after the figures); ``musc``: RunOptions of
    a zero-shot method to score on the same test images first (:func:`musc_on_test`)."""
    config = config or PRNConfig(seed=seed)
    category, anomalies, test = category_split(root, k, seed)
    zero_shot = musc_on_test(category, test, musc) if musc is not None else None
    if zero_shot is not None and log is not None:
        log(f"{zero_shot['method']} on the same {zero_shot['test']} test images: pixel AP "
            f"{zero_shot['pixel']['image']['pixel_ap']:.3f} (image size) / {zero_shot['pixel']['map']['pixel_ap']:.3f} (map size), {zero_shot['seconds']} s")
    started = time.time()
    detector = PRN(config).fit(
        [read_image(s.path) for s in category.train], [(read_image(s.path), read_mask(s.mask_path)) for s in anomalies]
    )
    train_seconds = time.time() - started
    started = time.time()
    if save_model is not None:
        detector.save(save_model, overwrite=True)
    saving = time.time() - started
    figures = score_test(detector, test, batch)
    predict_seconds = round(saving + figures.pop("predict_seconds"), 1)
    if save_maps_to is not None:
        save_maps(detector, test, list(category.train), save_maps_to, batch, log)
    return {
        **figures,
        "musc": zero_shot,
        "train_normal": len(category.train),
        "train_defective": len(anomalies),
        "test": len(test),
        "calibration": detector.model_info.get("calibration"),
        "train_seconds": round(train_seconds, 1),
        "predict_seconds": predict_seconds,
    }
