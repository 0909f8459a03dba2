"""Synthetic batches of good parts only: the share flagged by the label-free rule, today's and the
previous three-cut agreement.

    python bench/verdict_good_batches.py

Log map maxima of one look (Gumbel, Gaussian) or spread flat (several looks), n = 24, 60, 200,
200 seeded draws each: mean share flagged and share of batches over 5 % (about 7 min on one busy core).
"""

from __future__ import annotations

import math

import numpy as np

from defectscope.methods.labelfree import knee_cut, label_free_threshold, otsu_cut
from defectscope.methods.verdict import Threshold, decide, gumbel_threshold


def three_cut(scores: np.ndarray) -> Threshold:
    logs = np.log(scores)
    cuts = [math.log(gumbel_threshold(scores).value), otsu_cut(logs), knee_cut(logs)]
    return Threshold(math.exp(max(cuts)), "three-cut")


def main() -> None:
    print("| law | n | previous: mean flagged | previous: batches > 5 % | today: mean flagged | today: batches > 5 % |")
    print("|---|---|---|---|---|---|")
    for law in ("uniform", "gumbel", "normal"):
        for n in (24, 60, 200):
            rng = np.random.default_rng(1)
            old, new = [], []
            for _ in range(200):
                x = {"uniform": lambda: rng.uniform(0, 0.3, n), "gumbel": lambda: rng.gumbel(0, 0.05, n),
                     "normal": lambda: rng.normal(0, 0.05, n)}[law]()
                scores = np.exp(x - 1.0)
                old.append(decide(scores, three_cut(scores)).mean())
                new.append(decide(scores, label_free_threshold(scores)).mean())
            old_a, new_a = np.array(old), np.array(new)
            print(f"| {law} | {n} | {100 * old_a.mean():.1f} | {100 * (old_a > 0.05).mean():.0f} | "
                  f"{100 * new_a.mean():.1f} | {100 * (new_a > 0.05).mean():.0f} |")


if __name__ == "__main__":
    main()
