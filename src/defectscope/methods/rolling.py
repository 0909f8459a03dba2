"""A rolling reference bank for a stream: the last M images judged normal, with their table.

A new image is compared with every member once (one block product per member, reduced in both
directions): the rows give the new image's nearest similarities to the members (its score
against the bank), the columns the members' nearest similarities to it. Keeping both in an
M x M x L similarity table per feature set makes the members' leave-one-out scores (each
member scored against the M - 1 others, the calibration of the stream's verdicts) available
after every admission without recomputing the bank: admitting an image fills one row and one
column, evicting the oldest frees its slot. Memory: M^2 L float32 per set (about 120 MB for
M = 100 with the default two layers at 224 px).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import torch

from defectscope.errors import ConfigError
from defectscope.methods.bank import BLOCK_BYTES, topk_size, topk_to_scores
from defectscope.methods.mutual import interval_mean, similarities_to_distances


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
