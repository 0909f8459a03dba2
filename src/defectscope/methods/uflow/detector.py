"""The U-Flow detector: trained on normal images, maps plus masks from an a contrario threshold.

Features: one frozen backbone instance per chosen layer (default EfficientNet-Lite0 at strides
4, 8 and 16 of a 256 x 256 input: grids 64, 32 and 16), so each scale keeps its own native grid
(the registry resizes all layers of ONE backbone to a common grid, which a U-shaped flow cannot
use). The backbone is frozen, so training features are extracted once and cached. Each channel is
standardised with the mean and standard deviation of the training features (a fixed affine map
computed once, not trained; its constant log-det is left out of the loss), then the U-shaped flow
(:mod:`.flow`) maps them to latents. No channel reduction is applied. The anomaly map is smoothed
with a Gaussian (sigma 4 px), as MuSc's.

Why these scales (measured on MVTec bottle and hazelnut_toy, docs/BENCHMARKS.md): adding the
stride-4 layer to strides 8 + 16 raised pixel AUROC (bottle 0.959 -> 0.969, hazelnut 0.985 ->
0.993) and pixel AP (bottle 0.44 -> 0.57) for about twice the training time; dropping stride 16
instead leaves no grid coarse enough for the NFA to detect anything (its number of tests grows
with the grid area). The stride-32 layer (320 channels) made an epoch about 5x slower and, averaged
to 64 channels, lowered pixel AUROC.

Model selection uses no test data: training runs a fixed number of epochs and keeps the last
weights. Detections come from :func:`defectscope.methods.uflow.nfa.detect` on the latents; by
default each detection is then given the outline of the anomaly map at a level measured on the
held-out normal training images (``mask_extent``, :mod:`.extent`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from defectscope.backbones.base import Backbone
from defectscope.device import resolve_device
from defectscope.errors import ConfigError, ModelFileError
from defectscope.memory import estimate_bytes
from defectscope.methods.base import Detector, MethodConfig, Result, default_paths
from defectscope.methods.modelfile import load_model, read_model_config, save_model
from defectscope.methods.uflow import extent, nfa
from defectscope.methods.uflow.flow import UFlowNet, anomaly_map, flow_loss
from defectscope.methods.verdict import Threshold, with_verdict
from defectscope.progress import Progress as ProgressCallback

METHOD = "uflow"


@dataclass(frozen=True)
class UFlowConfig(MethodConfig):
    """U-Flow settings (defaults fit one MVTec category in well under 15 min on 2 CPU cores).

    Attributes:
        backbone: backbone name for :func:`defectscope.backbones.get_backbone`.
        weights: optional local weights file/folder for the backbone.
        image_size: square input side; maps and masks come at this resolution.
        layers: backbone layers, finest first; each must have half the grid of the previous.
        input_sizes: optional input side per layer (finest first); None: every layer sees
            image_size. A ViT has one grid for all its blocks, so its scales come from input
            sizes instead, as the authors' two CaiT models at 448 and 224: e.g. backbone
            "dinov2-vits14", layers ("block12", "block12"), input_sizes (448, 224) -> grids 32
            and 16. Maps and masks are still given at image_size.
        blocks_per_scale: coupling blocks per flow stage.
        affine_clamping: soft clamp of the coupling scales.
        hidden_ratio: subnet hidden channels / subnet input channels.
        epochs: fixed number of training epochs (the last weights are kept).
        batch_size: training batch size.
        min_epoch_samples: an epoch visits every training image once, and small training sets
            are cycled (fresh shuffles) until at least this many samples are seen.
        learning_rate: Adam learning rate at epoch 0.
        lr_decay: the learning rate is multiplied by this factor after every epoch.
        weight_decay: Adam weight decay.
        seed: seeds initialisation and shuffling.
        nfa_method: "region" (max-tree, default), "block" or "none" (no masks).
        epsilon: NFA level; on pure noise at most epsilon false regions per image on average.
        max_region_fraction: the region test considers connected regions of at most this share
            of each latent grid, and counts only shapes up to that size as tests (a defect is
            assumed to cover at most half of the image). The count is dominated by the largest
            size, so halving it halves the evidence a region needs; still exact on noise.
        block_window: window side of the block NFA.
        block_alpha: per-value exceedance probability of the block NFA.
        feature_batch_size: images per backbone call.
        smoothing_sigma: Gaussian smoothing of the anomaly map, in pixels of the image_size
            input (0: none, as in the paper). The NFA detections are computed from the latents
            and do not depend on it.
        mask_extent: "calibrated" (default): the NFA decides WHICH regions are anomalous, and a
            mask is every connected region of {anomaly map >= map_threshold} that touches an NFA
            detection, each then cut as ``extent_cut_rule`` says, where map_threshold is the
            ``extent_quantile`` of the map values on the held-out normal training images
            (:mod:`.extent`); without held-out images it falls back to "nfa".
            "nfa": the NFA regions themselves, upsampled from their latent grids (the paper's
            masks; coarse grids make them blocky and wide).
        extent_quantile: quantile of the pooled held-out normal map values taken as
            map_threshold (default 0.999; 1: their maximum, the default before issue 14's third
            round). Chosen with the cut rule on synthetic defects (docs/BENCHMARKS.md).
        extent_cut_rule: how each masked region is cut, in u = -log(1 - map) units (the map's
            negative log likelihood, which unlike the map does not saturate near 1). "otsu"
            (default): at Otsu's threshold of the region's own u values (no setting to tune; it
            adapts to faint, strong, small and large regions). "height": at u_t + extent_cut *
            (u_peak - u_t), u_t that of map_threshold, u_peak the region's largest.
        extent_cut: the height fraction of the "height" rule (0: the whole level-set component).
        calibration_fraction: share of the training images (when there are at least 10; at least
            2 images) kept out of flow training; after training, each scale's latent spread
            sigma_s^2 = max(1, mean z^2 over those images) is measured and the NFA tests z / sigma_s,
            so a flow that generalises less well than chi2 predicts does not mark normal texture.
            0 disables it (all images train the flow, sigma_s = 1).
    """

    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    image_size: int = 256
    layers: tuple[str, ...] = ("stride4", "stride8", "stride16")
    input_sizes: tuple[int, ...] | None = None
    blocks_per_scale: int = 4
    affine_clamping: float = 2.0
    hidden_ratio: float = 1.0
    epochs: int = 30
    batch_size: int = 16
    min_epoch_samples: int = 200
    learning_rate: float = 2e-3
    lr_decay: float = 0.97
    weight_decay: float = 1e-5
    seed: int = 0
    nfa_method: str = "region"
    epsilon: float = 1.0
    max_region_fraction: float = 0.5
    block_window: int = 3
    block_alpha: float = 0.05
    feature_batch_size: int = 16
    calibration_fraction: float = 0.1
    smoothing_sigma: float = 4.0
    mask_extent: str = "calibrated"
    extent_quantile: float = 0.999
    extent_cut_rule: str = "otsu"
    extent_cut: float = 0.3
    device: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.input_sizes is not None:
            sizes = self.input_sizes if isinstance(self.input_sizes, (tuple, list)) else (self.input_sizes,)
            object.__setattr__(self, "input_sizes", tuple(sizes))
            if len(self.input_sizes) != len(self.layers) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.input_sizes
            ):
                raise ConfigError(
                    f"U-Flow input_sizes {list(self.input_sizes)} must be one positive integer per layer "
                    f"({len(self.layers)} layers)"
                )
        positive = ("image_size", "blocks_per_scale", "epochs", "batch_size", "feature_batch_size",
                    "min_epoch_samples")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"U-Flow setting {name} must be a positive integer, got {value!r}")
        if not self.layers:
            raise ConfigError("U-Flow needs at least one backbone layer")
        for name in ("affine_clamping", "hidden_ratio", "learning_rate", "epsilon"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"U-Flow setting {name} must be > 0, got {getattr(self, name)!r}")
        if not 0 < self.lr_decay <= 1:
            raise ConfigError(f"U-Flow setting lr_decay must be in (0, 1], got {self.lr_decay!r}")
        if self.nfa_method not in ("region", "block", "none"):
            raise ConfigError(f"U-Flow nfa_method must be 'region', 'block' or 'none', got {self.nfa_method!r}")
        if self.block_window < 1 or self.block_window % 2 == 0:
            raise ConfigError(f"U-Flow block_window must be a positive odd number, got {self.block_window!r}")
        if not 0 <= self.calibration_fraction < 1:
            raise ConfigError(
                f"U-Flow calibration_fraction must be in [0, 1), got {self.calibration_fraction!r}"
            )
        if not 0 < self.max_region_fraction <= 1:
            raise ConfigError(f"U-Flow max_region_fraction must be in (0, 1], got {self.max_region_fraction!r}")
        if self.mask_extent not in ("calibrated", "nfa"):
            raise ConfigError(f"U-Flow mask_extent must be 'calibrated' or 'nfa', got {self.mask_extent!r}")
        if not 0 < self.extent_quantile <= 1:
            raise ConfigError(f"U-Flow extent_quantile must be in (0, 1], got {self.extent_quantile!r}")
        if self.extent_cut_rule not in ("otsu", "height"):
            raise ConfigError(f"U-Flow extent_cut_rule must be 'otsu' or 'height', got {self.extent_cut_rule!r}")
        if not 0 <= self.extent_cut < 1:
            raise ConfigError(f"U-Flow extent_cut must be in [0, 1), got {self.extent_cut!r}")
        if not self.smoothing_sigma >= 0:
            raise ConfigError(f"U-Flow smoothing_sigma must be >= 0, got {self.smoothing_sigma!r}")
        if not 0 < self.block_alpha < 1:
            raise ConfigError(f"U-Flow block_alpha must be in (0, 1), got {self.block_alpha!r}")

    def extent_rule(self) -> extent.ExtentRule:
        """The :class:`.extent.ExtentRule` of these settings (u units)."""
        if self.extent_cut_rule == "otsu":
            return extent.ExtentRule(self.extent_quantile, log=True, otsu=True)
        return extent.ExtentRule(self.extent_quantile, self.extent_cut, log=True)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "UFlowConfig":
        """Inverse of :meth:`to_json`; unknown keys are an error. Files written before map smoothing
        existed load with ``smoothing_sigma = 0``, ``mask_extent = "nfa"`` and
        ``max_region_fraction = 1``, files from before the extent settings with
        ``extent_quantile = 1`` and ``extent_cut = 0``, files from before the Otsu cut with
        ``extent_cut_rule = "height"``, so they give the maps and masks they gave then."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFileError(f"U-Flow config has unknown settings {unknown}")
        return cls(**{"smoothing_sigma": 0.0, "mask_extent": "nfa", "max_region_fraction": 1.0,
                      "extent_quantile": 1.0, "extent_cut": 0.0, "extent_cut_rule": "height", **data})


def _build_backbones(config: UFlowConfig) -> list[Backbone]:
    from defectscope.backbones import get_backbone
    from defectscope.errors import BackboneError

    sizes = config.input_sizes or (config.image_size,) * len(config.layers)
    try:
        return [
            get_backbone(config.backbone, weights=config.weights, image_size=size, layers=[layer], device=resolve_device(config.device))
            for layer, size in zip(config.layers, sizes)
        ]
    except BackboneError as exc:
        if config.backbone.startswith("efficientnet"):
            raise
        raise BackboneError(
            f"{str(exc).rstrip('.')}; for a ViT backbone U-Flow takes its scales from input sizes, e.g. "
            "--param layers=block12,block12 --param input_sizes=448,224"
        ) from None


def _training_settings(config: UFlowConfig) -> dict[str, Any]:
    """The settings that must match for a checkpoint to be resumed (all but the epoch count)."""
    data = config.to_json()
    data.pop("epochs")
    data.pop("device", None)
    return data


class UFlow(Detector):
    """U-Flow detector (see the module docstring).

    Args:
        config: settings; None for the defaults.
        backbones: optional prebuilt backbones, one per layer (finest first); by default they are
            built from ``config`` with :func:`defectscope.backbones.get_backbone`.
    """

    method = METHOD
    config: UFlowConfig

    def __init__(self, config: UFlowConfig | None = None, *, backbones: Sequence[Backbone] | None = None) -> None:
        super().__init__(config or UFlowConfig())
        self._backbones = list(backbones) if backbones is not None else None
        if self._backbones is not None and len(self._backbones) != len(self.config.layers):
            raise ConfigError(
                f"U-Flow got {len(self._backbones)} backbones for {len(self.config.layers)} layers"
            )
        self.flow: UFlowNet | None = None
        self.feature_mean: list[torch.Tensor] = []
        self.feature_std: list[torch.Tensor] = []
        self.latent_scale: list[torch.Tensor] = []
        self.map_threshold: float | None = None
        self.history: list[float] = []
        self.epochs_done = 0

    @property
    def backbones(self) -> list[Backbone]:
        """The backbones, one per scale (built on first use)."""
        if self._backbones is None:
            self._backbones = _build_backbones(self.config)
        return self._backbones

    def extract_features(self, images: Sequence[np.ndarray], progress: ProgressCallback | None = None) -> list[torch.Tensor]:
        """Images -> raw backbone features, one (N, C_s, h_s, w_s) tensor per scale, finest first."""
        if len(images) == 0:
            raise ConfigError("U-Flow got no images")
        per_scale: list[list[torch.Tensor]] = [[] for _ in self.backbones]
        step = self.config.feature_batch_size
        for start in range(0, len(images), step):
            batches: dict[int, torch.Tensor] = {}
            for scale, backbone in enumerate(self.backbones):
                size = int(backbone.image_size)
                if size not in batches:
                    batches[size] = backbone.preprocess(images[start:start + step])
                layer = backbone.extract(batches[size]).layers[0]
                per_scale[scale].append(layer.detach().to(torch.float32).clone())
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

    def _normalise(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [(f - m) / s for f, m, s in zip(features, self.feature_mean, self.feature_std)]

    def _new_flow(self, features: Sequence[torch.Tensor]) -> UFlowNet:
        return UFlowNet(
            [f.shape[1] for f in features], [f.shape[-1] for f in features],
            blocks_per_scale=self.config.blocks_per_scale, affine_clamping=self.config.affine_clamping,
            hidden_ratio=self.config.hidden_ratio, seed=self.config.seed,
        )

    def _optimizer(self) -> torch.optim.Optimizer:
        assert self.flow is not None
        params = [p for p in self.flow.parameters() if p.requires_grad]
        return torch.optim.Adam(params, lr=self.config.learning_rate, weight_decay=self.config.weight_decay)

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
        config = self.config
        device = resolve_device(config.device)
        features = [f.detach().to(device, torch.float32) for f in features]
        held_out = self._held_out(features[0].shape[0])
        if held_out.numel():
            keep = torch.ones(features[0].shape[0], dtype=torch.bool, device=device)
            keep[held_out] = False
            calibration = [f[held_out] for f in features]
            features = [f[keep] for f in features]
        count = features[0].shape[0]
        self.feature_mean = [f.mean(dim=(0, 2, 3), keepdim=True)[0] for f in features]
        self.feature_std = [f.std(dim=(0, 2, 3), keepdim=True)[0].clamp_min(1e-6) for f in features]
        normalised = self._normalise(features)
        self.flow = self._new_flow(features).to(device)
        optimizer = self._optimizer()
        self.history, self.epochs_done = [], 0
        if resume and checkpoint_dir is not None and (Path(checkpoint_dir) / "config.json").is_file():
            self._restore_checkpoint(Path(checkpoint_dir), optimizer)
        self.flow.train()
        for epoch in range(self.epochs_done, config.epochs):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * config.lr_decay ** epoch
            generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
            passes = max(1, math.ceil(config.min_epoch_samples / count))
            order = torch.cat([torch.randperm(count, generator=generator) for _ in range(passes)])
            order = order[:max(count, config.min_epoch_samples)]
            total, seen = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                index = order[start:start + config.batch_size]
                latents, log_det = self.flow([f[index] for f in normalised])
                loss = flow_loss(latents, log_det)
                if not torch.isfinite(loss):
                    raise ConfigError(f"U-Flow training diverged at epoch {epoch + 1} (loss {loss.item()})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(index)
                seen += len(index)
            self.history.append(total / seen)
            self.epochs_done = epoch + 1
            if checkpoint_dir is not None:
                self._write(Path(checkpoint_dir), optimizer, overwrite=True)
            if progress is not None:
                progress("epoch", epoch + 1, config.epochs)
        self.flow.eval()
        self.latent_scale = [torch.ones((), device=device) for _ in features]
        self.map_threshold = None
        if held_out.numel():
            latents = self.latents_from_features(calibration)
            self.latent_scale = [z.pow(2).mean().clamp_min(1.0).sqrt() for z in latents]
            maps = anomaly_map(latents, config.image_size, config.smoothing_sigma)
            self.map_threshold = extent.calibration_level(maps.cpu().numpy(), config.extent_quantile)
        return self

    def _held_out(self, count: int) -> torch.Tensor:
        """Indices of the training images kept out of training for the NFA calibration."""
        if self.config.calibration_fraction == 0 or count < 10:
            return torch.zeros(0, dtype=torch.long)
        size = max(2, round(self.config.calibration_fraction * count))
        generator = torch.Generator().manual_seed(self.config.seed + 7)
        return torch.randperm(count, generator=generator)[:size].sort().values

    @property
    def is_fitted(self) -> bool:
        return self.flow is not None

    def _require_fitted(self) -> UFlowNet:
        self.require_fitted()
        assert self.flow is not None
        return self.flow

    def memory_needed(self, count: int, image_size: int | None = None) -> int:
        """Training holds every image's features three times (raw, standardised, latents)."""
        size = image_size or self.config.image_size
        per_image = 0
        for backbone in self.backbones:
            grid = getattr(backbone, "grid", None)
            side = grid[0] * size // self.config.image_size if grid else size // 4
            per_image += int(getattr(backbone, "layer_channels", [256])[0]) * side * side
        return estimate_bytes(count=count, image_size=size, batch_size=self.config.feature_batch_size,
                              feature_floats=3 * per_image)

    def latents_from_features(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Raw backbone features -> latents z_s (N, C_s, h_s, w_s), finest first."""
        flow = self._require_fitted()
        flow.eval()
        with torch.no_grad():
            latents, _ = flow(self._normalise([f.to(resolve_device(self.config.device), torch.float32) for f in features]))
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
        self._require_fitted()
        if len(images) == 0:
            raise ConfigError("U-Flow got no images")
        names = default_paths(paths, len(images), self.method)
        results = []
        step = max(self.config.feature_batch_size, 1)
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

    def _tensors(self) -> dict[str, torch.Tensor]:
        flow = self._require_fitted()
        tensors = {f"flow.{k}": v for k, v in flow.state_dict().items()}
        for scale, (mean, std) in enumerate(zip(self.feature_mean, self.feature_std)):
            tensors[f"feature_mean.{scale}"] = mean
            tensors[f"feature_std.{scale}"] = std
        for scale, value in enumerate(self.latent_scale):
            tensors[f"latent_scale.{scale}"] = value.reshape(1)
        if self.map_threshold is not None:
            tensors["map_threshold"] = torch.tensor([self.map_threshold], dtype=torch.float64)
        return tensors

    def _header(self) -> dict[str, Any]:
        flow = self._require_fitted()
        return {
            "uflow": self.config.to_json(),
            "channels": flow.channels,
            "grids": flow.grids,
            "epochs_done": self.epochs_done,
            "history": self.history,
        }

    def _write(self, folder: Path, optimizer: torch.optim.Optimizer | None, overwrite: bool) -> Path:
        tensors = self._tensors()
        header = self._header()
        if optimizer is not None:
            state = optimizer.state_dict()
            for index, entries in state["state"].items():
                for key, value in entries.items():
                    tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value)
            header["optimizer_param_groups"] = state["param_groups"]
            header["training"] = _training_settings(self.config)
        return save_model(folder, METHOD, tensors, header, overwrite=overwrite)

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Save the trained model (safetensors + JSON, method "uflow") to ``folder``."""
        return self._write(Path(folder), None, overwrite)

    def _load_state(self, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> None:
        n_scales = len(header["channels"])
        device = resolve_device(self.config.device)
        tensors = {name: value.to(device) for name, value in tensors.items()}
        self.feature_mean = [tensors[f"feature_mean.{s}"] for s in range(n_scales)]
        self.feature_std = [tensors[f"feature_std.{s}"] for s in range(n_scales)]
        self.latent_scale = [tensors[f"latent_scale.{s}"].reshape(()) for s in range(n_scales)
                             if f"latent_scale.{s}" in tensors]
        self.map_threshold = float(tensors["map_threshold"].item()) if "map_threshold" in tensors else None
        flow = self.flow
        if flow is None or flow.channels != list(header["channels"]) or flow.grids != list(header["grids"]):
            flow = UFlowNet(header["channels"], header["grids"], blocks_per_scale=self.config.blocks_per_scale,
                            affine_clamping=self.config.affine_clamping, hidden_ratio=self.config.hidden_ratio,
                            seed=self.config.seed)
        state = {k[len("flow."):]: v for k, v in tensors.items() if k.startswith("flow.")}
        try:
            flow.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ModelFileError(f"U-Flow weights do not match their config: {str(exc).splitlines()[0]}") from None
        self.flow = flow.to(device).eval()
        self.epochs_done = int(header.get("epochs_done", 0))
        self.history = [float(v) for v in header.get("history", [])]

    def _restore_checkpoint(self, folder: Path, optimizer: torch.optim.Optimizer) -> None:
        tensors, header = load_model(folder, METHOD)
        config = header["config"]
        if "training" not in config:
            raise ModelFileError(f"'{folder}' is a saved U-Flow model, not a training checkpoint")
        if config["training"] != _training_settings(self.config):
            raise ModelFileError(
                f"checkpoint '{folder}' was made with other U-Flow settings; resume needs the same "
                "settings (only epochs may differ)"
            )
        if config["channels"] != self.flow.channels or config["grids"] != self.flow.grids:
            raise ModelFileError(f"checkpoint '{folder}' was made from features of another shape")
        self._load_state(tensors, config)
        state: dict[str, Any] = {"state": {}, "param_groups": config["optimizer_param_groups"]}
        for name, value in tensors.items():
            if name.startswith("optimizer."):
                _, index, key = name.split(".", 2)
                state["state"].setdefault(int(index), {})[key] = value
        for group in state["param_groups"]:
            if "betas" in group:
                group["betas"] = tuple(group["betas"])
        optimizer.load_state_dict(state)

    @classmethod
    def load(cls, folder: str | Path, *, backbones: Sequence[Backbone] | None = None, device: str | None = None) -> "UFlow":
        """Load a model written by :meth:`save` (or a checkpoint); other methods' files fail clearly.
        ``device``: where it runs (default: the device saved in its config, ``auto`` for older models)."""
        folder = Path(folder)
        header = read_model_config(folder)
        if header.get("method") != METHOD:
            raise ModelFileError(
                f"'{folder}' holds a '{header.get('method')}' model, not a U-Flow model; load it with "
                f"the '{header.get('method')}' method"
            )
        tensors, header = load_model(folder, METHOD)
        config = header["config"]
        try:
            uflow_config = UFlowConfig.from_json(config["uflow"])
        except (KeyError, TypeError, ConfigError) as exc:
            raise ModelFileError(f"U-Flow model '{folder}' has an invalid config ({exc})") from None
        if device is not None:
            uflow_config = replace(uflow_config, device=device)
        model = cls(uflow_config, backbones=backbones)
        model._load_state(tensors, config)
        return model

