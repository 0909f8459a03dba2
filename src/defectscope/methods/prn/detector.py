"""PRN detector: configuration, training (seeded, resumable), prediction, save and load.

Training data: normal images plus a few real defective images with masks. Every epoch draws
``samples_per_epoch`` samples balanced as ``shares`` (default 50 % normal, 25 % real defects
pasted onto normal images, 25 % Perlin pseudo defects; see :mod:`.generate`). Backbone features of
the normal images are computed once and cached (float16); only generated images go through the
frozen backbone during training. Randomness of epoch ``e`` comes from the seed pair
``(seed, e)``, so a run resumed from a checkpoint continues exactly as an uninterrupted one.

The image score is the mean of the ``top_k`` highest pixel scores (default 100 pixels, about
0.15 % of a 256 x 256 map: large enough to ignore a single hot pixel, small enough for tiny
defects).

Verdict: a probability cut calibrated on normal images the scoring model never saw. When a
seeded share ``calibration_fraction`` of the normal training images (when there are at least 10)
holds enough images for a split-conformal cut at ``false_alarm_rate`` (at least
``1 / false_alarm_rate - 1``: 19 at 0.05, so at least 190 normal images by default), those are
kept out of training and the cut is their split-conformal threshold. A smaller normal set is
cross-fitted instead: its images are split into ``cross_fit_folds`` seeded folds, and one fold
model is trained per fold on all the other folds (each with ``1 / cross_fit_folds`` of the
samples per epoch, so the training cost stays that of one model). The detector is the average of
the fold models' maps, and each normal image's calibration score is its score under the one fold
model that never saw it: every normal image calibrates, none is lost to training. The cut is the
split-conformal threshold of those scores (their largest when they are still too few for the
rate). For one fold model its fold's images and a new normal image are exchangeable (split
conformal); pooling the folds is cross-conformal calibration (valid in practice, at most twice
the rate in the worst case), and the average of the fold models varies less on a normal image
than one of them, which puts the cut on the side of fewer false alarms. Masks apply the same cut
per pixel.

``final_model`` (default ``"held-back"``): also train one model on all normal images with the
full samples per epoch, exactly the model a run without calibration trains (the model of main
before 2026-12-01). The detector's maps, image scores and masks then come from it, while the
verdict (statistic and cut) stays that of the model trained without the held-back share, or of
the fold models, so the guarantee above is untouched; masks are the final model's pixels above
the cut on the images the verdict flags. A cut from ``calibrate()`` on good images applies to the
final model's image scores (split conformal on images no model saw). ``"held-back"`` trains it
only on the held-back path (190 or more normal images by default), ``"always"`` also when
cross-fitting, ``"never"`` not at all. Training costs two models instead of one. Measured
(docs/PRN.md, thin cracks of the magnetic tiles with 476 normal tiles, two seeds): the model
trained without the held-back 10 % lost about half its pixel AP against one on all tiles; the
fold average segmented a paper type much better than one model, so cross-fitting keeps it.

Models saved before verdicts existed (or trained on fewer than 10 normal images) have no
calibration scores: they fall back to a probability of 0.5, and the rule says so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from defectscope.device import resolve_device
from defectscope.errors import ConfigError, ModelFileError
from defectscope.memory import estimate_bytes
from defectscope.methods.base import Detector, MethodConfig, Result, default_paths
from defectscope.methods.modelfile import load_model, save_model
from defectscope.methods.prn.generate import AnomalyGenerator, epoch_plan
from defectscope.methods.prn.model import PRNHead, build_prototypes, prn_loss, prototype_count, top_k_mean
from defectscope.methods.verdict import (
    DEFAULT_FALSE_ALARM_RATE,
    Threshold,
    check_false_alarm_rate,
    conformal_count,
    conformal_threshold,
    pixel_masks,
    with_verdict,
)
from defectscope.progress import Progress

METHOD = "prn"
CHECKPOINT_METHOD = "prn-checkpoint"
FALLBACK_PROBABILITY = 0.5
MIN_CALIBRATION_POOL = 10
HELD_OUT_KEY = "held_out_scores"
FINAL_PREFIX = "final."
FINAL_MODEL_CHOICES = ("held-back", "always", "never")
HELD_BACK = "held-back"
CROSS_FIT = "cross-fit"
FOLD_STREAM = 1000


@dataclass(frozen=True)
class PRNConfig(MethodConfig):
    """PRN settings (defaults fit a ~20 min CPU budget per category on 2 cores).

    Attributes:
        backbone: backbone registry name (frozen feature extractor).
        backbone_weights: optional local weights file for the backbone.
        image_size: square input size S; maps are S x S.
        layers: backbone layers, finest first, at strides that double (4/8/16).
        prototype_fraction: prototypes per scale as a fraction of the normal images (at least 1).
        max_prototypes: upper bound on prototypes per scale.
        widths: hidden channels of the head per scale.
        attention_scales: scales (0 = finest) whose residuals get multi-size window attention.
        attention_divisors: attention window sides as divisors of the scale's side (H, H/2, ...).
        epochs: training epochs.
        samples_per_epoch: samples per epoch (None: one per normal image).
        batch_size: training and prediction batch size.
        learning_rate: AdamW peak learning rate (cosine decay to 0 over all steps).
        weight_decay: AdamW weight decay.
        focal_gamma: focal-loss gamma.
        top_k: pixels averaged for the image score.
        shares: (normal, real pasted, pseudo) share of each epoch's samples.
        seed: seed for prototypes, initialisation, sampling and generation.
        calibration_fraction: share of the normal images held back from training to calibrate
            the verdict (none when there are fewer than 10 normal images).
        cross_fit_folds: fold models trained instead when that share is too small for a
            conformal cut at ``false_alarm_rate`` (see the module docstring; below 2: never).
        final_model: "held-back" (default), "always" or "never": when to also train a model on
            all normal images for the maps, image scores and masks; the calibrated model(s) then
            only give the verdict (module docstring).
        false_alarm_rate: share of normal images the verdict may flag.
    """

    backbone: str = "efficientnet-lite0"
    backbone_weights: str | None = None
    image_size: int = 256
    layers: tuple[str, ...] = ("stride4", "stride8", "stride16")
    prototype_fraction: float = 0.1
    max_prototypes: int = 32
    widths: tuple[int, ...] = (32, 48, 64)
    attention_scales: tuple[int, ...] = (1, 2)
    attention_divisors: tuple[int, ...] = (1, 2, 4, 8)
    epochs: int = 16
    samples_per_epoch: int | None = 192
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    focal_gamma: float = 4.0
    top_k: int = 100
    shares: tuple[float, float, float] = (0.5, 0.25, 0.25)
    seed: int = 0
    calibration_fraction: float = 0.1
    cross_fit_folds: int = 3
    final_model: str = "held-back"
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
    device: str = "auto"

    def __post_init__(self) -> None:
        check_false_alarm_rate(self.false_alarm_rate)
        if self.final_model not in FINAL_MODEL_CHOICES:
            raise ConfigError(f"PRN final_model must be one of {', '.join(FINAL_MODEL_CHOICES)}, got {self.final_model!r}.")
        if not 0 <= self.calibration_fraction < 1:
            raise ConfigError(f"PRN calibration_fraction must be in [0, 1), got {self.calibration_fraction}.")
        if self.image_size <= 0 or self.image_size % 32 != 0:
            raise ConfigError(f"PRN image_size must be a positive multiple of 32, got {self.image_size}.")
        if len(self.layers) < 2:
            raise ConfigError(f"PRN needs at least two backbone layers (multi-scale), got {list(self.layers)}.")
        if len(self.widths) != len(self.layers):
            raise ConfigError(f"PRN widths {list(self.widths)} need one entry per layer {list(self.layers)}.")
        if not 0 < self.prototype_fraction <= 1:
            raise ConfigError(f"PRN prototype_fraction must be in (0, 1], got {self.prototype_fraction}.")
        for name in ("max_prototypes", "epochs", "batch_size", "top_k"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PRN {name} must be at least 1, got {getattr(self, name)}.")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ConfigError(f"PRN samples_per_epoch must be at least 1, got {self.samples_per_epoch}.")
        if len(self.shares) != 3 or min(self.shares) < 0 or sum(self.shares) <= 0:
            raise ConfigError(f"PRN shares must be three non-negative numbers (normal, real, pseudo), got {self.shares}.")
        if self.learning_rate <= 0:
            raise ConfigError(f"PRN learning_rate must be positive, got {self.learning_rate}.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PRNConfig":
        """Inverse of :meth:`to_dict`; unknown keys fail clearly."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelFileError(f"PRN config has unknown settings {unknown}; it was made by another version.")
        converted = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
        return cls(**converted)


def _layer_strides(layer_names: Sequence[str]) -> list[int]:
    strides = []
    for position, name in enumerate(layer_names):
        match = re.fullmatch(r"stride(\d+)", str(name))
        strides.append(int(match.group(1)) if match else 4 * 2**position)
    return strides


def multiscale_features(backbone: Any, batch: torch.Tensor) -> list[torch.Tensor]:
    """Backbone features at their own strides (finest first) for a normalised batch.

    Uses the backbone's native stage outputs when it exposes them (``model.forward_blocks``);
    otherwise takes ``extract()`` (all layers on the finest grid) and average-pools each layer
    by its stride ratio to the finest layer (ratios from "strideN" layer names, else 1, 2, 4...).
    """
    model = getattr(backbone, "model", None)
    block_indices = getattr(backbone, "_block_indices", None)
    if model is not None and hasattr(model, "forward_blocks") and block_indices is not None:
        with torch.no_grad():
            device = getattr(backbone, "device", batch.device)
            return [m.detach() for m in model.forward_blocks(batch.to(device, torch.float32), block_indices)]
    with torch.no_grad():
        features = backbone.extract(batch)
    strides = _layer_strides(features.layer_names)
    finest = min(strides)
    maps = []
    for layer, stride in zip(features.layers, strides):
        layer = layer.detach().clone()
        factor = max(1, stride // finest)
        maps.append(F.avg_pool2d(layer, factor) if factor > 1 else layer)
    return maps


def held_out_indices(count: int, fraction: float, seed: int) -> list[int]:
    """Sorted indices of the normal images held back from training (seeded; none when fraction
    is 0 or there are fewer than MIN_CALIBRATION_POOL images; else at least 2)."""
    if fraction == 0 or count < MIN_CALIBRATION_POOL:
        return []
    size = max(2, round(fraction * count))
    order = np.random.default_rng([seed, 7]).permutation(count)
    return sorted(int(i) for i in order[:size])


def calibration_folds(count: int, config: PRNConfig) -> list[list[int]]:
    """The normal-image indices each model is trained without (see the module docstring): one
    held-back set, ``cross_fit_folds`` seeded folds when that set is too small for a conformal
    cut at ``false_alarm_rate``, or none (fewer than MIN_CALIBRATION_POOL images, or neither
    holding back nor cross-fitting asked for)."""
    held = held_out_indices(count, config.calibration_fraction, config.seed)
    folds = config.cross_fit_folds
    if folds < 2 or count < MIN_CALIBRATION_POOL or len(held) >= conformal_count(config.false_alarm_rate):
        return [held] if held else []
    order = np.random.default_rng([config.seed, 7]).permutation(count)
    return [sorted(int(i) for i in order[fold::folds]) for fold in range(folds)]


def _default_backbone(config: PRNConfig) -> Any:
    from defectscope.backbones import get_backbone

    return get_backbone(
        config.backbone, weights=config.backbone_weights, image_size=config.image_size, layers=list(config.layers),
        device=resolve_device(config.device),
    )


class PRN(Detector):
    """Prototypical residual network (supervised with a few real anomalies plus generated ones).

    Args:
        config: settings; see :class:`PRNConfig`.
        backbone: an already built backbone (default: built from ``config`` via the registry).
    """

    method = METHOD
    config: PRNConfig

    def __init__(self, config: PRNConfig | None = None, *, backbone: Any | None = None) -> None:
        super().__init__(config or PRNConfig())
        self._backbone = backbone
        self.heads: list[PRNHead] = []
        self.final_head: PRNHead | None = None
        self.model_info: dict[str, Any] = {}
        self.losses: list[float] = []
        self.held_out_scores: np.ndarray | None = None

    @property
    def backbone(self) -> Any:
        """The frozen backbone (built on first use)."""
        if self._backbone is None:
            self._backbone = _default_backbone(self.config)
        return self._backbone

    def _features(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        return multiscale_features(self.backbone, self.backbone.preprocess(list(images)))

    def _build_head(self, info: dict[str, Any]) -> PRNHead:
        return PRNHead(
            info["in_channels"],
            info["grid_sizes"],
            self.config.image_size,
            info["prototype_count"],
            widths=self.config.widths,
            attention_scales=self.config.attention_scales,
            attention_divisors=self.config.attention_divisors,
        )

    def fit(
        self,
        normal_images: Sequence[np.ndarray],
        anomalies: Sequence[tuple[np.ndarray, np.ndarray]] = (),
        *,
        progress: Progress | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ) -> "PRN":
        """Train on normal images and real (image, mask) anomalies; checkpoints every epoch.

        One model, or one fold model per cross-fitting fold (see the module docstring), trained
        one after the other. With ``resume=True`` and a checkpoint in ``checkpoint_dir`` (one
        sub-folder per fold model when cross-fitting), training continues after the last
        finished epoch (the checkpoint must come from the same settings). ``progress`` stages:
        "features", "prototypes", "train" (optimisation steps over all epochs and models).
        """
        config = self.config
        if len(normal_images) == 0:
            raise ConfigError("PRN needs at least one normal training image.")
        if resume and checkpoint_dir is None:
            raise ConfigError("PRN resume=True needs a checkpoint_dir.")
        report = progress or (lambda stage, done, total: None)
        left_out = calibration_folds(len(normal_images), config) or [[]]
        trained = sorted(set(range(len(normal_images))) - set(left_out[0])) if len(left_out) == 1 else list(range(len(normal_images)))
        with_final = any(left_out) and (config.final_model == "always" or (config.final_model == "held-back" and len(left_out) == 1))
        everyone = list(range(len(normal_images)))
        cached_for = everyone if with_final else trained
        resized = AnomalyGenerator([normal_images[i] for i in cached_for], image_size=config.image_size).normals
        cached: list[list[torch.Tensor]] = []
        for start in range(0, len(resized), config.batch_size):
            cached.append([m.to(torch.float16) for m in self._features(resized[start : start + config.batch_size])])
            report("features", min(start + config.batch_size, len(resized)), len(resized))
        per_scale = [torch.cat([chunk[s] for chunk in cached]) for s in range(len(cached[0]))]
        features = {index: [scale[position] for scale in per_scale] for position, index in enumerate(cached_for)}
        del cached, per_scale

        samples = max(1, (config.samples_per_epoch or len(trained)) // len(left_out))
        full_samples = max(1, config.samples_per_epoch or len(normal_images))
        steps = math.ceil(samples / config.batch_size) * config.epochs
        total = steps * len(left_out) + (math.ceil(full_samples / config.batch_size) * config.epochs if with_final else 0)
        checkpoint = Path(checkpoint_dir) if checkpoint_dir is not None else None
        heads, losses, scores = [], [], []
        for number, excluded in enumerate(left_out):
            kept = [i for i in trained if i not in set(excluded)]
            folder = checkpoint if checkpoint is None or (len(left_out) == 1 and not with_final) else checkpoint / f"model{number}"
            head, head_losses, info = self._train_head(
                [normal_images[i] for i in kept], [features[i] for i in kept], anomalies, samples,
                number if len(left_out) > 1 else None, (report, number * steps, total), folder, resume,
            )
            heads.append(head)
            losses.extend(head_losses)
            if excluded:
                maps = self._maps_of([head], [normal_images[i] for i in excluded])
                scores.append(top_k_mean(maps, config.top_k).cpu().numpy().astype(np.float64))
        final_head = None
        if with_final:
            final_head, final_losses, info = self._train_head(
                [normal_images[i] for i in everyone], [features[i] for i in everyone], anomalies, full_samples,
                None, (report, steps * len(left_out), total), None if checkpoint is None else checkpoint / "final", resume,
            )
            losses = final_losses + losses
        self.heads = heads
        self.final_head = final_head
        self.losses = losses
        self.model_info = {**info, "normal_images": len(everyone if with_final else trained), "models": len(heads),
                           "final_model": final_head is not None,
                           "calibration": CROSS_FIT if len(heads) > 1 else (HELD_BACK if scores else None)}
        self.held_out_scores = np.concatenate(scores) if scores else None
        return self

    def _train_head(
        self,
        normal_images: Sequence[np.ndarray],
        normal_features: Sequence[Sequence[torch.Tensor]],
        anomalies: Sequence[tuple[np.ndarray, np.ndarray]],
        samples: int,
        fold: int | None,
        progress: tuple[Progress, int, int],
        checkpoint: Path | None,
        resume: bool,
    ) -> tuple[PRNHead, list[float], dict[str, Any]]:
        """Train one head on ``normal_images`` (their cached features given) for ``samples``
        samples per epoch; ``fold`` (None for a single model) varies the random streams;
        ``progress`` is (callback, train steps done before this head, train steps in all)."""
        config = self.config
        report, steps_before, steps_in_all = progress
        generator = AnomalyGenerator(normal_images, anomalies, image_size=config.image_size)
        count = len(generator.normals)
        scales = [torch.stack([f[s] for f in normal_features]) for s in range(len(normal_features[0]))]
        info = {
            "in_channels": [int(m.shape[1]) for m in scales],
            "grid_sizes": [int(m.shape[-1]) for m in scales],
            "prototype_count": prototype_count(count, config.prototype_fraction, config.max_prototypes),
            "backbone": str(getattr(self.backbone, "name", config.backbone)),
            "layer_names": list(getattr(self.backbone, "layer_names", config.layers)),
            "normal_images": count,
            "real_anomalies": len(generator.anomalies),
        }
        for side, next_side in zip(info["grid_sizes"], info["grid_sizes"][1:]):
            if side != 2 * next_side:
                raise ConfigError(f"PRN layers must halve in resolution scale to scale; got grids {info['grid_sizes']}.")

        stream = [config.seed] if fold is None else [config.seed, FOLD_STREAM + fold]
        torch.manual_seed(config.seed if fold is None else int(np.random.default_rng(stream).integers(2**31)))
        device = resolve_device(config.device)
        head = self._build_head(info).to(device)
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        steps_per_epoch = math.ceil(samples / config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        start_epoch = 0
        losses: list[float] = []
        if resume and checkpoint is not None and (checkpoint / "config.json").is_file():
            start_epoch, losses = self._restore_checkpoint(checkpoint, head, optimizer, info)
        else:
            report("prototypes", 0, 1)
            # k-means on the CPU (its seeded generator): the same prototypes on every device.
            prototypes = build_prototypes([m.to(torch.float32).cpu() for m in scales], info["prototype_count"], seed=config.seed + (fold or 0))
            head.set_prototypes([p.to(device) for p in prototypes])
            report("prototypes", 1, 1)

        for epoch in range(start_epoch, config.epochs):
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
                fresh_features = self._features(fresh) if fresh else []
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
                self._save_checkpoint(checkpoint, head, optimizer, info, epoch + 1, losses)
        head.eval()
        return head, losses, info

    def _save_checkpoint(
        self,
        folder: Path,
        head: PRNHead,
        optimizer: torch.optim.Optimizer,
        info: dict[str, Any],
        epochs_done: int,
        losses: list[float],
    ) -> None:
        tensors = {f"head.{name}": value for name, value in head.state_dict().items()}
        state = optimizer.state_dict()
        for param_id, param_state in state["state"].items():
            for key, value in param_state.items():
                tensors[f"optimizer.{param_id}.{key}"] = torch.as_tensor(value)
        header = {
            "prn": self.config.to_json(),
            "model": info,
            "epochs_done": epochs_done,
            "losses": losses,
            "param_groups": state["param_groups"],
        }
        save_model(folder, CHECKPOINT_METHOD, tensors, header, overwrite=True)

    def _restore_checkpoint(
        self,
        folder: Path,
        head: PRNHead,
        optimizer: torch.optim.Optimizer,
        info: dict[str, Any],
    ) -> tuple[int, list[float]]:
        tensors, header = load_model(folder, CHECKPOINT_METHOD)
        saved = header["config"]
        if {**saved.get("prn", {}), "device": None} != {**self.config.to_json(), "device": None}:
            raise ModelFileError(f"checkpoint '{folder}' was made with other PRN settings; resume with the same settings.")
        if saved.get("model", {}).get("normal_images") != info["normal_images"]:
            raise ModelFileError(f"checkpoint '{folder}' was made from another set of normal images.")
        device = resolve_device(self.config.device)
        head_state = {name[5:]: value.to(device) for name, value in tensors.items() if name.startswith("head.")}
        prototypes = [head_state[f"prototypes_{s}"] for s in range(head.scales)]
        head.set_prototypes(prototypes)
        head.load_state_dict(head_state)
        optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, param_id, key = name.split(".", 2)
                optimizer_state.setdefault(int(param_id), {})[key] = value
        optimizer.load_state_dict({"state": optimizer_state, "param_groups": saved["param_groups"]})
        return int(saved["epochs_done"]), list(saved["losses"])

    @property
    def is_fitted(self) -> bool:
        return bool(self.heads)

    def require_heads(self) -> list[PRNHead]:
        """The trained heads (one, or one per fold model); not fitted fails clearly."""
        self.require_fitted()
        return self.heads

    def memory_needed(self, count: int, image_size: int | None = None) -> int:
        """Training caches every normal image's multi-scale features (float16, so half a float each)."""
        size = image_size or self.config.image_size
        backbone = self.backbone
        grid = getattr(backbone, "grid", None)
        side = grid[0] * size // self.config.image_size if grid else size // 4
        channels = sum(getattr(backbone, "layer_channels", [256] * len(self.config.layers)))
        return estimate_bytes(count=count, image_size=size, batch_size=self.config.batch_size,
                              feature_floats=channels * side * side // 2)

    def map_heads(self) -> list[PRNHead]:
        """The heads whose (averaged) map is the detector's anomaly map: the final model when
        there is one, else the one model or the fold models."""
        heads = self.require_heads()
        return [self.final_head] if self.final_head is not None else heads

    def anomaly_maps(self, images: Sequence[np.ndarray], progress: Progress | None = None) -> torch.Tensor:
        """Pixel anomaly probabilities (N, S, S) for RGB uint8 images (averaged over the fold
        models when cross-fitted; the final model's with ``final_model``)."""
        return self._maps_of(self.map_heads(), images, progress)

    def _maps_of(self, heads: Sequence[PRNHead], images: Sequence[np.ndarray], progress: Progress | None = None) -> torch.Tensor:
        return self._maps_and_fold_maps(heads, None, images, progress)[0]

    def _maps_and_fold_maps(
        self,
        heads: Sequence[PRNHead],
        fold_heads: Sequence[PRNHead] | None,
        images: Sequence[np.ndarray],
        progress: Progress | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The averaged map of ``heads`` and, when given, that of ``fold_heads`` (one backbone
        pass per batch for both)."""
        maps, fold_maps = [], []
        step = self.config.batch_size
        with torch.no_grad():
            for start in range(0, len(images), step):
                features = self._features(images[start : start + step])
                maps.append(torch.stack([torch.sigmoid(head.eval()(*features))[:, 0] for head in heads]).mean(dim=0))
                if fold_heads:
                    fold_maps.append(torch.stack([torch.sigmoid(h.eval()(*features))[:, 0] for h in fold_heads]).mean(dim=0))
                if progress is not None:
                    progress("predict", min(start + step, len(images)), len(images))
        return torch.cat(maps), (torch.cat(fold_maps) if fold_heads else None)

    def threshold(self) -> Threshold:
        """The verdict's probability cut (see the module docstring); good-image calibration first."""
        if self.calibration is not None:
            return self.calibration
        alpha = self.config.false_alarm_rate
        scores = self.held_out_scores
        if scores is None or scores.size == 0:
            return Threshold(
                FALLBACK_PROBABILITY,
                f"uncalibrated fallback: probability {FALLBACK_PROBABILITY} (no calibration scores: a model saved before "
                f"verdicts existed, fewer than {MIN_CALIBRATION_POOL} normal training images, or calibration turned off)",
            )
        if self.model_info.get("calibration") == CROSS_FIT:
            source = f"cross-fitted normal training images (each scored by the one of {len(self.heads)} fold models that never saw it)"
        else:
            source = "held-back normal training images"
        if scores.size < conformal_count(alpha):
            return Threshold(float(scores.max()), f"largest score of {scores.size} {source} (too few for a false-alarm rate of {alpha:g})")
        return conformal_threshold(scores, alpha, source=source)

    def predict(
        self, images: Sequence[np.ndarray], paths: Sequence[str] | None = None, progress: Progress | None = None
    ) -> Result:
        """Anomaly maps (N, S, S), image scores (mean of the top-k pixel scores), verdicts and
        masks from :meth:`threshold`."""
        self.require_fitted()
        if len(images) == 0:
            raise ConfigError("PRN predict() was given no images.")
        names = default_paths(paths, len(images), self.method)
        threshold = self.threshold()
        # With a final model the fold models give the verdict while their own scores set the cut.
        fold_verdict = self.final_head is not None and self.calibration is None
        maps, fold_maps = self._maps_and_fold_maps(self.map_heads(), self.heads if fold_verdict else None, list(images), progress)
        scores = top_k_mean(maps, self.config.top_k)
        result = Result(
            paths=names,
            image_scores=scores.cpu().numpy().astype(np.float64),
            anomaly_maps=maps.cpu().numpy().astype(np.float32),
            masks=pixel_masks(maps.cpu().numpy(), threshold),
            settings=self.settings(),
        )
        if fold_maps is None:
            return with_verdict(result, threshold)
        statistic = top_k_mean(fold_maps, self.config.top_k).cpu().numpy().astype(np.float64)
        result = with_verdict(result, threshold, statistic)
        result.masks = result.masks & result.is_anomalous[:, None, None]
        return result

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write the trained model (safetensors + JSON) to ``folder``; fold models' weights are
        prefixed ``model<i>.``."""
        heads = self.require_heads()
        header = {"prn": self.config.to_json(), "model": self.model_info, "losses": self.losses}
        if len(heads) == 1:
            tensors = dict(heads[0].state_dict())
        else:
            tensors = {f"model{i}.{name}": value for i, head in enumerate(heads) for name, value in head.state_dict().items()}
        if self.final_head is not None:
            tensors.update({f"{FINAL_PREFIX}{name}": value for name, value in self.final_head.state_dict().items()})
        if self.held_out_scores is not None:
            tensors[HELD_OUT_KEY] = torch.from_numpy(self.held_out_scores)
        return save_model(folder, METHOD, tensors, header, overwrite=overwrite)

    @classmethod
    def load(cls, folder: str | Path, *, backbone: Any | None = None, device: str | None = None) -> "PRN":
        """Load a model written by :meth:`save`; a file from another method or version fails clearly.
        ``device``: where it runs (default: the device saved in its config, ``auto`` for older models)."""
        tensors, header = load_model(folder, METHOD)
        saved = header["config"]
        try:
            config = PRNConfig.from_dict(saved["prn"])
            info = saved["model"]
        except (KeyError, TypeError) as exc:
            raise ModelFileError(f"model '{folder}' has an incomplete PRN config ({exc}).") from None
        if device is not None:
            config = replace(config, device=device)
        detector = cls(config, backbone=backbone)
        held_out = tensors.pop(HELD_OUT_KEY, None)
        detector.held_out_scores = None if held_out is None else held_out.numpy().astype(np.float64)
        models = int(info.get("models", 1))
        final = {name[len(FINAL_PREFIX):]: value.to(resolve_device(config.device)) for name, value in tensors.items() if name.startswith(FINAL_PREFIX)}
        tensors = {name: value for name, value in tensors.items() if not name.startswith(FINAL_PREFIX)}
        states = [
            {name[len(prefix):]: value.to(resolve_device(config.device)) for name, value in tensors.items() if name.startswith(prefix)}
            for prefix in (f"model{number}." if models > 1 else "" for number in range(models))
        ]
        for position, state in enumerate(states + ([final] if final else [])):
            head = detector._build_head(info).to(resolve_device(config.device))
            try:
                head.set_prototypes([state[f"prototypes_{s}"] for s in range(head.scales)])
                head.load_state_dict(state)
            except (KeyError, RuntimeError) as exc:
                raise ModelFileError(f"model '{folder}' weights do not match its PRN config: {exc}") from None
            if position < len(states):
                detector.heads.append(head.eval())
            else:
                detector.final_head = head.eval()
        detector.model_info = info
        detector.losses = list(saved.get("losses", []))
        return detector
