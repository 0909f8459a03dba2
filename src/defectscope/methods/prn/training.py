"""Training PRN: the fold plan, cached features, one head per model (seeded, resumable).

Training data: normal images plus a few real defective images with masks. Every epoch draws
``samples_per_epoch`` samples balanced as ``shares`` (default 50 % normal, 25 % real defects:
half the labelled images themselves, half pasted onto normal images (``seen_share``), 25 %
pseudo defects; see :mod:`.generate`). Backbone features of
the normal images are computed once and cached (float16); only generated images go through the
frozen backbone during training. Randomness of epoch ``e`` comes from the seed pair
``(seed, e)``, so a run resumed from a checkpoint continues exactly as an uninterrupted one.
Which normal images each model is trained without: :func:`calibration_folds` (the detector's
module docstring says why).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from defectscope.device import resolve_device
from defectscope.errors import ConfigError
from defectscope.methods.holdout import MIN_POOL, cross_fit_folds, held_out_count, held_out_indices
from defectscope.methods.prn import persistence, tiles
from defectscope.methods.prn.config import PRNConfig
from defectscope.methods.prn.generate import AnomalyGenerator, epoch_plan
from defectscope.methods.prn.model import PRNHead, build_prototypes, prn_loss, prototype_count
from defectscope.methods.verdict import conformal_count
from defectscope.progress import Progress

if TYPE_CHECKING:
    from defectscope.methods.prn.detector import PRN

HELD_BACK = "held-back"
CROSS_FIT = "cross-fit"
FOLD_STREAM = 1000


def calibration_folds(count: int, config: PRNConfig) -> list[list[int]]:
    """The normal-image indices each model is trained without: one held-back set,
    ``cross_fit_folds`` seeded folds when that set is too small for a conformal cut at
    ``false_alarm_rate``, or none (fewer than :data:`~defectscope.methods.holdout.MIN_POOL`
    images, or neither holding back nor cross-fitting asked for)."""
    held = held_out_indices(count, config.calibration_fraction, config.seed)
    folds = config.cross_fit_folds
    if folds < 2 or count < MIN_POOL or len(held) >= conformal_count(config.false_alarm_rate):
        return [held] if held else []
    return cross_fit_folds(count, folds, config.seed)


def large_set(config: PRNConfig, left_out: Sequence[Sequence[int]], tile_count: int = 0) -> bool:
    """Whether a calibrated normal set counts as large: one held-back set calibrates it
    (``left_out`` from :func:`calibration_folds` is one non-empty set: 186 images or more at the
    default 10 % and 5 %), or its ``tile_count`` training tiles (``tile_aspect`` cuts long images;
    an uncut image is one tile) are as many as a held-back set would need images (so a
    cross-fitted set of long images can count as large). Never without calibration."""
    if not any(left_out):
        return False
    return len(left_out) == 1 or held_out_count(tile_count, config.calibration_fraction) >= conformal_count(config.false_alarm_rate)


def trains_final_model(config: PRNConfig, left_out: Sequence[Sequence[int]], tile_count: int = 0) -> bool:
    """Whether :func:`fit` also trains the final model on all normal images (``final_model``):
    never without calibration; "held-back" when one held-back set calibrates; "large" (the
    default) when the set is :func:`large_set`; "always" whenever it calibrates."""
    if not any(left_out) or config.final_model == "never":
        return False
    if config.final_model == "held-back":
        return len(left_out) == 1
    return config.final_model == "always" or large_set(config, left_out, tile_count)


SMALL_SET_EPOCHS = 16
LARGE_SET_EPOCHS = 32


def epochs_for(config: PRNConfig, left_out: Sequence[Sequence[int]], tile_count: int = 0) -> int:
    """``config.epochs``, or when it is None: :data:`LARGE_SET_EPOCHS` for a :func:`large_set`
    (the held-back path, or a cross-fitted set of long images cut into enough tiles), else
    :data:`SMALL_SET_EPOCHS`. On the shared development data longer training raised pixel AP on
    the two large normal sets and lowered it on a small one; on the long-strip proxy it raised
    it again (docs/PRN_VARIANTS.md, docs/PRN_LONG.md)."""
    if config.epochs is not None:
        return config.epochs
    return LARGE_SET_EPOCHS if large_set(config, left_out, tile_count) else SMALL_SET_EPOCHS


def fit(
    detector: "PRN",
    normal_images: Sequence[np.ndarray],
    anomalies: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    *,
    progress: Progress | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
) -> None:
    """Train ``detector`` on normal images and real (image, mask) anomalies; checkpoints every epoch.

    One model, or one fold model per cross-fitting fold (see the module docstring), trained
    one after the other. With ``resume=True`` and a checkpoint in ``checkpoint_dir`` (one
    sub-folder per fold model when cross-fitting), training continues after the last
    finished epoch (the checkpoint must come from the same settings). ``progress`` stages:
    "features", "prototypes", "train" (optimisation steps over all epochs and models).
    """
    config = detector.config
    if len(normal_images) == 0:
        raise ConfigError("PRN needs at least one normal training image.")
    if resume and checkpoint_dir is None:
        raise ConfigError("PRN resume=True needs a checkpoint_dir.")
    report = progress or (lambda stage, done, total: None)
    # Long images (tile_aspect) train as tiles; the calibration folds hold whole images, whose
    # scores come from detector.scores_of, the path predict() scores new images by.
    flat, counts = tiles.split_images(normal_images, config.tile_aspect)
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int)
    tiles_of = [list(range(starts[i], starts[i + 1])) for i in range(len(normal_images))]

    def tiles_in(images: Sequence[int]) -> list[int]:
        return [t for i in images for t in tiles_of[i]]

    left_out = calibration_folds(len(normal_images), config) or [[]]
    trained = sorted(set(range(len(normal_images))) - set(left_out[0])) if len(left_out) == 1 else list(range(len(normal_images)))
    with_final = trains_final_model(config, left_out, len(flat))
    everyone = list(range(len(normal_images)))
    cached_for = tiles_in(everyone if with_final else trained)
    resized = AnomalyGenerator([flat[t] for t in cached_for], image_size=config.image_size).normals
    cached: list[list[torch.Tensor]] = []
    for start in range(0, len(resized), config.batch_size):
        cached.append([m.to(torch.float16) for m in detector.features(resized[start : start + config.batch_size])])
        report("features", min(start + config.batch_size, len(resized)), len(resized))
    per_scale = [torch.cat([chunk[s] for chunk in cached]) for s in range(len(cached[0]))]
    features = {index: [scale[position] for scale in per_scale] for position, index in enumerate(cached_for)}
    del cached, per_scale

    samples = max(1, (config.samples_per_epoch or len(tiles_in(trained))) // len(left_out))
    full_samples = max(1, config.samples_per_epoch or len(flat))
    epochs = epochs_for(config, left_out, len(flat))
    steps = math.ceil(samples / config.batch_size) * epochs
    total = steps * len(left_out) + (math.ceil(full_samples / config.batch_size) * epochs if with_final else 0)
    checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else None
    heads, losses, scores = [], [], []
    for number, excluded in enumerate(left_out):
        kept = tiles_in([i for i in trained if i not in set(excluded)])
        folder = checkpoint if checkpoint is None or (len(left_out) == 1 and not with_final) else checkpoint / f"model{number}"
        head, head_losses, info = train_head(
            detector,
            [flat[t] for t in kept], [features[t] for t in kept], anomalies, samples, epochs,
            number if len(left_out) > 1 else None, (report, number * steps, total), folder, resume,
        )
        heads.append(head)
        losses.extend(head_losses)
        if excluded:
            scores.append(detector.scores_of([head], [normal_images[i] for i in excluded]))
    final_head = None
    if with_final:
        final_head, final_losses, info = train_head(
            detector,
            [flat[t] for t in tiles_in(everyone)], [features[t] for t in tiles_in(everyone)], anomalies, full_samples, epochs,
            None, (report, steps * len(left_out), total), None if checkpoint is None else checkpoint / "final", resume,
        )
        losses = final_losses + losses
    detector.heads = heads
    detector.final_head = final_head
    detector.losses = losses
    used = everyone if with_final else trained
    detector.model_info = {**info, "normal_images": len(used), "models": len(heads), "epochs": epochs,
                           **({"normal_tiles": len(tiles_in(used))} if config.tile_aspect > 0 else {}),
                           "final_model": final_head is not None,
                           "calibration": CROSS_FIT if len(heads) > 1 else (HELD_BACK if scores else None)}
    detector.held_out_scores = np.concatenate(scores) if scores else None



def train_head(
    detector: "PRN",
    normal_images: Sequence[np.ndarray],
    normal_features: Sequence[Sequence[torch.Tensor]],
    anomalies: Sequence[tuple[np.ndarray, np.ndarray]],
    samples: int,
    epochs: int,
    fold: int | None,
    progress: tuple[Progress, int, int],
    checkpoint: Path | None,
    resume: bool,
) -> tuple[PRNHead, list[float], dict[str, Any]]:
    """Train one head on ``normal_images`` (their cached features given) for ``epochs`` epochs
    of ``samples`` samples; ``fold`` (None for a single model) varies the random streams;
    ``progress`` is (callback, train steps done before this head, train steps in all)."""
    config = detector.config
    report, steps_before, steps_in_all = progress
    generator = AnomalyGenerator(
        normal_images, anomalies, image_size=config.image_size, families=config.pseudo_families, paste_level=config.paste_level,
        seen_share=config.seen_share,
    )
    count = len(generator.normals)
    scales = [torch.stack([f[s] for f in normal_features]) for s in range(len(normal_features[0]))]
    info = {
        "in_channels": [int(m.shape[1]) for m in scales],
        "grid_sizes": [int(m.shape[-1]) for m in scales],
        "prototype_count": prototype_count(count, config.prototype_fraction, config.max_prototypes),
        "backbone": detector.backbone.name,
        "layer_names": list(detector.backbone.layer_names),
        "normal_images": count,
        "real_anomalies": len(generator.anomalies),
    }
    for side, next_side in zip(info["grid_sizes"], info["grid_sizes"][1:]):
        if side != 2 * next_side:
            raise ConfigError(f"PRN layers must halve in resolution scale to scale; got grids {info['grid_sizes']}.")

    stream = [config.seed] if fold is None else [config.seed, FOLD_STREAM + fold]
    torch.manual_seed(config.seed if fold is None else int(np.random.default_rng(stream).integers(2**31)))
    device = resolve_device(config.device)
    head = detector.build_head(info).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(samples / config.batch_size)
    total_steps = steps_per_epoch * epochs
    start_epoch = 0
    losses: list[float] = []
    if resume and checkpoint is not None and (checkpoint / "config.json").is_file():
        start_epoch, losses = persistence.restore_checkpoint(config, checkpoint, head, optimizer, info)
    else:
        report("prototypes", 0, 1)
        # k-means on the CPU (its seeded generator): the same prototypes on every device.
        prototypes = build_prototypes([m.to(torch.float32).cpu() for m in scales], info["prototype_count"], seed=config.seed + (fold or 0))
        head.set_prototypes([p.to(device) for p in prototypes])
        report("prototypes", 1, 1)

    for epoch in range(start_epoch, epochs):
        rng = np.random.default_rng(stream[:1] + [epoch] + stream[1:])
        plan = epoch_plan(samples, count, bool(generator.anomalies), config.shares, rng)
        head.train()
        epoch_losses = []
        for step in range(steps_per_epoch):
            global_step = epoch * steps_per_epoch + step
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * 0.5 * (1 + math.cos(math.pi * global_step / total_steps))
            batch_plan = plan[step * config.batch_size : (step + 1) * config.batch_size]
            generated = [generator.make(index, kind, rng) if kind != "normal" else None for index, kind in batch_plan]
            fresh = [g.image for g in generated if g is not None]
            fresh_features = detector.features(fresh) if fresh else []
            features = [[] for _ in scales]
            masks = []
            fresh_position = 0
            for (index, _kind), sample in zip(batch_plan, generated):
                for s in range(len(scales)):
                    if sample is None:
                        features[s].append(scales[s][index].to(torch.float32))
                    else:
                        features[s].append(fresh_features[s][fresh_position])
                if sample is None:
                    masks.append(np.zeros((config.image_size, config.image_size), dtype=np.float32))
                else:
                    masks.append(sample.mask.astype(np.float32))
                    fresh_position += 1
            inputs = [torch.stack(f) for f in features]
            target = torch.from_numpy(np.stack(masks)).unsqueeze(1).to(device)
            loss = prn_loss(head(*inputs), target, config.focal_gamma)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_losses.append(float(loss.detach()))
            report("train", steps_before + global_step + 1, steps_in_all)
        losses.append(float(np.mean(epoch_losses)))
        if checkpoint is not None:
            persistence.write_checkpoint(config, checkpoint, head, optimizer, info, epoch + 1, losses)
    head.eval()
    return head, losses, info

