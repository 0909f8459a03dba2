"""The zero-shot methods' settings: :class:`MuScConfig` and :class:`CoDeGraphConfig`.

Each constraint is declared with its field (:func:`defectscope.methods.config.setting`) and
checked when a config is built; :mod:`defectscope.methods.musc` and
:mod:`defectscope.methods.codegraph` re-export these classes (the registry names them there).
"""

from __future__ import annotations

from dataclasses import dataclass

from defectscope.backbones._common import BORDERS
from defectscope.device import resolve_device
from defectscope.methods.config import DEFAULT_FALSE_ALARM_RATE, FALSE_ALARM_RATE, MethodConfig, setting, to_text
from defectscope.methods.partcrop import PART_CROPS
from defectscope.methods.canonical import CANONICAL_POSES
from defectscope.methods.pose import ROTATION_COUNTS, SELF_MIXES, SELF_TERMS


@dataclass(frozen=True)
class MuScConfig(MethodConfig):
    """MuSc settings; the defaults are the authors' where they exist and survived the measurements
    on every shared category (docs/BENCHMARKS.md), else chosen by measurement.

    Attributes:
        backbone: registry name of the feature extractor.
        weights: local weights folder for hub backbones (None: the embedded or hub default).
        image_size: square input size (None: the backbone's documented default).
        layers: backbone layers to use (None: the backbone's default layers).
        degrees: LNAMD aggregation degrees r.
        lower, upper: MSM scoring interval [lower, upper) over the sorted per-image distances.
            Default [0.5, 1): a patch scores high when at least half of the other images hold
            nothing like it, so a defect kind present in up to half of the batch still stands
            out (the authors' [0, 0.3) lets defects that recur in more than 30 % of the batch,
            as on the paper types, vouch for each other).
        rscin_ks: RsCIN neighbourhood sizes (k = 1 is the identity).
        native_grids: score each CNN layer on its own grid and upsample its patch scores to
            the finest grid (bilinear, align_corners=True) before averaging; False resizes the
            features to the finest grid first (4x more pairwise work for a stride-16 layer).
            Chosen by measurement (docs/BENCHMARKS.md). CoDeGraph always uses the common grid.
        smoothing_sigma: Gaussian blur of the anomaly maps in input pixels (0 = none; default 4,
            chosen by the ablation in docs/BENCHMARKS.md, the authors use none).
        batch_size: images per backbone forward pass.
        border: the backbone's border rule, ``"zero"`` or ``"reflect"`` (mirror the image
            outwards by ``border_pad`` input pixels before the backbone and crop the features
            back; None pad = two cells of the coarsest layer), see docs/BENCHMARKS.md.
        border_pad: the margin of ``border="reflect"`` in input pixels (None: the backbone's default).
        border_depth: :func:`calibrate_border` of the patch scores over the outer
            ``border_depth`` rings of patches (0 turns it off), see docs/BENCHMARKS.md.
        keep_aspect: the batch's input keeps the images' median aspect ratio (area about
            ``image_size`` squared, sides multiples of the backbone's unit) instead of a square;
            maps come at that (height, width).
        tiles: cut every image into ``tiles`` x ``tiles`` overlapping tiles (``tile_overlap``
            of a tile's side shared with its neighbour), score the tiles of each position as a
            batch of their own at the full input size, and stitch the maps back (averaged where
            they overlap). Costs about ``tiles ** 2`` times the work of one pass.
        tile_overlap: overlap of neighbouring tiles, a fraction of the tile side in [0, 0.5].
        max_references: reference-bank size for large batches: once N - 1 > 2 max_references
            (where the bank is cheaper than mutual scoring) every image is scored against a
            seeded random sample of max_references images of the batch, with features kept
            chunk by chunk and no N x N table (:mod:`defectscope.methods.bank`); None: always
            exact. Default chosen by measurement (docs/BENCHMARKS.md, reference banks).
        reference_seed: seed of that sample.
        feature_store: bank mode only: "auto" memory-maps the feature sets to a temporary file
            when they would exceed half of the available memory, None keeps them in memory,
            a folder memory-maps them there.
        scheduler: where the work runs: None (this process), "dask" (a Dask LocalCluster for
            the run) or a Dask scheduler address "tcp://HOST:PORT" (:mod:`defectscope.methods.distributed`).
            MuSc only; CoDeGraph always builds the full table in this process.
        false_alarm_rate: share of normal images the verdict may flag (label-free rule on the
            batch, or conformal on the good images after :meth:`MuSc.calibrate`).
        device: where features, scoring, RsCIN and the maps run (:mod:`defectscope.device`:
            auto, cpu, cuda, cuda:N, mps); results come back as numpy arrays.
        looks_gate, looks_interval: several looks of normal. When the mean pairwise cosine of
            the batch's global embeddings is below ``looks_gate`` the batch is scored with the
            MSM interval ``looks_interval`` (the authors' [0, 0.3)) instead of [lower, upper).
            Default 0.89, chosen on the shared batches and the pose proxy (docs/POSE.md): only
            the magnetic tiles (0.868; 0.694 posed) fall below it, every other batch lies at
            0.911 or above (the gate sits half way between). Zero-shot
            batch scoring, exact (and on the reference bank with ``looks_bank``); not Dask,
            ``watch`` or reference mode. None turns it off.
        looks_groups, looks_bank, looks_nearest: several looks on the reference bank (batches
            above 2 max_references + 1 images). By default the bank is scored with
            ``looks_interval``, each image against only the ``looks_nearest`` references nearest
            to it by global embedding (its own look; None: the whole bank), when the gate's
            agreement is below ``looks_gate`` *and* the embeddings form separated groups: the
            separation of their best 2-way split (:func:`defectscope.methods.pose.look_groups`,
            in pooled standard deviations) is at least ``looks_groups`` (5.5, chosen on the
            dev data: the 2,624 elpv cells, mono and poly, 6.2; all 868 magnetic tiles, one
            wide spread, 3.5; every shared batch 5.0 or less but one mixed-looks batch, 9.2;
            docs/SCALE.md). None: the bank keeps [lower, upper). ``looks_bank`` = true takes the
            gate alone (the agreement, as in exact scoring), which also fires on the magnetic
            tiles and lowers them. ``nearest_images``, when set, takes precedence over
            ``looks_nearest``.
        rotations, self_term, self_mix, self_radius, self_gate, nearest_images, image_top: the
            pose-robust options of :mod:`defectscope.methods.pose` (off by default; zero-shot
            batch scoring only, docs/POSE.md).
        part_crop: crop every image of the batch to a square around its part
            (:mod:`defectscope.methods.partcrop`, docs/PARTCROP.md): "auto" decides from the
            batch (a plain background and a small part in most images), "on" crops whenever
            parts are found, "off" never. Maps come back in the full image's frame. Zero-shot
            batch scoring (exact, bank, Dask); in reference mode the good images decide and
            each new image is cut to their side around its own part; ``watch``'s rolling bank
            decides on its first batch.
        canonical_pose, canonical_fold, canonical_expand: a canonical pose per image
            (:mod:`defectscope.methods.canonical`, docs/CANONICAL_POSE.md): "auto" turns each
            image of a batch of a directional texture whose images disagree in orientation to
            the batch's mean angle before scoring, the image scores from the turned images,
            the maps from a second pass over the images as they are (every pixel, the corners
            the turn cuts off included); "auto" looks at every batch (about 0.01-0.02 s per
            image) and changes nothing where its gate stays shut; "on" turns whenever two
            images have a dominant orientation; "off" (default, docs/CANONICAL_POSE.md section
            10) never looks. ``canonical_fold``
            2 or 4 (angles modulo 180 or 90 degrees; none: chosen per batch);
            ``canonical_expand`` turns each image onto its turned bounding box instead of its
            own frame. Zero-shot batch scoring (exact, bank, Dask) only: reference mode and
            ``watch`` refuse "on" and ignore "auto"; CoDeGraph reads "auto" as "off" (a
            recorded fact) and refuses "on".
    """

    backbone: str = "efficientnet-lite0"
    weights: str | None = None
    image_size: int | None = setting(None, at_least=1, note="pixels; none: the backbone's default")
    layers: tuple[str | int, ...] | None = None
    degrees: tuple[int, ...] = setting((1, 3, 5), at_least=1, odd=True)
    lower: float = setting(0.5, at_least=0.0, below=1.0)
    upper: float = setting(1.0, above=0.0, at_most=1.0)
    rscin_ks: tuple[int, ...] = setting((1, 2, 3), at_least=1)
    smoothing_sigma: float = setting(4.0, at_least=0.0, note="input pixels; 0: off")
    native_grids: bool = True
    batch_size: int = setting(8, at_least=1)
    border: str = setting("zero", choices=BORDERS)
    border_pad: int | None = None
    border_depth: int = setting(2, at_least=0, note="rings of patches; 0: off")
    keep_aspect: bool = True
    tiles: int = setting(1, at_least=1, note="tiles per side")
    tile_overlap: float = setting(0.25, at_least=0.0, at_most=0.5, note="a fraction of the tile side")
    max_references: int | None = setting(200, at_least=1, note="none: always exact")
    reference_seed: int = 0
    feature_store: str | None = "auto"
    scheduler: str | None = None
    false_alarm_rate: float = setting(DEFAULT_FALSE_ALARM_RATE, FALSE_ALARM_RATE)
    device: str = "auto"
    rotations: int = setting(1, choices=ROTATION_COUNTS)
    self_term: str = setting("off", choices=SELF_TERMS)
    self_mix: str = setting("min", choices=SELF_MIXES)
    self_radius: int = setting(4, at_least=0, note="cells of the finest grid")
    self_gate: float = setting(1.0, above=0.0)
    nearest_images: int | None = setting(None, at_least=1, note="none: all images")
    image_top: float = setting(0.0, at_least=0.0, below=1.0, note="0: the map maximum")
    looks_gate: float | None = setting(0.89, above=0.0, at_most=1.0, note="a cosine; none: off")
    looks_interval: tuple[float, float] = setting((0.0, 0.3), at_least=0.0, at_most=1.0)
    looks_bank: bool = False
    looks_groups: float | None = setting(5.5, above=0.0, note="pooled standard deviations; none: off")
    looks_nearest: int | None = setting(20, at_least=1, note="references; none: all of the bank")
    part_crop: str = setting("auto", choices=PART_CROPS)
    canonical_pose: str = setting("off", choices=CANONICAL_POSES)
    canonical_fold: int | None = setting(None, choices=(2, 4), note="none: chosen per batch")
    canonical_expand: bool = False

    def check(self) -> None:
        if not self.lower < self.upper:
            self.refuse(f"settings lower={self.lower:g}, upper={self.upper:g} are invalid: the scoring interval [lower, upper) needs lower < upper")
        if not self.looks_interval[0] < self.looks_interval[1]:
            self.refuse(f"setting looks_interval={to_text(self.looks_interval)} is invalid: the interval [lower, upper) needs lower < upper")
        if self.scheduler is not None and resolve_device(self.device).type != "cpu":
            self.refuse(
                f"settings scheduler={self.scheduler} and device={self.device} cannot be combined: the scheduler runs MuSc "
                "on Dask workers' CPUs (use --device cpu)"
            )


@dataclass(frozen=True)
class CoDeGraphConfig(MuScConfig):
    """MuSc settings plus the CoDeGraph parameters (defaults chosen by measurement, see
    docs/CODEGRAPH.md).

    Attributes:
        max_support_fraction: K = ceil(fraction (N - 1)), the largest number of supporting
            images a consistent anomaly may have (recurring defects in up to this share of the
            batch are filtered).
        burnout_threshold: a patch is burnt out when its endurance ratio exceeds this.
        score_quantile: a burnt-out patch links images only when its MSM score without its
            supporting images as references would exceed this quantile of the batch's MSM patch
            scores (it would score as anomalous without them).
        resolution: CPM resolution, in linking patches per image pair.
        min_pair_weight: a community is kept when its mean (symmetrised) edge weight per member
            pair reaches this many linking patches.
        min_community_size: smallest community kept.
        confirm_quantile, confirm_share: a community is confirmed (and its members re-scored)
            only when at least ``confirm_share`` of its members, re-scored without the others,
            score above the ``confirm_quantile`` quantile of the other images' MuSc image scores
            (see :func:`confirmed`).
        seed: Leiden seed.
        draw_graphs: attach a PNG picture of the image graph to every reported community.
        lower, upper: the MSM interval, MuSc's default [0.5, 1) (the authors use [0, 0.3)).
            Measured on all shared batches (docs/BENCHMARKS.md, "CoDeGraph with MuSc's
            interval"): mean I-AUROC / P-AP over the nine batches 94.0 / 42.1 with [0, 0.3), 96.4 /
            50.4 with [0.5, 1), equal mean P-AP on the recurring-defect batches; communities are
            still found. ``lower=0 upper=0.3`` gives the authors' setting.
    """

    looks_gate: float | None = None
    """MuSc's several-looks gate is not part of CoDeGraph (it keeps the interval above)."""
    looks_groups: float | None = None
    """Nor is the bank's groups rule."""
    canonical_pose: str = setting("off", choices=CANONICAL_POSES)
    """Nor is the canonical pose: CoDeGraph scores the images as they are (its graph is built on
    them); "auto" is read as "off" and the fact recorded, "on" is refused."""
    tiles: int = setting(1, choices=(1,), note="CoDeGraph scores whole images only")

    max_support_fraction: float = setting(0.5, above=0.0, at_most=1.0)
    burnout_threshold: float = setting(20.0, above=0.0)
    score_quantile: float = setting(0.99, at_least=0.0, at_most=1.0)
    resolution: float = setting(1.0, above=0.0, note="linking patches per image pair")
    min_pair_weight: float = setting(2.0, at_least=0.0)
    min_community_size: int = setting(2, at_least=2)
    confirm_quantile: float = setting(0.9, at_least=0.0, at_most=1.0)
    confirm_share: float = setting(0.9, at_least=0.0, at_most=1.0)
    seed: int = 0
    draw_graphs: bool = True

    def check(self) -> None:
        super().check()
        if self.self_term != "off" or self.nearest_images is not None or self.looks_gate is not None:
            self.refuse("settings self_term, nearest_images and looks_gate are MuSc options; CoDeGraph takes rotations (turned references) only")
        if self.canonical_pose == "on":
            self.refuse("setting canonical_pose=on is a MuSc option: CoDeGraph scores the images as they are (auto is read as off)")
        if self.scheduler is not None:
            self.refuse(f"setting scheduler={self.scheduler} is a MuSc option: CoDeGraph scores in this process (its graph needs every table at once)")
