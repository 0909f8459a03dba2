"""The PRN detector: prediction, image scores and the verdict (training: :mod:`.training`;
settings: :mod:`.config`; files: :mod:`.persistence`).

The image score is the mean of the ``top_k`` highest pixel scores (default 100 pixels, about
0.15 % of a 256 x 256 map: large enough to ignore a single hot pixel, small enough for tiny
defects; a long image's S x n*S map of n tiles has a tile's pixels per area, so the same
``top_k`` covers the same area). With ``smoothing_sigma`` > 0 the maps are blurred first (after
long images' tiles are put back together), in :meth:`PRN._image_maps`, the one place every map comes from:
image scores, masks, the verdict statistic and the calibration scores all see the blurred maps.
There too, with ``map_flips``, the detector's maps average the map of the image and of its
mirrored views, each flipped back; the verdict's statistic and the calibration scores are the
unflipped image's (so the flagged parts and the calibration do not change; review still
follows the maps: a part with pixels above the cut is never called normal).

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

``final_model`` (default ``"large"``): also train one model on all normal images with the
full samples per epoch, exactly the model a run without calibration trains (the model of main
before 2026-12-01). The detector's maps, image scores and masks then come from the average of it
and the model(s) that give the verdict (``map_models="all"``, the default since 2026-12-04: with the
held-back share, final and held-back model half each; two models trained on nearly the same
images differ by several points of pixel AP, and their average beat both on the magnetic tiles,
docs/PRN_VARIANTS.md), or from the final model alone (``map_models="final"``), while the verdict
(statistic and cut) stays that of the model trained without the held-back share, or of the fold
models, so the guarantee above is untouched; masks are the maps' pixels above the cut on the
images the verdict flags. A cut from ``calibrate()`` on good images applies to the detector's
image scores (split conformal on images no model saw). ``"held-back"`` trains it
only on the held-back path (186 or more normal images by default); ``"large"`` also when a
cross-fitted set of long images is cut into 186 or more training tiles (``tile_aspect``;
:func:`.training.trains_final_model`; on the long-strip proxy, 90 strips in 450 tiles, it raised
pixel AP from 0.211 / 0.108 to 0.287 / 0.192 at seeds 0 / 1 at 16 epochs, dev data, docs/PRN_LONG.md);
``"always"`` whenever it calibrates, ``"never"`` not at all. The final model trains on the full
samples per epoch, so training takes about twice as long. Measured
(docs/PRN.md, thin cracks of the magnetic tiles with 476 normal tiles, two seeds): the model
trained without the held-back 10 % lost about half its pixel AP against one on all tiles; the
fold average segmented a paper type much better than one model, so cross-fitting keeps it.

Models saved before verdicts existed (or trained on fewer than 10 normal images) have no
calibration scores: they fall back to a probability of 0.5, and the rule says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from defectscope.backbones.base import Backbone
from defectscope.device import resolve_device
from defectscope.errors import ConfigError
from defectscope.memory import estimate_bytes
from defectscope.methods.base import Detector, Result, default_paths
from defectscope.methods.holdout import MIN_POOL as MIN_CALIBRATION_POOL
from defectscope.methods.prn import persistence, tiles, training
from defectscope.methods.prn.config import MAP_FLIPS, METHOD, PRNConfig
from defectscope.methods.prn.features import multiscale_features
from defectscope.methods.prn.model import PRNHead, top_k_mean
from defectscope.methods.smoothing import gaussian_blur
from defectscope.methods.verdict import UNCALIBRATED, Threshold, conformal_count, conformal_threshold, pixel_masks, with_verdict
from defectscope.progress import Progress

__all__ = ["METHOD", "PRN", "PRNConfig"]

FALLBACK_PROBABILITY = 0.5


def image_scores(maps: Sequence[torch.Tensor], top_k: int) -> torch.Tensor:
    """Each map's mean of its ``top_k`` highest pixels (maps may differ in shape: long images)."""
    if len({tuple(m.shape) for m in maps}) == 1:
        return top_k_mean(torch.stack(list(maps)), top_k)
    return torch.cat([top_k_mean(m[None], top_k) for m in maps])


def build_backbone(config: PRNConfig) -> Backbone:
    """The backbone of ``config`` (all chosen layers, at ``image_size``)."""
    from defectscope.backbones import get_backbone

    return get_backbone(
        config.backbone, weights=config.weights, image_size=config.image_size, layers=list(config.layers),
        device=resolve_device(config.device),
    )


class PRN(Detector):
    """Prototypical residual network (supervised with a few real anomalies plus generated ones).

    Args:
        config: settings; see :class:`PRNConfig`.
        backbone: an already built backbone (default: built from ``config`` via the registry).
    """

    method = METHOD
    probability_scores = True
    config: PRNConfig

    def __init__(self, config: PRNConfig | None = None, *, backbone: Backbone | None = None) -> None:
        super().__init__(config or PRNConfig())
        self._backbone = backbone
        self.heads: list[PRNHead] = []
        self.final_head: PRNHead | None = None
        self.model_info: dict[str, Any] = {}
        self.losses: list[float] = []
        self.held_out_scores: np.ndarray | None = None

    @property
    def backbone(self) -> Backbone:
        """The frozen backbone (built on first use)."""
        if self._backbone is None:
            self._backbone = build_backbone(self.config)
        return self._backbone

    def features(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """The multi-scale features of RGB uint8 images (:func:`.features.multiscale_features`)."""
        return multiscale_features(self.backbone, self.backbone.preprocess(list(images)))

    def build_head(self, info: dict[str, Any]) -> PRNHead:
        """An untrained head for features described by ``info`` (channels, grids, prototypes)."""
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
        """Train on normal images and real (image, mask) anomalies; checkpoints every epoch
        (see :func:`.training.fit`)."""
        if self.config.tile_aspect > 0:  # normal images are cut in training.fit (calibration scores whole images)
            anomalies = tiles.split_anomalies(anomalies, self.config.tile_aspect)
        training.fit(self, normal_images, anomalies, progress=progress, checkpoint_dir=checkpoint_dir, resume=resume)
        return self

    def memory_plan(self) -> tuple[int, int]:
        return self.config.image_size, self.backbone.size_unit

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
        side = backbone.grid[0] * size // self.config.image_size
        channels = sum(backbone.layer_channels)
        return estimate_bytes(count=count, image_size=size, batch_size=self.config.batch_size,
                              feature_floats=channels * side * side // 2)

    def map_heads(self) -> list[PRNHead]:
        """The heads whose (averaged) map is the detector's anomaly map: with a final model, it
        and the verdict's model(s) (``map_models="all"``) or it alone (``"final"``); else the one
        model or the fold models."""
        heads = self.require_heads()
        if self.final_head is None:
            return heads
        return [self.final_head, *heads] if self.config.map_models == "all" else [self.final_head]

    def anomaly_maps(self, images: Sequence[np.ndarray], progress: Progress | None = None) -> torch.Tensor:
        """Pixel anomaly probabilities (N, H, W) for RGB uint8 images: the average of
        :meth:`map_heads`' maps (over the ``map_flips`` views); S x S, or S x n*S for long images
        of n tiles (:mod:`.tiles`)."""
        return self.maps_of(self.map_heads(), images, progress, flips=self.config.map_flips)

    def maps_of(
        self, heads: Sequence[PRNHead], images: Sequence[np.ndarray], progress: Progress | None = None, *, flips: str = "none",
    ) -> torch.Tensor:
        """The averaged map of ``heads`` (unflipped unless ``flips`` names views of :data:`MAP_FLIPS`)."""
        return self._maps_and_fold_maps(heads, None, images, progress, flips=flips)[0]

    def scores_of(self, heads: Sequence[PRNHead], images: Sequence[np.ndarray]) -> np.ndarray:
        """Image scores of ``images`` under the average of ``heads``: the path :meth:`predict`
        scores by (each image's own map, then top-k), so calibration scores match test scores."""
        return image_scores(self._image_maps(heads, None, images)[0], self.config.top_k).cpu().numpy().astype(np.float64)

    def _maps_and_fold_maps(
        self,
        heads: Sequence[PRNHead],
        fold_heads: Sequence[PRNHead] | None,
        images: Sequence[np.ndarray],
        progress: Progress | None = None,
        *,
        flips: str = "none",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_image_maps` as batches (N, H, W) (:func:`.tiles.batch`)."""
        maps, fold_maps = self._image_maps(heads, fold_heads, images, progress, flips=flips)
        size = self.config.image_size
        return tiles.batch(maps, size), (None if fold_maps is None else tiles.batch(fold_maps, size))

    def _image_maps(
        self,
        heads: Sequence[PRNHead],
        fold_heads: Sequence[PRNHead] | None,
        images: Sequence[np.ndarray],
        progress: Progress | None = None,
        *,
        flips: str = "none",
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Each image's averaged map of ``heads`` and, when given, of ``fold_heads`` (one backbone
        pass per batch for both), smoothed. Long images are cut into tiles first with
        ``tile_aspect`` and their tiles' maps put side by side (:func:`.tiles.stitch_each`).
        ``flips`` (a key of :data:`MAP_FLIPS`): the map of ``heads`` is the mean over those views
        of the input (each tile's), each view's map flipped back; ``fold_heads``' map is always the
        unflipped input's."""
        views = MAP_FLIPS[flips]
        shapes = [np.asarray(image).shape for image in images]
        counts = [1] * len(images)
        if self.config.tile_aspect > 0:
            images, counts = tiles.split_images(images, self.config.tile_aspect)
        maps, fold_maps = [], []
        step = self.config.batch_size
        with torch.no_grad():
            for start in range(0, len(images), step):
                batch = self.backbone.preprocess(list(images[start : start + step]))
                view_maps = []
                for dims in views:
                    features = multiscale_features(self.backbone, batch.flip(dims) if dims else batch)
                    each: dict[int, torch.Tensor] = {}  # a head in both lists runs once
                    for head in [*heads, *(() if dims else fold_heads or ())]:
                        if id(head) not in each:
                            each[id(head)] = torch.sigmoid(head.eval()(*features))[:, 0]
                    view_map = torch.stack([each[id(head)] for head in heads]).mean(dim=0)
                    view_maps.append(view_map.flip(dims) if dims else view_map)
                    if fold_heads and not dims:
                        fold_maps.append(torch.stack([each[id(h)] for h in fold_heads]).mean(dim=0))
                maps.append(view_maps[0] if len(view_maps) == 1 else torch.stack(view_maps).mean(dim=0))
                if progress is not None:
                    progress("predict", min(start + step, len(images)), len(images))
        # The one place maps are smoothed: scores, masks, verdicts and calibration all read them here.
        sigma = self.config.smoothing_sigma

        def per_image(tile_maps: torch.Tensor) -> list[torch.Tensor]:
            joined = tiles.stitch_each(tile_maps, counts, shapes)
            if len({tuple(m.shape) for m in joined}) == 1:
                return list(gaussian_blur(torch.stack(joined), sigma))
            return [gaussian_blur(m[None], sigma)[0] for m in joined]

        return per_image(torch.cat(maps)), (per_image(torch.cat(fold_maps)) if fold_heads else None)

    def threshold(self) -> Threshold:
        """The verdict's probability cut (see the module docstring); good-image calibration first."""
        if self.calibration is not None:
            return self.calibration
        alpha = self.config.false_alarm_rate
        scores = self.held_out_scores
        if scores is None or scores.size == 0:
            return Threshold(
                FALLBACK_PROBABILITY,
                f"{UNCALIBRATED} fallback: probability {FALLBACK_PROBABILITY} (no calibration scores: a model saved before "
                f"verdicts existed, fewer than {MIN_CALIBRATION_POOL} normal training images, or calibration turned off)",
            )
        cross_fitted = self.model_info.get("calibration") == training.CROSS_FIT
        if cross_fitted:
            source = f"cross-fitted normal training images (each scored by the one of {len(self.heads)} fold models that never saw it)"
        else:
            source = "held-back normal training images"
        if scores.size < conformal_count(alpha):
            return Threshold(float(scores.max()), f"largest score of {scores.size} {source} (too few for a false-alarm rate of {alpha:g})")
        # No guard band on cross-fitted scores: each fold model saw a third fewer normal images
        # than the detector that scores new parts, so its held-out scores already lie high
        # (pa_btn01_rl: all 24 above every normal test image; docs/PRN_MAPS.md).
        return conformal_threshold(scores, alpha, source=source, guard=not cross_fitted, probability=self.probability_scores)

    def predict(
        self, images: Sequence[np.ndarray], paths: Sequence[str] | None = None, progress: Progress | None = None
    ) -> Result:
        """Anomaly maps (N, S, S; S x n*S for long images of n tiles, :mod:`.tiles`), image
        scores (mean of the top-k pixel scores of each image's own map), verdicts and masks from
        :meth:`threshold`."""
        self.require_fitted()
        if len(images) == 0:
            raise ConfigError("PRN predict() was given no images.")
        names = default_paths(paths, len(images), self.method)
        threshold = self.threshold()
        # With a final model the fold models give the verdict while their own scores set the cut;
        # with map_flips the verdict reads the unflipped maps its calibration scores came from.
        flips = self.config.map_flips
        fold_verdict = self.calibration is None and (self.final_head is not None or flips != "none")
        each, fold_each = self._image_maps(
            self.map_heads(), self.heads if fold_verdict else None, list(images), progress, flips=flips
        )
        maps = tiles.batch(each, self.config.image_size)
        result = Result(
            paths=names,
            image_scores=image_scores(each, self.config.top_k).cpu().numpy().astype(np.float64),
            anomaly_maps=maps.cpu().numpy().astype(np.float32),
            masks=pixel_masks(maps.cpu().numpy(), threshold),
            settings=self.settings(),
        )
        if fold_each is None:
            return with_verdict(result, threshold)
        statistic = image_scores(fold_each, self.config.top_k).cpu().numpy().astype(np.float64)
        result = with_verdict(result, threshold, statistic)
        if self.final_head is not None:  # without one (map_flips alone brings us here) masks stay as without flips
            result.masks = result.masks & result.is_anomalous[:, None, None]
        return result

    def save(self, folder: str | Path, *, overwrite: bool = False) -> Path:
        """Write the trained model (safetensors + JSON) to ``folder``; fold models' weights are
        prefixed ``model<i>.``."""
        return persistence.save(self, folder, overwrite=overwrite)

    @classmethod
    def load(cls, folder: str | Path, *, backbone: Backbone | None = None, device: str | None = None) -> "PRN":
        """Load a model written by :meth:`save`; a file from another method or version fails clearly.
        ``device``: where it runs (default: the device saved in its config, ``auto`` for older models)."""
        return persistence.load(folder, device, lambda config: cls(config, backbone=backbone))
