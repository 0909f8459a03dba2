"""A rolling reference bank for a stream: the last M images judged normal, with their table.

A new image is compared with every member once (one block product per member, reduced in both
directions): the rows give the new image's nearest similarities to the members (its score
against the bank), the columns the members' nearest similarities to it. Keeping both in an
M x M x L similarity table per feature set makes the members' leave-one-out scores (each
member scored against the M - 1 others, the calibration of the stream's verdicts) available
after every admission without recomputing the bank: admitting an image fills one row and one
column, evicting the oldest frees its slot. Memory: M^2 L float32 per set (about 120 MB for
M = 100 with the default two layers at 224 px).

:class:`ZeroShotScorer` is MuSc scoring one image at a time against such a bank (``defectscope
watch``): the first images wait and are scored together by mutual scoring, later ones against the
bank; its verdicts are conformal on the members' leave-one-out scores (:func:`stream_threshold`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from defectscope.errors import ConfigError
from defectscope.methods.bank import BLOCK_BYTES, topk_size, topk_to_scores
from defectscope.methods import partcrop
from defectscope.methods.mutual import interval_mean, similarities_to_distances, to_finest_grid
from defectscope.methods.verdict import conformal_count, conformal_threshold


@dataclass
class Comparison:
    """One image against the current members, per feature set: ``to_members[s]`` (m, L) its
    patches' nearest similarity in each member, ``from_members[s]`` (m, L) each member's."""

    to_members: list[torch.Tensor]
    from_members: list[torch.Tensor]


def _both_directions(query: torch.Tensor, members: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, C) vs (m, L', C) -> (m, L) query-to-member and (m, L') member-to-query maxima."""
    m, length_r, channels = members.shape
    length = query.shape[0]
    to_members = torch.empty(m, length, device=members.device)
    from_members = torch.empty(m, length_r, device=members.device)
    step = max(1, BLOCK_BYTES // (4 * length * length_r))
    for start in range(0, m, step):
        block = members[start : start + step]
        b = block.shape[0]
        sims = (query @ block.reshape(b * length_r, channels).T).view(length, b, length_r)
        to_members[start : start + b] = sims.amax(dim=2).T
        from_members[start : start + b] = sims.amax(dim=0)
    return to_members, from_members


class RollingBank:
    """The last ``capacity`` admitted images (FIFO) and their mutual similarity tables."""

    def __init__(self, capacity: int, lower: float = 0.0, upper: float = 0.3) -> None:
        if capacity < 2:
            raise ConfigError(f"the rolling bank needs room for at least 2 images, got {capacity}")
        self.capacity = capacity
        self.lower, self.upper = lower, upper
        self.features: list[torch.Tensor] = []
        self.tables: list[torch.Tensor] = []
        self.keys: list[str | None] = [None] * capacity
        self.order: deque[int] = deque()

    def __len__(self) -> int:
        return len(self.order)

    def members(self) -> list[str]:
        """Keys of the members, oldest first."""
        return [self.keys[slot] for slot in self.order]  # type: ignore[misc]

    def _active(self) -> torch.Tensor:
        return torch.tensor(list(self.order), dtype=torch.long)

    def compare(self, sets: list[torch.Tensor]) -> Comparison:
        """Compare one image's (L, C) feature sets with the members (oldest first)."""
        active = self._active()
        to_members, from_members = [], []
        for index, query in enumerate(sets):
            if len(active):
                a, b = _both_directions(query.float(), self.features[index][active])
            else:
                a, b = torch.empty(0, query.shape[0], device=query.device), torch.empty(0, query.shape[0], device=query.device)
            to_members.append(a)
            from_members.append(b)
        return Comparison(to_members, from_members)

    def query_scores(self, comparison: Comparison) -> list[torch.Tensor]:
        """Per set, the (L,) interval-mean distances of the compared image to the members."""
        m = len(self)
        if m < 1:
            raise ConfigError("the rolling bank is empty: nothing to score against")
        k = topk_size(m, self.lower, self.upper)
        counts = torch.tensor([m])
        return [topk_to_scores(torch.topk(t, k, dim=0).values.unsqueeze(0), counts, self.lower, self.upper)[0] for t in comparison.to_members]

    def add(self, key: str, sets: list[torch.Tensor], comparison: Comparison | None = None) -> None:
        """Admit an image (evicting the oldest member when full); ``comparison`` must be the
        result of :meth:`compare` against the current members (computed here if None)."""
        comparison = comparison or self.compare(sets)
        if not self.features:
            self.features = [torch.empty(self.capacity, *s.shape, device=s.device) for s in sets]
            self.tables = [torch.full((self.capacity, self.capacity, s.shape[0]), -math.inf, device=s.device) for s in sets]
        active = self._active()
        if len(self.order) == self.capacity:
            slot = self.order.popleft()
            keep = [position for position, s in enumerate(active.tolist()) if s != slot]
            active = active[keep]
            comparison = Comparison([t[keep] for t in comparison.to_members], [t[keep] for t in comparison.from_members])
        else:
            slot = next(s for s in range(self.capacity) if s not in self.order)
        for index, features in enumerate(sets):
            self.features[index][slot] = features
            table = self.tables[index]
            table[slot, :] = -math.inf
            table[:, slot] = -math.inf
            table[slot, active] = comparison.to_members[index]
            table[active, slot] = comparison.from_members[index]
        self.keys[slot] = key
        self.order.append(slot)

    def remove(self, key: str) -> None:
        """Drop a member (e.g. one the first batch judged anomalous)."""
        slot = next(s for s in self.order if self.keys[s] == key)
        self.order.remove(slot)
        self.keys[slot] = None

    def leave_one_out(self) -> list[torch.Tensor]:
        """Per set, (m, L) scores of each member against the m - 1 others (oldest first)."""
        if len(self) < 2:
            raise ConfigError("leave-one-out scores need at least 2 images in the bank")
        active = self._active()
        return [interval_mean(similarities_to_distances(t[active][:, active]), self.lower, self.upper) for t in self.tables]


def stream_threshold(calibration: Sequence[float], false_alarm_rate: float) -> float:
    """The conformal threshold of :func:`defectscope.methods.verdict.conformal_threshold` on the
    calibration scores, or inf while there are too few of them for ``false_alarm_rate`` (nothing flagged).
    Without the known-good guard band (``guard=False``): the rolling bank is not a known-good set
    and has no review outcome, so a small bank keeps its largest score as the cut, as before."""
    if len(calibration) < conformal_count(false_alarm_rate):
        return math.inf
    return conformal_threshold(np.asarray(calibration, dtype=np.float64), false_alarm_rate, source="bank images", guard=False).value


@dataclass
class Scored:
    """One image's outcome: ``score`` None when it could not be scored (a lone image at exit)."""

    key: str
    image: np.ndarray
    score: float | None
    anomalous: bool | None
    anomaly_map: np.ndarray | None
    ready_at: float
    review: bool = False
    """The scorer sent the image to review (its statistic lies in the review band)."""

    @property
    def verdict(self) -> str:
        """``anomalous``, ``review`` or ``normal``; empty when there is no verdict."""
        if self.anomalous is None:
            return ""
        return "anomalous" if self.anomalous else ("review" if self.review else "normal")


class ZeroShotScorer:
    """MuSc features of one image at a time, scored against a rolling or a fixed bank.

    ``part_crop`` (docs/PARTCROP.md): decided once, on the first batch (or, after a restart, on
    the images the bank is rebuilt from); when it crops, every image (bank members and new ones)
    is cut to a square of that batch's side around its own part and its map pasted back into
    its frame. Until the decision the first images wait without features.

    The input shape (``keep_aspect``: the median aspect of the images, :meth:`MuSc.input_shape`)
    is decided once too, on the first batch (after a restart, on the images the bank is rebuilt
    from), as reference mode fixes it on its good images (``ReferenceBank.shape``): every image,
    bank member or new, goes in at that (height, width), so that images of another aspect give
    the bank's feature grid. Before the decision the waiting images' features are computed as
    they arrive at their own shape and computed again at the decided one where it differs."""

    def __init__(self, musc, false_alarm_rate: float, bank_size: int, min_bank: int, log=None) -> None:
        if not 2 <= min_bank <= bank_size:
            raise ConfigError(f"--min-bank must lie in [2, --bank-size], got {min_bank} with a bank of {bank_size}")
        if getattr(musc.config, "canonical_pose", "off") == "on":
            raise ConfigError("canonical_pose=on turns the images of a batch scored by itself; watch scores one image at a time as it is: use canonical_pose=auto or off")
        self.musc = musc
        self.false_alarm_rate = false_alarm_rate
        self.min_bank = min_bank
        self.bank = RollingBank(bank_size, musc.config.lower, musc.config.upper)
        self.rolling = True
        self.started = False
        self.pending: list[tuple[str, np.ndarray, list[torch.Tensor], float]] = []
        self.grid: tuple[int, int] = (0, 0)
        self._calibration: np.ndarray | None = None
        self.crop: partcrop.CropPlan | None = None
        """The part crop plan; None until decided (and always with ``part_crop=off``)."""
        self.shape: tuple[int, int] | None | str = "batch"
        """The input (height, width) every image is resized to (None: the backbone's square
        input); "batch" until decided (each image at its own aspect)."""
        self.log = log or (lambda line: None)

    @property
    def crops(self) -> bool:
        """True unless ``part_crop=off``: the images pass through :attr:`crop` once decided."""
        return self.musc.config.part_crop != "off"

    def decide_crop(self, images: Sequence[np.ndarray]) -> None:
        """Plan the part crop on ``images`` (the first batch) and log the decision (the watch
        also records it: :meth:`batch_facts`)."""
        self.crop = partcrop.plan_batch(images, self.musc.config.part_crop, one_size=False)  # pasted one by one
        facts = self.crop.facts
        if facts["cropped"]:
            self.log(f"part crop: on, a {facts['side']} px square around each part ({facts['reason']})")
        else:
            self.log(f"part crop: off ({facts['reason']})")

    def cropped(self, image: np.ndarray) -> tuple[np.ndarray, partcrop.CropPlan | None]:
        """The image cut to its square (and that one-image plan), or as it is when not cropping."""
        if self.crop is None or not self.crop.active:
            return image, None
        follow = self.crop.follow([image], "the first batch")
        return follow.crop([image])[0], follow

    @staticmethod
    def pasted(anomaly_map: np.ndarray, follow: partcrop.CropPlan | None, image: np.ndarray) -> np.ndarray:
        """A crop's map in its image's frame (unchanged when not cropped)."""
        if follow is None:
            return anomaly_map
        return follow.paste_maps(anomaly_map[None], None, tuple(np.asarray(image).shape[:2]))[0][0]

    def settings(self) -> dict:
        """The detector's settings and the bank's (``min_bank`` only for a rolling bank)."""
        facts = {**self.musc.settings(), "bank_size": self.bank.capacity}
        if self.rolling:
            facts["min_bank"] = self.min_bank
        return facts

    def batch_facts(self) -> dict:
        """What the scorer decided from the stream itself, once decided: ``part_crop`` (the
        plan's facts, as ``score`` records them in settings.json's ``batch_facts``)."""
        return {} if self.crop is None else {"part_crop": self.crop.facts}

    def decide_shape(self, images: Sequence[np.ndarray]) -> None:
        """Fix the input shape on ``images`` (the first batch, cropped when cropping), once."""
        if self.shape == "batch" and len(images):
            self.shape = self.musc.input_shape(images)

    def features(self, image: np.ndarray) -> list[torch.Tensor]:
        sets, self.grid, _ = self.musc.feature_sets([image], native_grids=self.musc.config.native_grids, shape=self.shape)
        return [s[0] for s in sets]

    def _maps(self, per_set: list[torch.Tensor]) -> np.ndarray:
        n = per_set[0].shape[0]
        patch = torch.stack([to_finest_grid(s.reshape(n, -1), self.grid) for s in per_set]).mean(dim=0)
        return self.musc.maps_from_patch_scores(patch, self.grid).cpu().numpy()

    def calibration(self) -> np.ndarray:
        """Leave-one-out image scores of the bank members (cached until the bank changes)."""
        if self._calibration is None:
            maps = self._maps(self.bank.leave_one_out())
            self._calibration = maps.reshape(len(maps), -1).max(axis=1)
        return self._calibration

    def restore(self, keyed_images: Sequence[tuple[str, np.ndarray]], any_rows: bool) -> None:
        """Rebuild the rolling bank after a restart from the images last judged normal."""
        keyed_images = list(keyed_images)
        if self.crops:
            if len(keyed_images) < 2:
                keyed_images = []  # too few to decide the crop on: the next first batch rebuilds the bank
            else:
                self.decide_crop([image for _, image in keyed_images])
        crops = [(key, self.cropped(image)[0]) for key, image in keyed_images]
        self.decide_shape([crop for _, crop in crops])
        for key, crop in crops:
            self.bank.add(key, self.features(crop))
        self.started = any_rows and len(self.bank) >= 2

    def score(self, key: str, image: np.ndarray, ready_at: float) -> list[Scored]:
        """Score one image; returns the rows now decided (none while the first batch waits)."""
        if not self.started:
            # with part_crop the features wait for the crop, decided on the whole first batch
            sets = None if self.crops and self.crop is None else self.features(self.cropped(image)[0])
            self.pending.append((key, image, sets, ready_at))
            return self._first_batch() if len(self.pending) >= self.min_bank else []
        crop, follow = self.cropped(image)
        sets = self.features(crop)
        calibration = self.calibration()
        comparison = self.bank.compare(sets)
        anomaly_map = self.pasted(self._maps([s.unsqueeze(0) for s in self.bank.query_scores(comparison)])[0], follow, image)
        score = float(anomaly_map.max())
        anomalous = score > stream_threshold(calibration, self.false_alarm_rate)
        if self.rolling and not anomalous:
            self.bank.add(key, sets, comparison)
            self._calibration = None
        return [Scored(key, image, score, anomalous, anomaly_map, ready_at)]

    def _first_batch(self) -> list[Scored]:
        """Mutual scoring of the waiting images; those judged normal stay in the bank."""
        if self.crops and self.crop is None:
            self.decide_crop([image for _, image, _, _ in self.pending])
        follows, crops = {}, {}
        for key, image, _, _ in self.pending:
            crops[key], follows[key] = self.cropped(image)
        self.decide_shape(list(crops.values()))
        for number, (key, image, sets, ready_at) in enumerate(self.pending):
            crop = crops[key]
            if sets is None or self.musc.input_shape([crop]) != self.shape:  # computed on arrival at another shape
                sets = self.features(crop)
                self.pending[number] = (key, image, sets, ready_at)
            self.bank.add(key, sets)
        self._calibration = None
        scores = self.calibration()
        maps = self._maps(self.bank.leave_one_out())
        position = {key: index for index, key in enumerate(self.bank.members())}
        rows = []
        for key, image, _, ready_at in self.pending:
            index = position[key]
            others = np.delete(scores, index)
            anomalous = bool(scores[index] > stream_threshold(others, self.false_alarm_rate))
            rows.append(Scored(key, image, float(scores[index]), anomalous, self.pasted(maps[index], follows.get(key), image), ready_at))
            if anomalous:
                self.bank.remove(key)
        self.pending = []
        self._calibration = None
        self.started = len(self.bank) >= 2
        return rows

    def flush(self) -> list[Scored]:
        """At exit: score the waiting images together, or report a lone one as unscored."""
        if len(self.pending) >= 2:
            return self._first_batch()
        rows = [Scored(key, image, None, None, None, ready_at) for key, image, _, ready_at in self.pending]
        self.pending = []
        return rows
