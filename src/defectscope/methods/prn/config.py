"""PRN settings: :class:`PRNConfig` (validated when built, read back from saved models)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from defectscope.errors import ModelFileError
from defectscope.methods.base import MethodConfig
from defectscope.methods.config import DEFAULT_FALSE_ALARM_RATE, FALSE_ALARM_RATE, setting

METHOD = "prn"
FINAL_MODEL_CHOICES = ("large", "held-back", "always", "never")
MAP_MODELS_CHOICES = ("all", "final")
MAP_FLIPS = {"none": ((),), "h": ((), (-1,)), "hv": ((), (-1,), (-2,), (-2, -1))}
"""``map_flips`` -> the views averaged: the tensor dimensions each view flips (-1: left-right,
-2: up-down; ``()``: the image as it is)."""
PASTE_LEVELS = ("absolute", "relative")
PSEUDO_FAMILIES = ("perlin", "thin", "stain", "missing", "uneven")
"""Pseudo-defect families (:mod:`.generate`); the same names as ``generate.PSEUDO_FAMILIES``."""
RENAMED = {"backbone_weights": "weights"}
"""Setting names of older saved models -> their current names."""


@dataclass(frozen=True)
class PRNConfig(MethodConfig):
    """PRN settings (defaults sized for about 20 min per category on 2 cores at 16 epochs; large
    normal sets train 32, about twice as long: 34 min on one loaded thread for the magnetic tiles).

    Attributes:
        backbone: backbone registry name (frozen feature extractor).
        weights: optional local weights file for the backbone (``backbone_weights`` in models
            saved before the name was shared with the other methods).
        image_size: square input size S; maps are S x S (S x n*S with ``tile_aspect``).
        tile_aspect: 0 (every image squashed to S x S) or r >= 1 (default 3): an image whose
            long side is at least r times its short side is cut into nearly square tiles along
            it, each fed at S x S, their maps put back side by side: S x n*S maps (:mod:`.tiles`).
            The default tiles only long images (no shared category has one, so their code path is
            the untiled one); on the long-strip proxy (docs/PRN_LONG.md, dev data built from the
            magnetic tiles) tiles raised pixel AP from 0.02 to 0.11-0.21. Models saved before the
            default changed (2026-12-05) load with their own value; files without one with 0.
        layers: backbone layers, finest first, at strides that double (4/8/16).
        prototype_fraction: prototypes per scale as a fraction of the normal images (at least 1).
        max_prototypes: upper bound on prototypes per scale.
        widths: hidden channels of the head per scale.
        attention_scales: scales (0 = finest) whose residuals get multi-size window attention.
        attention_divisors: attention window sides as divisors of the scale's side (H, H/2, ...).
        epochs: training epochs; None (default): 32 for a large normal set, 16 otherwise. Large
            (:func:`.training.large_set`): one held-back calibration share (186 images or more at
            the default 10 % and 5 %; the sets that also train a final model), or, since
            2026-12-05, a cross-fitted set of long images cut into 186 or more training tiles.
            Longer training raised pixel AP on both large shared sets (magnetic tiles, bottle)
            and on the long-strip proxy, and lowered it on a small paper type
            (docs/PRN_VARIANTS.md, "Longer training for large normal sets"; docs/PRN_LONG.md).
        samples_per_epoch: samples per epoch (None: one per normal image).
        batch_size: training and prediction batch size.
        learning_rate: AdamW peak learning rate (cosine decay to 0 over all steps).
        weight_decay: AdamW weight decay.
        focal_gamma: focal-loss gamma.
        top_k: pixels averaged for the image score.
        smoothing_sigma: Gaussian blur of the anomaly maps, sigma in map pixels (of the
            ``image_size`` x ``image_size`` map; 0 = off), applied before anything reads them:
            image scores, masks, the verdict statistic and its calibration, ONNX export. Fixed at
            training (the calibration scores depend on it); models saved before it existed load
            with 0.
        shares: (normal, real, pseudo) share of each epoch's samples (real: see ``seen_share``).
        pseudo_families: pseudo-defect families drawn uniformly for each pseudo sample
            (:func:`.generate.pseudo_defect`): "perlin", "thin", "stain", "missing", "uneven" (a name
            listed twice is drawn twice as often). Default
            Perlin blobs and thin cracks (docs/PRN_VARIANTS.md: at the full protocol thin cracks
            raised pixel AP on all six paper types, bottle unchanged, the magnetic tiles +5.7 /
            -0.6 points at two seeds).
        paste_level: how a real defect's grey levels are pasted (:func:`.generate.paste_real_defect`):
            "absolute" (its own levels, brightness jitter +-15) or "relative" (its difference to
            its own surroundings, added to the target's level around the paste).
        seen_share: share of the real-defect samples (the ``shares``' second entry) that are a
            labelled defective image itself, mirrored at random (:func:`.generate.flipped_defect`),
            instead of its defect cut out and pasted onto a normal image. Default 0.5 since
            2026-12-06 (docs/PRN_VARIANTS.md, "The labelled defective images themselves"; chosen
            on the shared development data and the long-strip proxy: pixel AP rose on the magnetic
            tiles from 0.57 / 0.52 to 0.77 / 0.78 at seeds 0 / 1, on bottle, on the long-strip
            proxy and on most paper types); 0: pasted only (the behaviour before, and of models
            saved before the setting existed).
        seed: seed for prototypes, initialisation, sampling and generation.
        calibration_fraction: share of the normal images held back from training to calibrate
            the verdict (none when there are fewer than 10 normal images).
        cross_fit_folds: fold models trained instead when that share is too small for a
            conformal cut at ``false_alarm_rate`` (see the module docstring; below 2: never).
        final_model: "large" (default), "held-back", "always" or "never": when to also train a
            model on all normal images for the maps, image scores and masks; the calibrated
            model(s) then only give the verdict (detector module docstring). "held-back": when one
            held-back share calibrates (186 normal images or more by default); "large" (the default
            since 2026-12-05; models saved before keep their "held-back"): for every large set
            (see ``epochs``), so also a cross-fitted set of long images cut into 186 or more
            training tiles. On the shared categories the two are the same (no shared image is
            long enough to be cut); on the long-strip proxy (dev data, docs/PRN_LONG.md) the
            final model raised pixel AP.
        map_models: with a final model, whose maps (and image scores, masks) the detector gives:
            "all" (default): the average of the final model and the model(s) that give the
            verdict, each model weighing the same (with the held-back 10 %: final and held-back
            model half each); "final": the final model alone (the behaviour before 2026-12-04, and
            of models saved before the setting existed). Without a final model it changes nothing.
        map_flips: test-time flips averaged into the maps (and hence image scores and masks):
            "none" (default), "h" (the image and its left-right mirror) or "hv" (also the
            up-down mirror and both: 4 views, 4 times the prediction cost). Each view's map is
            flipped back before the average; long images' tiles (``tile_aspect``) are flipped one
            by one. The verdict's statistic and its calibration scores stay those of the
            unflipped image, so which parts are flagged does not change (a part whose averaged map
            crosses the cut while its statistic does not goes to review, as always; a cut from
            ``calibrate()`` on good images is on the image scores, so it sees the flips). Only
            prediction reads it (training is the same with any value; bench/prn_flips.py sets it
            on a saved model); models saved before it existed load with "none".
        false_alarm_rate: share of normal images the verdict may flag.
    """

    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    image_size: int = setting(256, at_least=32, multiple_of=32)
    tile_aspect: float = setting(3.0, at_least=0.0, note="0: off")
    layers: tuple[str, ...] = ("stride4", "stride8", "stride16")
    prototype_fraction: float = setting(0.1, above=0.0, at_most=1.0)
    max_prototypes: int = setting(32, at_least=1)
    widths: tuple[int, ...] = (32, 48, 64)
    attention_scales: tuple[int, ...] = (1, 2)
    attention_divisors: tuple[int, ...] = (1, 2, 4, 8)
    epochs: int | None = setting(None, at_least=1, note="None: 16, or 32 for large normal sets")
    samples_per_epoch: int | None = setting(192, at_least=1)
    batch_size: int = setting(8, at_least=1)
    learning_rate: float = setting(2e-3, above=0.0)
    weight_decay: float = 1e-4
    focal_gamma: float = 4.0
    top_k: int = setting(100, at_least=1)
    smoothing_sigma: float = setting(0.0, at_least=0.0, note="map pixels; 0: off")
    shares: tuple[float, float, float] = setting((0.5, 0.25, 0.25), at_least=0.0)
    pseudo_families: tuple[str, ...] = setting(("perlin", "thin"), choices=PSEUDO_FAMILIES)
    paste_level: str = setting("absolute", choices=PASTE_LEVELS)
    seen_share: float = setting(0.5, at_least=0.0, at_most=1.0)
    seed: int = 0
    calibration_fraction: float = setting(0.1, at_least=0.0, below=1.0)
    cross_fit_folds: int = 3
    final_model: str = setting("large", choices=FINAL_MODEL_CHOICES)
    map_models: str = setting("all", choices=MAP_MODELS_CHOICES)
    map_flips: str = setting("none", choices=tuple(MAP_FLIPS))
    false_alarm_rate: float = setting(DEFAULT_FALSE_ALARM_RATE, FALSE_ALARM_RATE)
    device: str = "auto"

    def check(self) -> None:
        if 0 < self.tile_aspect < 1:
            self.refuse(f"tile_aspect={self.tile_aspect:g} must be 0 (off) or at least 1")
        if len(self.layers) < 2:
            self.refuse(f"needs at least two backbone layers (multi-scale), got {list(self.layers)}")
        if len(self.widths) != len(self.layers):
            self.refuse(f"widths {list(self.widths)} need one entry per layer {list(self.layers)}")
        if sum(self.shares) <= 0:
            self.refuse(f"shares {list(self.shares)} must not all be 0 (normal, real, pseudo)")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PRNConfig":
        """Inverse of :meth:`to_dict`; unknown keys fail clearly. Older files' names are read
        under the current ones (see :data:`RENAMED`); files from before map smoothing existed
        load with ``smoothing_sigma = 0`` (their maps and calibration had none), files from before
        ``map_models`` with ``"final"`` (their maps were the final model's alone), files from before
        ``paste_level`` with ``"absolute"`` (the only paste there was), files from before ``map_flips``
        with ``"none"`` (no flips), files from before ``tile_aspect`` with 0 (no tiles), files from
        before ``seen_share`` with 0 (pasted real defects only)."""
        older = {"smoothing_sigma": 0.0, "map_models": "final", "paste_level": "absolute", "map_flips": "none", "tile_aspect": 0.0, "seen_share": 0.0}
        values = {**older, **{RENAMED.get(key, key): value for key, value in values.items()}}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelFileError(f"PRN config has unknown settings {unknown}; it was made by another version.")
        converted = {key: tuple(value) if isinstance(value, list) else value for key, value in values.items()}
        return cls(**converted)
