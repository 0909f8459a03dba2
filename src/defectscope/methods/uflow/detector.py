"""The U-Flow detector: trained on normal images, maps plus masks from an a contrario threshold.

Features: one frozen backbone (default EfficientNet-Lite0) run once per batch, its chosen layers
each on their native grid (strides 4, 8 and 16 of a 256 x 256 input: grids 64, 32 and 16), since
a U-shaped flow needs each scale at its own resolution. With ``input_sizes`` (a ViT, whose blocks
share one grid) the backbone runs once per distinct input size. The backbone is frozen, so
training features are extracted once and cached; :mod:`.training` standardises them and trains
the U-shaped flow (:mod:`.flow`) that maps them to latents. No channel reduction is applied. The
anomaly map is smoothed with a Gaussian (sigma 4 px), as MuSc's.

Why these scales (measured on MVTec bottle and hazelnut_toy, docs/BENCHMARKS.md): adding the
stride-4 layer to strides 8 + 16 raised pixel AUROC (bottle 0.959 -> 0.969, hazelnut 0.985 ->
0.993) and pixel AP (bottle 0.44 -> 0.57) for about twice the training time; dropping stride 16
instead leaves no grid coarse enough for the NFA to detect anything (its number of tests grows
with the grid area). The stride-32 layer (320 channels) made an epoch about 5x slower and, averaged
to 64 channels, lowered pixel AUROC.

Detections come from :func:`defectscope.methods.uflow.nfa.detect` on the latents; by default each
detection is then given the outline of the anomaly map at a level measured on the held-out normal
training images (``mask_extent``, :mod:`.extent`). Saving and loading: :mod:`.persistence`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from defectscope.backbones.base import Backbone
from defectscope.device import resolve_device
from defectscope.errors import BackboneError, ConfigError
from defectscope.memory import estimate_bytes
from defectscope.methods.base import Detector, Result, default_paths
from defectscope.methods.holdout import held_out_indices
from defectscope.methods.uflow import extent, nfa, persistence, training
from defectscope.methods.uflow.config import METHOD, UFlowConfig
from defectscope.methods.uflow.flow import UFlowNet, anomaly_map
from defectscope.methods.verdict import Threshold, with_verdict
from defectscope.progress import Progress as ProgressCallback

__all__ = ["METHOD", "UFlow", "UFlowConfig"]


def build_backbone(config: UFlowConfig) -> Backbone:
    """The one backbone of ``config``: every distinct chosen layer, at ``image_size``."""
    from defectscope.backbones import get_backbone

    layers = list(dict.fromkeys(config.layers))
    try:
        return get_backbone(config.backbone, weights=config.weights, image_size=config.image_size, layers=layers,
                            device=resolve_device(config.device))
    except BackboneError as exc:
        if config.backbone.startswith("efficientnet"):
            raise
        raise BackboneError(
            f"{str(exc).rstrip('.')}; for a ViT backbone U-Flow takes its scales from input sizes, e.g. "
            "--param layers=block12,block12 --param input_sizes=448,224"
        ) from None


def scale_plan(config: UFlowConfig, backbone: Backbone) -> list[tuple[int, int]]:
    """(input side, index into ``backbone.layer_names``) of each scale, finest first."""
    sizes = config.input_sizes or (config.image_size,) * len(config.layers)
    for size in sorted(set(sizes)):
        if size % backbone.size_unit:
            raise BackboneError(
                f"Backbone '{backbone.name}' needs input sizes that are multiples of {backbone.size_unit}, "
                f"got {size} in U-Flow's input_sizes."
            )
    plan = []
    for layer, size in zip(config.layers, sizes):
        if layer not in backbone.layer_names:
            raise ConfigError(f"U-Flow layer {layer!r} is not among the backbone's layers {backbone.layer_names}")
        plan.append((int(size), backbone.layer_names.index(layer)))
    return plan


class UFlow(Detector):
    """U-Flow detector (see the module docstring).

    Args:
        config: settings; None for the defaults.
        backbone: an optional prebuilt backbone holding the chosen layers; by default it is built
            from ``config`` with :func:`defectscope.backbones.get_backbone`.
    """

    method = METHOD
    config: UFlowConfig

    def __init__(self, config: UFlowConfig | None = None, *, backbone: Backbone | None = None) -> None:
        super().__init__(config or UFlowConfig())
        self._backbone = backbone
        self.flow: UFlowNet | None = None
        self.feature_mean: list[torch.Tensor] = []
        self.feature_std: list[torch.Tensor] = []
        self.latent_scale: list[torch.Tensor] = []
        self.map_threshold: float | None = None
        self.history: list[float] = []
        self.epochs_done = 0

    @property
    def backbone(self) -> Backbone:
        """The frozen backbone (built on first use)."""
        if self._backbone is None:
            self._backbone = build_backbone(self.config)
        return self._backbone

    def extract_features(self, images: Sequence[np.ndarray], progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """Images -> raw backbone features, one (N, C_s, h_s, w_s) tensor per scale, finest first:
        one backbone forward per batch of ``batch_size`` images (per input size)."""
        if len(images) == 0:
            raise ConfigError("U-Flow got no images")
        backbone = self.backbone
        plan = scale_plan(self.config, backbone)
        per_scale: list[list[torch.Tensor]] = [[] for _ in plan]
        step = self.config.batch_size
        for start in range(0, len(images), step):
            chunk = images[start:start + step]
            layers: dict[int, list[torch.Tensor]] = {}
            for size in dict.fromkeys(size for size, _ in plan):
                layers[size] = backbone.extract(backbone.preprocess(chunk, (size, size)), common_grid=False).layers
            for scale, (size, index) in enumerate(plan):
                per_scale[scale].append(layers[size][index].detach().to(torch.float32).clone())
            if progress is not None:
                progress("features", min(start + step, len(images)), len(images))
        features = [torch.cat(chunks) for chunks in per_scale]
        grids = [f.shape[-1] for f in features]
        for finer, coarser in zip(grids[:-1], grids[1:]):
            if finer != 2 * coarser:
                raise ConfigError(
                    f"U-Flow layers {list(self.config.layers)} give grids {grids}; each must be half "
                    "the previous one (choose layers with strides growing by 2, or halving input_sizes)"
                )
        return features

    def held_out(self, count: int) -> list[int]:
        """Indices of the training images (of ``count``) kept out of flow training for the
        calibration (:mod:`defectscope.methods.holdout`, U-Flow's ``"torch"`` order)."""
        return held_out_indices(count, self.config.calibration_fraction, self.config.seed, "torch")

    def normalise(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Raw features -> standardised with the training statistics."""
        return [(f - m) / s for f, m, s in zip(features, self.feature_mean, self.feature_std)]

    def fit(
        self,
        images: Sequence[np.ndarray],
        *,
        progress: ProgressCallback | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ) -> "UFlow":
        """Train on normal images for ``config.epochs`` epochs.

        With ``checkpoint_dir`` a checkpoint (weights, optimizer state, epoch) is written there
        after every epoch; with ``resume`` training continues from that checkpoint when it exists.
        """
        features = self.extract_features(images, progress)
        return self.fit_features(features, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume)

    def fit_features(
        self,
        features: Sequence[torch.Tensor],
        *,
        progress: ProgressCallback | None = None,
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
    ) -> "UFlow":
        """Train on cached raw backbone features (one (N, C, h, w) tensor per scale, finest first)."""
        training.train(self, features, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume)
        return self

    @property
    def is_fitted(self) -> bool:
        return self.flow is not None

    def require_flow(self) -> UFlowNet:
        """The trained flow; not fitted fails clearly."""
        self.require_fitted()
        assert self.flow is not None
        return self.flow

    def memory_plan(self) -> tuple[int, int]:
        return self.config.image_size, self.backbone.size_unit

    def memory_needed(self, count: int, image_size: int | None = None) -> int:
        """Training holds every image's features three times (raw, standardised, latents)."""
        size = image_size or self.config.image_size
        backbone = self.backbone
        per_image = 0
        for input_size, index in scale_plan(self.config, backbone):
            side = input_size // backbone.layer_strides[index] * size // self.config.image_size
            per_image += backbone.layer_channels[index] * side * side
        return estimate_bytes(count=count, image_size=size, batch_size=self.config.batch_size,
                              feature_floats=3 * per_image)

    def latents_from_features(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Raw backbone features -> latents z_s (N, C_s, h_s, w_s), finest first."""
        flow = self.require_flow()
        flow.eval()
        with torch.no_grad():
            latents, _ = flow(self.normalise([f.to(resolve_device(self.config.device), torch.float32) for f in features]))
        return latents

    def predict_features(self, features: Sequence[torch.Tensor], paths: Sequence[str] | None = None) -> Result:
        """Like :meth:`predict`, from raw backbone features."""
        latents = self.latents_from_features(features)
        count = latents[0].shape[0]
        names = default_paths(paths, count, self.method)
        size = self.config.image_size
        maps = anomaly_map(latents, size, self.config.smoothing_sigma).cpu().numpy().astype(np.float32)
        masks = detected = None
        if self.config.nfa_method != "none":
            masks = detected = np.stack([
                nfa.detect([(z[i] / scale).cpu().numpy() for z, scale in zip(latents, self._scales(latents))], size, epsilon=self.config.epsilon,
                           method=self.config.nfa_method, window=self.config.block_window,
                           alpha=self.config.block_alpha, max_region_fraction=self.config.max_region_fraction)
                for i in range(count)
            ])
            if self.config.mask_extent == "calibrated" and self.map_threshold is not None:
                rule = self.config.extent_rule()
                masks = np.stack([
                    extent.extent_mask(rule, found, amap, self.map_threshold)
                    for found, amap in zip(masks, maps)
                ])
        return self._with_verdict(Result(
            paths=names,
            image_scores=maps.reshape(count, -1).max(axis=1).astype(np.float64),
            anomaly_maps=maps,
            masks=masks,
            settings=self.settings(),
        ), detected)

    def _with_verdict(self, result: Result, detected: np.ndarray | None) -> Result:
        """Verdict: the good-image calibration when there is one; else an image is anomalous when
        the a contrario test detected a region (threshold = the NFA level epsilon); with
        ``nfa_method="none"``, when its map exceeds the held-out normal images' largest value."""
        if self.calibration is not None:
            return with_verdict(result, self.calibration)
        if detected is not None:
            result.is_anomalous = detected.reshape(len(result.paths), -1).any(axis=1)
            result.verdict_scores = np.full(len(result.paths), np.nan)
            result.threshold = float(self.config.epsilon)
            result.threshold_rule = (
                f"a contrario: anomalous when a region is detected with NFA <= {self.config.epsilon:g} "
                f"({self.config.nfa_method} test)"
            )
            return result
        if self.map_threshold is not None:
            level = ("largest map value" if self.config.extent_quantile == 1.0
                     else f"{self.config.extent_quantile:g} quantile of the map values")
            return with_verdict(result, Threshold(self.map_threshold, f"{level} of the held-out normal training images"))
        return result

    def _scales(self, latents: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if len(self.latent_scale) == len(latents):
            return self.latent_scale
        return [torch.ones(()) for _ in latents]

    def predict(
        self, images: Sequence[np.ndarray], paths: Sequence[str] | None = None, progress: ProgressCallback | None = None
    ) -> Result:
        """Images -> Result with anomaly maps (1 - likelihood), image scores (max) and NFA masks."""
        self.require_flow()
        if len(images) == 0:
            raise ConfigError("U-Flow got no images")
        names = default_paths(paths, len(images), self.method)
        results = []
        step = max(self.config.batch_size, 1)
        for start in range(0, len(images), step):
            features = self.extract_features(images[start:start + step])
            results.append(self.predict_features(features, None))
            if progress is not None:
                progress("predict", min(start + step, len(images)), len(images))
        masks = None if results[0].masks is None else np.concatenate([r.masks for r in results])
        verdicts = None if results[0].is_anomalous is None else np.concatenate([r.is_anomalous for r in results])
        statistic = None if results[0].verdict_scores is None else np.concatenate([r.verdict_scores for r in results])
        review = None if results[0].needs_review is None else np.concatenate([r.needs_review for r in results])
        return Result(
            paths=names,
            image_scores=np.concatenate([r.image_scores for r in results]),
            anomaly_maps=np.concatenate([r.anomaly_maps for r in results]),
            masks=masks,
            settings=results[0].settings,
            is_anomalous=verdicts,
            threshold=results[0].threshold,
            threshold_rule=results[0].threshold_rule,
            verdict_scores=statistic,
            needs_review=review,
            review_threshold=results[0].review_threshold,
        )

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Save the trained model (safetensors + JSON, method "uflow") to ``folder``."""
        return persistence.save(self, folder, overwrite=overwrite)

    @classmethod
    def load(cls, folder: str | Path, *, backbone: Backbone | None = None, device: str | None = None) -> "UFlow":
        """Load a model written by :meth:`save` (or a checkpoint); other methods' files fail clearly.
        ``device``: where it runs (default: the device saved in its config, ``auto`` for older models)."""
        config, tensors, saved = persistence.read(folder, device)
        model = cls(config, backbone=backbone)
        persistence.restore_state(model, tensors, saved)
        return model
