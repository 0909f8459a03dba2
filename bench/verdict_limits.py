"""Why the label-free rule stops short of issue 22's 70 % mean recall: two measurements on stored data.

    python bench/verdict_limits.py /tmp/verdict-data2 --extra /tmp/verdict-data   # bench/verdict_data.py output

1. **Does a normal + defect mixture describe the batch at all?** Per batch, BIC of one Gumbel law of
   the log map maxima against a Gumbel (normal images) + Gaussian (defective images) mixture fitted
   by EM *started from the true labels* (the best case for any mixture-based rule: it is told where
   the groups are), and the same mixture fixed at the labels (no EM). Where one Gumbel still wins,
   the batch's maxima look like one right-skewed group: a batch of good parts drawn from that one
   law would, to any rule that sees only the maxima, look like this batch.
2. **The split level against batches of good parts.** The default calls a batch "two groups
   clearly apart" when Otsu's separation exceeds the 90 % point of flat batches of its size
   (``labelfree.SPLIT_LEVEL``); 50 % would lift hazelnut_toy (23 images) and pa_btn01_rl. Here:
   synthetic batches of good parts only (log maxima of one look, Gumbel or Gaussian, as
   bench/verdict_good_batches.py draws them; 200 seeded batches each), the mean share flagged and the
   share of batches cut at Otsu, at both levels.

Uses the labels only to measure; no rule here is a candidate default. Development data throughout.
"""

from __future__ import annotations

import argparse
import glob
import math
from pathlib import Path

import numpy as np

import defectscope.methods.labelfree as labelfree
from defectscope.methods import verdict
from defectscope.methods.verdict import decide


def _at_labels(x: np.ndarray, normal: np.ndarray) -> float:
    location, scale = verdict.weighted_gumbel(x[normal], np.ones(int(normal.sum())))
    mean, sd, weight = float(x[~normal].mean()), float(x[~normal].std()), float(normal.mean())
    a = math.log(weight) + verdict._gumbel_log_density(x, location, scale)
    b = math.log(1 - weight) + verdict._gaussian_log_density(x, mean, max(sd * sd, 1e-12))
    return float(np.logaddexp(a, b).sum())


def mixture_table(folders: list[Path]) -> None:
    print("| batch | N (defective) | BIC one Gumbel | BIC mixture, EM from the labels (normal share) | BIC mixture at the labels | preferred |")
    print("|---|---|---|---|---|---|")
    seen = set()
    for folder in folders:
        for path in sorted(glob.glob(str(folder / "*__musc.npz"))):
            name = Path(path).name[: -len("__musc.npz")]
            if name in seen:
                continue
            seen.add(name)
            data = np.load(path)
            y, x = data["labels"].astype(bool), np.log(data["maxima"].astype(np.float64))
            n = x.size
            location, scale = verdict.weighted_gumbel(x, np.ones(n))
            one = -2.0 * float(verdict._gumbel_log_density(x, location, scale).sum()) + 2.0 * math.log(n)
            lower = (~y).astype(np.float64)
            em = -2.0 * verdict.mixture_from(x, lower)[5] + 5.0 * math.log(n)
            fixed = -2.0 * _at_labels(x, ~y) + 5.0 * math.log(n)
            best = "one Gumbel" if one <= min(em, fixed) else "mixture"
            print(f"| {name} | {n} ({int(y.sum())}) | {one:.1f} | {em:.1f} | {fixed:.1f} ({(~y).mean():.2f}) | {best} |")


def split_level_table(draws: int = 200) -> None:
    original = labelfree.flat_separation
    print("| law | n | level 0.9: mean flagged | cut at Otsu | level 0.5: mean flagged | cut at Otsu |")
    print("|---|---|---|---|---|---|")
    try:
        for law in ("gumbel", "normal"):
            for n in (24, 60, 200):
                cells = []
                for level in (0.9, 0.5):
                    labelfree.flat_separation = lambda size, level=level, min_group=labelfree.MIN_GROUP: original(size, level, min_group)
                    rng = np.random.default_rng(1)
                    flagged, apart = [], []
                    for _ in range(draws):
                        x = rng.gumbel(0, 0.05, n) if law == "gumbel" else rng.normal(0, 0.05, n)
                        scores = np.exp(x - 1.0)
                        threshold = labelfree.label_free_threshold(scores)
                        flagged.append(decide(scores, threshold).mean())
                        apart.append("two groups clearly apart" in threshold.rule)
                    cells += [f"{100 * np.mean(flagged):.1f}", f"{100 * np.mean(apart):.0f}"]
                print(f"| {law} | {n} | " + " | ".join(cells) + " |")
    finally:
        labelfree.flat_separation = original


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--extra", type=Path, nargs="*", default=[])
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    mixture_table([args.folder, *args.extra])
    print()
    split_level_table(args.draws)
