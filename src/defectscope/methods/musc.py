"""MuSc: zero-shot anomaly classification and segmentation by mutual scoring.

The unlabeled batch scores itself: a normal patch finds close patches in many other images of
the batch, a defective patch in few. Three pure tensor steps (in :mod:`defectscope.methods.mutual`,
importable from here too), each usable on its own:

- :func:`lnamd` — local neighbourhood aggregation with multiple degrees (per layer, per r);
- :func:`mutual_scores` — the mutual scoring mechanism (MSM) on one (N, L, C) feature set;
- :func:`rscin` — re-scoring image scores over a constrained image-level neighbourhood.

:class:`MuSc` chains them on top of a backbone and returns a :class:`Result`.

How MSM is computed exactly and what it costs: :mod:`defectscope.methods.mutual`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from defectscope.backbones import get_backbone
from defectscope.backbones._common import input_shape as aspect_input_shape
from defectscope.device import resolve_device
from defectscope.errors import ConfigError
from defectscope.memory import estimate_bytes
from defectscope.methods import canonical, partcrop, pose
from defectscope.methods.bank import reference_scores, sampled_patch_scores, use_bank
from defectscope.methods.distributed import dask_patch_scores
from defectscope.methods.features import extract_in_batches
from defectscope.methods.mutual import (  # noqa: F401  (moved to mutual.py; kept importable from here)
    _drop_one_interval_mean,
    _interval_reduce,
    _match_interior,
    border_classes,
    calibrate_border,
    interval_bounds,
    interval_mean,
    lnamd,
    MuScScores,
    mutual_scores,
    nearest_similarities,
    rscin,
    side_classes,
    similarities_to_distances,
    to_finest_grid,
)
from defectscope.methods.base import Detector, Result, default_paths
from defectscope.methods.smoothing import equalise_edges, gaussian_blur, upsample
from defectscope.methods.labelfree import label_free_threshold
from defectscope.methods.verdict import (
    conformal_threshold,
    decide,
    in_review,
    pixel_masks,
    require_good_images,
)
from defectscope.methods.zeroshot_config import MuScConfig  # noqa: F401  (the registry names it here)
from defectscope.progress import Progress as ProgressCallback

SMALL_BATCH_WARNING = 20


def check_batch_size(n: int, what: str = "mutual scoring", minimum: int = 2) -> None:
    """Refuse batches below ``minimum`` images; warn below about SMALL_BATCH_WARNING."""
    if n < minimum:
        raise ConfigError(f"{what} needs at least {minimum} images, got {n}")
    if n < SMALL_BATCH_WARNING:
        warnings.warn(
            f"{what} of only {n} images: results are more reliable with about "
            f"{SMALL_BATCH_WARNING} or more images of the same product",
            stacklevel=3,
        )


def tile_fractions(tiles: int, overlap: float) -> tuple[float, float]:
    """(tile side, step between tiles) as fractions of the image side for ``tiles`` per side."""
    side = 1.0 / (tiles - (tiles - 1) * overlap)
    return side, side * (1.0 - overlap)


def crop_tile(image: np.ndarray, tiles: int, overlap: float, row: int, col: int) -> np.ndarray:
    """The tile at (row, col) of an image cut into ``tiles`` x ``tiles`` overlapping tiles."""
    side, step = tile_fractions(tiles, overlap)
    height, width = image.shape[:2]
    top, left = int(round(row * step * height)), int(round(col * step * width))
    bottom, right = int(round((row * step + side) * height)), int(round((col * step + side) * width))
    return np.ascontiguousarray(image[top:max(bottom, top + 1), left:max(right, left + 1)])


def tile_boxes(tile_shape: tuple[int, int], tiles: int, overlap: float) -> list[tuple[int, int, int, int]]:
    """(top, bottom, left, right) of every tile's map on the stitched map, row by row, for tile
    maps of ``tile_shape``; the last box ends at the stitched map's size."""
    height, width = tile_shape
    rows = [int(round(k * (1.0 - overlap) * height)) for k in range(tiles)]
    cols = [int(round(k * (1.0 - overlap) * width)) for k in range(tiles)]
    return [(top, top + height, left, left + width) for top in rows for left in cols]


def set_progress(progress: ProgressCallback | None, count: int, sets: int) -> list[Callable[[int], None] | None]:
    """One callback per feature set for its pairwise work on a batch of ``count`` images, all
    ``sets`` counted as one "scoring" stage (pairs done of every set's pairs); Nones without
    ``progress``."""
    pairs = count * (count - 1) // 2
    if progress is None:
        return [None] * sets
    return [lambda done, base=index * pairs: progress("scoring", base + done, pairs * sets) for index in range(sets)]


@dataclass
class ReferenceBank:
    """Known-good images for reference mode: their LNAMD feature sets (one (M, L, C) per layer
    and degree), the grid, and the input (height, width) they were resized to (None: the
    backbone's square input). Images scored against the bank are resized to that same input, so
    that an image's score depends on the image and the good set only, never on the batch it
    comes in (with ``keep_aspect`` a batch's input follows its own median aspect)."""

    feature_sets: list[torch.Tensor]
    grid: tuple[int, int]
    shape: tuple[int, int] | None = None


class MuSc(Detector):
    """Zero-shot detector: scores an unlabeled batch by mutual scoring (no fit needed).

    After :meth:`calibrate` on known-good images it works in reference mode: new images are scored
    against the good images instead of against each other, and the verdict threshold is
    calibrated on the good images (split-conformal).
    """

    method = "musc"
    reference_bank = True
    """Large batches (see ``MuScConfig.max_references``) are scored against a sampled bank."""
    config: MuScConfig

    def __init__(self, config: MuScConfig | None = None, backbone=None) -> None:
        super().__init__(config or MuScConfig())
        self._backbone = backbone
        self.reference: ReferenceBank | None = None
        self.reference_crop: partcrop.CropPlan | None = None

    @property
    def backbone(self):
        if self._backbone is None:
            cfg = self.config
            layers = list(cfg.layers) if cfg.layers is not None else None
            self._backbone = get_backbone(
                cfg.backbone, weights=cfg.weights, image_size=cfg.image_size, layers=layers, border=cfg.border,
                border_pad=cfg.border_pad, device=resolve_device(cfg.device),
            )
        return self._backbone

    def calibrate(self, images: Sequence[np.ndarray], false_alarm_rate: float, progress: ProgressCallback | None = None) -> "MuSc":
        """Reference mode: keep the features of known-good ``images`` as the reference bank and
        calibrate the verdict on them at ``false_alarm_rate`` (each good image scored
        leave-one-out against the others). Without it the detector is zero-shot (the batch
        scores itself)."""
        if self.config.canonical_pose == "on":
            raise ConfigError("canonical_pose=on turns the images of a batch scored by itself; reference mode (good images) scores them as they are: use canonical_pose=auto or off")
        self.config = replace(self.config, false_alarm_rate=false_alarm_rate)
        require_good_images(len(images), self.config.false_alarm_rate)
        if self.config.tiles != 1:
            raise ConfigError("reference mode scores whole images only: use tiles=1 with good images")
        images = self.crop_good(images)
        shape = self.input_shape(images)
        sets, grid, _ = self.feature_sets(images, progress, native_grids=self.config.native_grids, shape=shape)
        scores = self._combine([mutual_scores(s, self.config.lower, self.config.upper) for s in sets], grid)
        maxima = self.maps_from_patch_scores(scores, grid).flatten(1).amax(dim=1).cpu().numpy()
        self.good_scores = maxima.astype(np.float64)  # the calibration scores (map maxima, leave-one-out)
        self.calibration = conformal_threshold(maxima, self.config.false_alarm_rate, source="good images (leave-one-out)")
        self.reference = ReferenceBank(sets, grid, shape)
        return self

    def backbone_facts(self) -> dict[str, Any]:
        backbone = self.backbone
        return {"image_size": backbone.image_size, "layers": list(backbone.layer_names)}

    def memory_plan(self) -> tuple[int, int]:
        backbone = self.backbone
        return int(backbone.image_size), int(backbone.size_unit)

    def _tables_held(self, sets: int) -> int:
        """N x N x L tables alive at once: similarities, distances and their sorted part."""
        return 3

    def _banked(self, count: int) -> bool:
        """True when a batch of ``count`` images is scored against a sampled reference bank."""
        return self.reference_bank and use_bank(count, self.config.max_references)

    def memory_needed(self, count: int, image_size: int | None = None) -> int:
        backbone = self.backbone
        size = image_size or backbone.image_size
        side = max(1, backbone.grid[0] * size // backbone.image_size)
        channels = list(backbone.layer_channels)
        degrees = len(self.config.degrees)
        patches = side * side
        return estimate_bytes(
            count=count,
            image_size=size,
            batch_size=self.config.batch_size,
            feature_floats=sum(channels) * patches * (degrees if self._banked(count) else 1 + degrees),
            patches=patches,
            tables=0 if self._banked(count) else self._tables_held(len(channels) * degrees),
        )

    def input_shape(self, images: Sequence[np.ndarray]) -> tuple[int, int] | None:
        """The batch's input (height, width) with ``keep_aspect``; None for the square input."""
        if not self.config.keep_aspect:
            return None
        backbone = self.backbone
        return aspect_input_shape(images, backbone.image_size, backbone.size_unit)

    def feature_sets(
        self, images: Sequence[np.ndarray], progress: ProgressCallback | None = None, *, native_grids: bool = False,
        shape: tuple[int, int] | None | str = "batch",
    ) -> tuple[list[torch.Tensor], tuple[int, int], torch.Tensor]:
        """Backbone features -> LNAMD feature sets, one (N, L, C) per (layer, degree), and the
        finest grid. With ``native_grids`` each set keeps its layer's own grid (scores are
        brought to the finest grid by :func:`to_finest_grid`). ``shape``: the input (height,
        width), None for the backbone's square input, "batch" (default) for :meth:`input_shape`
        of these images."""
        if shape == "batch":
            shape = self.input_shape(images)
        features = extract_in_batches(
            self.backbone, images, self.config.batch_size, progress, common_grid=not native_grids, shape=shape
        )
        sets = []
        for layer in features.layers:
            sets.extend(lnamd(layer, self.config.degrees))
        return sets, features.grid, features.embedding

    def patch_scores(self, images: Sequence[np.ndarray], progress: ProgressCallback | None = None) -> MuScScores:
        """Features and MSM patch scores (N, L), averaged over layers and degrees; what the batch
        decided while it was scored (the MSM interval...) in the scores' ``facts``."""
        n = len(images)
        check_batch_size(n)

        if pose.uses_pose_options(self.config):
            if self.config.scheduler is not None:
                raise ConfigError("rotations, self_term and nearest_images score a batch in this process: use them without a scheduler")
            if not self._banked(n):
                return pose.pose_patch_scores(self, images, progress)
            if self.config.rotations != 1 or self.config.self_term != "off":
                raise ConfigError("rotations and self_term score a batch exactly: use them with max_references=None or a batch below the bank size (the bank takes nearest_images)")
        if self.config.scheduler is not None or self._banked(n):
            elsewhere = dask_patch_scores if self.config.scheduler is not None else sampled_patch_scores
            scores = elsewhere(self, images, progress)
            scores.patch_scores = calibrate_border(scores.patch_scores, scores.grid, self.config.border_depth)
            return scores
        sets, grid, embeddings = self.feature_sets(images, progress, native_grids=self.config.native_grids)
        lower, upper, facts = pose.batch_interval(self.config, embeddings)
        accumulated = torch.zeros(n, grid[0] * grid[1], device=sets[0].device)
        for feature_set, report in zip(sets, set_progress(progress, n, len(sets))):
            accumulated += to_finest_grid(mutual_scores(feature_set, lower, upper, progress=report), grid)
        patch_scores = calibrate_border(accumulated / len(sets), grid, self.config.border_depth)
        return MuScScores(patch_scores, grid, embeddings, sets, facts)

    def _combine(self, per_set: Sequence[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """Patch scores of each feature set -> their mean on the finest ``grid``, border-calibrated."""
        mean = torch.stack([to_finest_grid(scores, grid) for scores in per_set]).mean(dim=0)
        return calibrate_border(mean, grid, self.config.border_depth)

    def maps_from_patch_scores(self, patch_scores: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(N, L) patch scores on ``grid`` -> (N, H, W) anomaly maps at the input resolution
        (the grid times the finest layer's stride), blurred; with the border rule on
        (``border_depth`` > 0) the blur's larger swing at the edges is evened out
        (:func:`defectscope.methods.smoothing.equalise_edges`)."""
        backbone = self.backbone
        stride = backbone.image_size / backbone.grid[0]
        size = (int(round(grid[0] * stride)), int(round(grid[1] * stride)))
        maps = gaussian_blur(upsample(patch_scores, grid, size), self.config.smoothing_sigma)
        if self.config.border_depth > 0:
            maps = equalise_edges(maps, grid, self.config.smoothing_sigma)
        return maps

    def predict(
        self,
        images: Sequence[np.ndarray],
        paths: Sequence[str] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Result:
        """Score the batch: anomaly maps, image scores (max of map, then RsCIN); with ``tiles``
        the stitched maps of the tile positions (see :func:`tile_boxes`); verdicts. In reference
        mode (after :meth:`calibrate`) against the good images, image score = max of map."""
        if self.reference is not None:
            return self.reference_cropped(images, paths, progress)
        return self.score_cropped(images, paths, progress)

    def crop_good(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Reference mode's ``part_crop``: the plan made on the good ``images`` (the decision and
        the square's side), kept for the images scored against them; the good images cut to
        it (as they are when it does not crop). The good images may differ in size (they are
        never pasted): the side scales with each image's short side."""
        self.reference_crop = partcrop.plan_batch(images, self.config.part_crop, one_size=False)
        return self.reference_crop.crop(images) if self.reference_crop.active else list(images)

    def reference_cropped(self, images: Sequence[np.ndarray], paths: Sequence[str] | None, progress: ProgressCallback | None) -> Result:
        """:meth:`predict_against_reference` behind the good images' crop plan (:meth:`crop_good`):
        each image cut to a square of the good images' side around its own part, the maps
        pasted back into its frame; the plan's facts in ``extras["part_crop"]``."""
        plan = self.reference_crop
        if plan is None or self.config.part_crop == "off":
            return self.predict_against_reference(images, paths, progress)
        if not plan.active:
            result = self.predict_against_reference(images, paths, progress)
            return replace(result, extras=plan.record(result.extras))
        follow = plan.follow(images, "good images")
        result = self.predict_against_reference(follow.crop(images), paths, progress)
        return follow.paste(result, *partcrop.frame_shape(images))

    def score_cropped(self, images: Sequence[np.ndarray], paths: Sequence[str] | None, progress: ProgressCallback | None) -> Result:
        """:meth:`score_batch` behind ``part_crop`` (:mod:`defectscope.methods.partcrop`): when the
        batch asks for it, the crops around each part are scored and the maps pasted back into
        the full images' frame; the decision goes to ``extras["part_crop"]`` and ``batch_facts``.
        Images of mixed sizes are cropped too (the side a share of each one's short side), their
        maps pasted into the frame of the most common size (:func:`partcrop.frame_shape`)."""
        plan = partcrop.plan_batch(images, self.config.part_crop, one_size=False)
        if not plan.active:
            result = self.score_posed(images, paths, progress)
            return result if self.config.part_crop == "off" else replace(result, extras=plan.record(result.extras))
        return plan.paste(self.score_posed(plan.crop(images), paths, progress), *partcrop.frame_shape(images))

    def score_posed(self, images: Sequence[np.ndarray], paths: Sequence[str] | None, progress: ProgressCallback | None) -> Result:
        """:meth:`score_batch` behind ``canonical_pose`` (:mod:`defectscope.methods.canonical`): when
        the batch asks for it, each image is turned to the batch's canonical orientation, the
        turned images are scored as a batch and each map is turned back into its image's frame;
        the decision goes to ``extras["canonical_pose"]`` and ``batch_facts``. With "off" the
        batch is scored as it is and nothing is recorded."""
        if self.config.canonical_pose == "off":
            return self.score_batch(images, paths, progress)
        plan = canonical.plan_batch(images, self.config.canonical_pose, self.config.canonical_fold, self.config.canonical_expand)
        if not plan.active:
            result = self.score_batch(images, paths, progress)
            return replace(result, extras=plan.record(result.extras))
        shapes = [tuple(int(v) for v in np.asarray(image).shape[:2]) for image in images]
        turned = plan.warp(images)
        if self.config.tiles == 1:
            scores = self.patch_scores(turned, progress)
            patch_scores = scores.patch_scores.clone()
            # the mirrored corners of a turned image (no source pixel) hold its lowest score, so
            # their seams do not spread into the map by the smoothing
            for index, (turn, shape, scale) in enumerate(zip(plan.turns, shapes, plan.each_scale)):
                inside = torch.from_numpy(canonical.inside_cells(shape, scores.grid, turn, scale, plan.expand, canonical.MARGIN).reshape(-1)).to(patch_scores.device)
                if bool(inside.any()) and not bool(inside.all()):
                    patch_scores[index, ~inside] = patch_scores[index, inside].min()
            maps, embeddings, grid, facts = self.maps_from_patch_scores(patch_scores, scores.grid), scores.embeddings, scores.grid, scores.facts
            del scores, patch_scores  # the turned pass's features go before the unturned pass's (memory)
        else:
            maps, embeddings, grid, facts = self.tiled_maps(turned, progress)
        # the batch's own facts (the MSM interval, pose.batch_interval) are the turned pass's, which
        # gives the image scores; the corners' second pass below records its own under corner_fill
        # the maps go back to each image's frame before the image scores, the verdict and the
        # masks are taken: the turned images' mirrored corners never decide an image's score
        frame = tuple(int(v) for v in maps.shape[-2:])
        back, _ = canonical.unturn_maps(maps.cpu().numpy(), None, plan.turns, shapes, plan.scales, plan.expand)
        covered = canonical.covered_frames(plan.turns, shapes, frame, plan.scales, plan.expand)
        score_maps, unturned_facts = None, None
        if canonical.FILL != "edge" and not covered.all():
            # the corners the turn cut off are scored by a second pass over the unturned batch
            # (the default path), brought to the turned maps' scale where both passes see
            plain, unturned_facts = self.plain_maps(images, progress)
            filled = canonical.fill_corners(back, plain, covered, canonical.FILL, canonical.FILL_BLEND)
            if canonical.FILL_SCORE == "turned":
                score_maps = torch.from_numpy(back).to(maps.device)
            back = filled
        plan.facts["corner_fill"] = {
            "fill": canonical.FILL if not covered.all() else "none needed",
            "image_score": canonical.FILL_SCORE,
            "blend": canonical.FILL_BLEND,
            "cut_off_share": round(float(1.0 - covered.mean()), 4),
        }
        if unturned_facts is not None:  # the second pass's own facts (its pixels fill the maps)
            plan.facts["corner_fill"]["unturned_pass_facts"] = unturned_facts
        result = self.result_from_maps(torch.from_numpy(back).to(maps.device), embeddings, grid, paths, score_maps=score_maps, facts=facts)
        return replace(result, extras=plan.record(result.extras))

    def plain_maps(self, images: Sequence[np.ndarray], progress: ProgressCallback | None) -> tuple[np.ndarray, dict[str, Any]]:
        """(N, H, W) maps of the batch scored as it is (the default path's maps, before the image
        scores) and that pass's facts: :meth:`score_posed`'s second pass for the corners a turn
        cuts off."""
        if self.config.tiles == 1:
            scores = self.patch_scores(images, progress)
            return self.maps_from_patch_scores(scores.patch_scores, scores.grid).cpu().numpy(), scores.facts
        maps, _, _, facts = self.tiled_maps(images, progress)
        return maps.cpu().numpy(), facts

    def score_batch(self, images: Sequence[np.ndarray], paths: Sequence[str] | None, progress: ProgressCallback | None) -> Result:
        """Zero-shot scoring of the batch by itself (:meth:`predict` without good images)."""
        if self.config.tiles == 1:
            scores = self.patch_scores(images, progress)
            return self.result_from_patch_scores(scores.patch_scores, scores.grid, scores.embeddings, paths, facts=scores.facts)
        maps, embeddings, grid, facts = self.tiled_maps(images, progress)
        return self.result_from_maps(maps, embeddings, grid, paths, facts=facts)

    def tiled_maps(
        self, images: Sequence[np.ndarray], progress: ProgressCallback | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int], dict[str, Any]]:
        """Score each tile position as its own batch and stitch: (N, H, W) maps, (N, D) mean tile
        embeddings, the stitched patch grid (tile grid times the span in tiles), and the facts:
        each tile position decides for itself (its own MSM interval...), so every position's
        facts are kept, row by row, as ``{"tiles": [{"tile": [row, col], ...}, ...]}`` (empty
        when no position decided anything)."""
        tiles, overlap = self.config.tiles, self.config.tile_overlap
        positions = [(row, col) for row in range(tiles) for col in range(tiles)]
        per_tile = []
        for number, (row, col) in enumerate(positions):
            crops = [crop_tile(image, tiles, overlap, row, col) for image in images]
            report = None
            if progress is not None:
                report = lambda stage, done, total, k=number: progress(f"tile {k + 1}/{len(positions)}: {stage}", done, total)  # noqa: E731
            scores = self.patch_scores(crops, report)
            per_tile.append(scores.facts)
            tile_maps = self.maps_from_patch_scores(scores.patch_scores, scores.grid)
            if number == 0:
                shape, grid = tuple(tile_maps.shape[-2:]), scores.grid
                boxes = tile_boxes(shape, tiles, overlap)
                full = (boxes[-1][1], boxes[-1][3])
                canvas, counts = torch.zeros(len(images), *full, device=tile_maps.device), torch.zeros(full, device=tile_maps.device)
                embeddings = torch.zeros_like(scores.embeddings)
            if tuple(tile_maps.shape[-2:]) != shape:  # the crops' aspect rounded to another input shape
                tile_maps = F.interpolate(tile_maps.unsqueeze(1), size=shape, mode="bilinear", align_corners=True).squeeze(1)
            top, bottom, left, right = boxes[number]
            canvas[:, top:bottom, left:right] += tile_maps
            counts[top:bottom, left:right] += 1
            embeddings += scores.embeddings
        stitched_grid = (int(round(grid[0] * full[0] / shape[0])), int(round(grid[1] * full[1] / shape[1])))
        facts = {"tiles": [{"tile": [row, col], **each} for (row, col), each in zip(positions, per_tile)]} if any(per_tile) else {}
        return canvas / counts, F.normalize(embeddings, dim=1), stitched_grid, facts

    def predict_against_reference(
        self, images: Sequence[np.ndarray], paths: Sequence[str] | None = None, progress: ProgressCallback | None = None
    ) -> Result:
        """Reference mode: each image's patches scored against the good bank
        (:func:`reference_scores`); image score = map maximum; verdict and masks by the
        conformal threshold of the good images."""
        bank, threshold = self.reference, self.calibration
        if bank is None or threshold is None:
            raise ConfigError("reference mode needs good images: call calibrate() with known-good images first")
        if not images:
            raise ConfigError("MuSc got no images to score")
        names = default_paths(paths, len(images), self.method)
        sets, grid, _ = self.feature_sets(images, progress, native_grids=self.config.native_grids, shape=bank.shape)
        if grid != bank.grid or len(sets) != len(bank.feature_sets):
            raise ConfigError(f"images give a {grid} feature grid but the good images gave {bank.grid}")
        scores = self._combine(
            [reference_scores(s, r, self.config.lower, self.config.upper, drop_one=True) for s, r in zip(sets, bank.feature_sets)],
            grid,
        )
        maps = self.maps_from_patch_scores(scores, grid).cpu().numpy().astype(np.float32)
        image_scores = maps.reshape(len(names), -1).max(axis=1).astype(np.float64)
        return Result(
            paths=names,
            image_scores=image_scores,
            anomaly_maps=maps,
            masks=pixel_masks(maps, threshold),
            settings={**self.settings(), "reference_images": int(bank.feature_sets[0].shape[0])},
            is_anomalous=decide(image_scores, threshold),
            threshold=threshold.value,
            threshold_rule=threshold.rule,
            needs_review=in_review(image_scores, threshold),
            review_threshold=threshold.review_from,
        )

    def result_from_patch_scores(
        self,
        patch_scores: torch.Tensor,
        grid: tuple[int, int],
        embeddings: torch.Tensor,
        paths: Sequence[str] | None = None,
        facts: dict[str, Any] | None = None,
    ) -> Result:
        """(N, L) patch scores -> Result: maps, image score = max of the map, then RsCIN
        (``facts``: as :meth:`result_from_maps` takes them)."""
        return self.result_from_maps(self.maps_from_patch_scores(patch_scores, grid), embeddings, grid, paths, facts=facts)

    def result_from_maps(
        self,
        maps: torch.Tensor,
        embeddings: torch.Tensor,
        grid: tuple[int, int],
        paths: Sequence[str] | None = None,
        score_maps: torch.Tensor | None = None,
        facts: dict[str, Any] | None = None,
    ) -> Result:
        """(N, H, W) anomaly maps -> Result: image score = max of the map, then RsCIN
        (``score_maps``: of these maps instead, e.g. the turned pass's alone). ``facts``: what
        the batch decided while it was scored (:class:`MuScScores`' ``facts``), spread into
        ``extras`` and kept as ``extras["batch_facts"]`` (settings.json); none: nothing decided.

        Verdict: the label-free rule on the map maxima (before RsCIN). RsCIN rescales every
        batch to [0, 1] and mixes each score with its neighbours', so its values are neither
        comparable between batches nor independent draws; the map maxima are both. Masks: the
        same threshold per pixel, so an image is anomalous exactly when its mask is non-empty.
        """
        names = default_paths(paths, maps.shape[0], self.method)
        scored = maps if score_maps is None else score_maps
        raw = scored.flatten(1).amax(dim=1)
        if self.config.image_top > 0:
            image_scores = rscin(pose.top_share_scores(scored, self.config.image_top), embeddings, self.config.rscin_ks)
        else:
            image_scores = rscin(raw, embeddings, self.config.rscin_ks)
        raw, maps = raw.cpu(), maps.cpu()
        facts = dict(facts or {})
        threshold = label_free_threshold(raw.numpy(), self.config.false_alarm_rate, statistic="map maxima")
        masks = pixel_masks(maps.numpy(), threshold)
        is_anomalous, needs_review = decide(raw.numpy(), threshold), in_review(raw.numpy(), threshold)
        if score_maps is not None:
            # the maps and the image scores differ (canonical_pose: the unturned pass's maps, the
            # turned pass's scores): the verdict follows the image scores, and an anomalous image
            # is outlined where either map exceeds the cut (so it always has a mask), the others
            # not at all (outlines of the unturned pass alone would send a posed batch's normal
            # images to review: 30 % on the posed magnetic tiles, docs/CANONICAL_POSE.md section 9)
            masks = (masks | pixel_masks(score_maps.cpu().numpy(), threshold)) & is_anomalous[:, None, None]
        return Result(
            paths=names,
            image_scores=np.asarray(image_scores, dtype=np.float64),
            anomaly_maps=maps.numpy().astype(np.float32),
            masks=masks,
            settings=self.settings(),
            extras={
                "raw_image_scores": raw.tolist(),
                "grid": list(grid),
                **facts,
                "batch_facts": dict(facts),  # written to settings.json: what the batch itself decided
            },
            is_anomalous=is_anomalous,
            threshold=threshold.value,
            threshold_rule=threshold.rule,
            verdict_scores=raw.numpy().astype(np.float64),
            needs_review=needs_review,
            review_threshold=threshold.review_from,
        )

