"""U-Flow settings: :class:`UFlowConfig` (validated when built, read back from saved models)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from defectscope.errors import ModelFileError
from defectscope.methods.base import MethodConfig
from defectscope.methods.config import setting
from defectscope.methods.uflow import extent

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
        train_batch_size: flow training batch size (``batch_size`` in models saved before the
            name was freed for the backbone batch that every method calls ``batch_size``).
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
        batch_size: images per backbone call (``--batch-size``, as for the other methods;
            ``feature_batch_size`` in older saved models).
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
    image_size: int = setting(256, at_least=1)
    layers: tuple[str, ...] = setting(("stride4", "stride8", "stride16"))
    input_sizes: tuple[int, ...] | None = setting(None, at_least=1)
    blocks_per_scale: int = setting(4, at_least=1)
    affine_clamping: float = setting(2.0, above=0.0)
    hidden_ratio: float = setting(1.0, above=0.0)
    epochs: int = setting(30, at_least=1)
    train_batch_size: int = setting(16, at_least=1)
    min_epoch_samples: int = setting(200, at_least=1)
    learning_rate: float = setting(2e-3, above=0.0)
    lr_decay: float = setting(0.97, above=0.0, at_most=1.0)
    weight_decay: float = 1e-5
    seed: int = 0
    nfa_method: str = setting("region", choices=("region", "block", "none"))
    epsilon: float = setting(1.0, above=0.0)
    max_region_fraction: float = setting(0.5, above=0.0, at_most=1.0)
    block_window: int = setting(3, at_least=1, odd=True)
    block_alpha: float = setting(0.05, above=0.0, below=1.0)
    batch_size: int = setting(16, at_least=1)
    calibration_fraction: float = setting(0.1, at_least=0.0, below=1.0)
    smoothing_sigma: float = setting(4.0, at_least=0.0)
    mask_extent: str = setting("calibrated", choices=("calibrated", "nfa"))
    extent_quantile: float = setting(0.999, above=0.0, at_most=1.0)
    extent_cut_rule: str = setting("otsu", choices=("otsu", "height"))
    extent_cut: float = setting(0.3, at_least=0.0, below=1.0)
    device: str = "auto"

    def check(self) -> None:
        if self.input_sizes is not None and len(self.input_sizes) != len(self.layers):
            self.refuse(
                f"input_sizes {list(self.input_sizes)} must be one positive integer per layer ({len(self.layers)} layers)"
            )

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
        ``extent_cut_rule = "height"``, so they give the maps and masks they gave then; their
        ``batch_size`` / ``feature_batch_size`` are read as ``train_batch_size`` / ``batch_size``."""
        if "feature_batch_size" in data:  # saved before the batch sizes were renamed
            data = dict(data)
            data["train_batch_size"] = data.pop("batch_size", 16)
            data["batch_size"] = data.pop("feature_batch_size")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFileError(f"U-Flow config has unknown settings {unknown}")
        return cls(**{"smoothing_sigma": 0.0, "mask_extent": "nfa", "max_region_fraction": 1.0,
                      "extent_quantile": 1.0, "extent_cut": 0.0, "extent_cut_rule": "height", **data})
