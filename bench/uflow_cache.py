"""Train U-Flow once per category and cache what every mask rule needs (for bench_uflow_mask.py).

Per category the default ``UFlowConfig`` is trained on ``train/good`` (for the magnetic tiles the
normal training half of ``magnetic_tile(root, seed=0)``) and one ``.npz`` is written with, for
three sets of images, the per-scale statistic ``s = sum_c z_c^2`` of the (unscaled) latents, from
which the anomaly maps and the NFA detections of any mask rule follow:

- ``val``: the held-out normal training images (the ones ``fit`` keeps out of flow training for
  its calibration), never seen by the flow;
- ``syn``: synthetic defects pasted on those held-out images with PRN's generator
  (:func:`defectscope.methods.prn.generate.pseudo_defect`: a Perlin-shaped blob filled with a
  procedural texture or a moved patch of another held-out image), with their exact masks and the
  index of the held-out image each was made from;
- ``test``: the test images, with their ground-truth masks and labels (used only for the final
  table, never to choose a rule).

The trained model is saved next to the file (``<category>-model``), so :func:`add_varied` can add
the varied synthetic set (``<category>.varied.npz``, :mod:`defectscope.methods.uflow.synthetic`)
without retraining.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from defectscope.data.io import read_image, read_mask
from defectscope.data.layouts import magnetic_tile, mvtec_category
from defectscope.methods.prn.generate import pseudo_defect
from defectscope.methods.uflow import UFlow, UFlowConfig
from defectscope.methods.uflow.synthetic import varied_defect

SYNTHETIC_PER_CATEGORY = 48
"""At least this many synthetic defects per category (several per held-out image when few)."""
VARIED_PER_CATEGORY = 384
"""At least this many varied synthetic defects (:func:`add_varied`) per category by default (96
in issue 14's second round, whose top rules were 0.001 apart, inside selection noise)."""


def load_category(root: Path):
    """The shared category at ``root`` (the magnetic tiles with the documented seeded split)."""
    return magnetic_tile(root, seed=0) if root.name == "magnetic_tile" else mvtec_category(root)


def resize(image: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Image or mask -> (size, size), as the backbone's preprocessing does (PIL bilinear)."""
    if image.dtype == bool:
        pil = Image.fromarray(image.astype(np.uint8) * 255)
        return np.asarray(pil.resize((size, size), Image.Resampling.NEAREST)) > 127
    method = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), method))


def statistics(model: UFlow, images: list[np.ndarray]) -> list[np.ndarray]:
    """Images -> per scale (N, h, w) float32 statistic sum_c z_c^2 of the unscaled latents."""
    chunks: list[list[np.ndarray]] = []
    for start in range(0, len(images), 16):
        latents = model.latents_from_features(model.extract_features(images[start:start + 16]))
        chunks.append([z.pow(2).sum(dim=1).numpy().astype(np.float32) for z in latents])
    return [np.concatenate([c[s] for c in chunks]) for s in range(len(chunks[0]))]


def _report(stage: str, done: int, total: int) -> None:
    """Training progress on stdout (features every batch, then every epoch)."""
    print(f"  {time.strftime('%H:%M:%S')} {stage} {done}/{total}", flush=True)


def model_folder(out: Path) -> Path:
    """Where :func:`collect` saves the trained model next to the cache file ``out``."""
    return out.with_name(out.stem + "-model")


def collect(root: Path, out: Path, config: UFlowConfig | None = None, seed: int = 0) -> Path:
    """Train on ``root``'s training images and write ``out`` (.npz); returns ``out``."""
    config = config or UFlowConfig()
    category = load_category(root)
    size = config.image_size
    train_images = [read_image(s.path) for s in category.train]
    model = UFlow(config)
    start = time.perf_counter()
    model.fit(train_images, progress=_report)
    train_seconds = time.perf_counter() - start
    model.save(model_folder(out), overwrite=True)
    held = model.held_out(len(train_images))
    normals = [resize(train_images[i], size) for i in held]
    del train_images
    rng = np.random.default_rng(seed)
    per_image = math.ceil(SYNTHETIC_PER_CATEGORY / len(normals))
    syn_images, syn_masks, syn_base = [], [], []
    for index, normal in enumerate(normals):
        others = [n for j, n in enumerate(normals) if j != index] or [normal]
        for _ in range(per_image):
            image, mask, _ = pseudo_defect(normal, rng, other_images=others)
            syn_images.append(image)
            syn_masks.append(mask)
            syn_base.append(index)
    arrays: dict[str, np.ndarray] = {}
    for name, images in (("val", normals), ("syn", syn_images)):
        for scale, stat in enumerate(statistics(model, images)):
            arrays[f"{name}_s{scale}"] = stat
    test_stats: list[list[np.ndarray]] = []
    gts, labels = [], []
    for start in range(0, len(category.test), 64):
        samples = category.test[start:start + 64]
        test_stats.append(statistics(model, [read_image(s.path) for s in samples]))
        for s in samples:
            gts.append(resize(read_mask(s.mask_path), size) if s.mask_path is not None
                       else np.zeros((size, size), bool))
            labels.append(s.label)
    for scale in range(len(test_stats[0])):
        arrays[f"test_s{scale}"] = np.concatenate([c[scale] for c in test_stats])
    assert model.flow is not None
    staged = out.with_name(out.name + ".part")
    with open(staged, "wb") as handle:
        np.savez_compressed(
            handle, **arrays, syn_masks=np.stack(syn_masks), syn_base=np.array(syn_base),
            test_gts=np.stack(gts), test_labels=np.array(labels),
            channels=np.array(model.flow.latent_channels), latent_scale=np.array([float(v) for v in model.latent_scale]),
            map_threshold=np.array(model.map_threshold if model.map_threshold is not None else np.nan),
            train_seconds=np.array(train_seconds), train_images=np.array(len(category.train)),
        )
    os.replace(staged, out)
    return out


def varied_path(out: Path, count: int = VARIED_PER_CATEGORY) -> Path:
    """The sidecar of cache file ``out`` holding the :func:`add_varied` synthetic set of ``count``
    defects (``<category>.varied.npz`` for the second round's 96, else ``.varied<count>.npz``)."""
    return out.with_name(out.stem + (".varied.npz" if count == 96 else f".varied{count}.npz"))


def add_varied(root: Path, out: Path, seed: int = 0, count: int = VARIED_PER_CATEGORY) -> Path:
    """At least ``count`` synthetic defects of varied size, shape and strength
    (:func:`varied_defect`) on the held-out images of the model that :func:`collect` saved for
    ``out``; writes :func:`varied_path`."""
    if not model_folder(out).is_dir():
        raise SystemExit(f"{out} was cached without its model; delete it to retrain (deterministic) with the model saved")
    model = UFlow.load(model_folder(out))
    category = load_category(root)
    held = model.held_out(len(category.train))
    normals = [resize(read_image(category.train[i].path), model.config.image_size) for i in held]
    rng = np.random.default_rng(seed)
    per_image = math.ceil(count / len(normals))
    images, masks, base, kinds = [], [], [], []
    for index, normal in enumerate(normals):
        others = [n for j, n in enumerate(normals) if j != index]
        for _ in range(per_image):
            image, mask, kind = varied_defect(normal, rng, other_images=others)
            images.append(image)
            masks.append(mask)
            base.append(index)
            kinds.append(kind)
    arrays = {f"syn_s{scale}": stat for scale, stat in enumerate(statistics(model, images))}
    target = varied_path(out, count)
    staged = target.with_name(target.name + ".part")
    with open(staged, "wb") as handle:
        np.savez_compressed(handle, **arrays, syn_masks=np.stack(masks), syn_base=np.array(base),
                            syn_kinds=np.array(kinds))
    os.replace(staged, target)
    return target


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("categories", nargs="+", type=Path, help="category folders")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/uflowmask-cache"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--varied-count", type=int, default=VARIED_PER_CATEGORY,
                        help="at least this many varied synthetic defects per category")
    parser.add_argument("--varied", action="store_true",
                        help="also add the varied synthetic set (needs the saved model; no retraining when cached)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    for folder in args.categories:
        target = args.cache / f"{folder.name}.npz"
        started = time.perf_counter()
        if not target.exists():
            collect(folder, target)
            print(f"{folder.name}: cached in {time.perf_counter() - started:.0f} s", flush=True)
        if args.varied and not varied_path(target, args.varied_count).exists():
            add_varied(folder, target, count=args.varied_count)
            print(f"{folder.name}: varied set added in {time.perf_counter() - started:.0f} s", flush=True)
