"""Are the known-good calibration scores and the scores of new normal images exchangeable?

    python bench/good_sets_diag.py --cache-only --only CATEGORY ...     # tables, once
    python bench/good_sets_exchange.py --sizes 24 50 --sets 200

For each category cached by bench/good_sets_diag.py (all its normal images: training normals,
at most 100, plus the test batch's normals) and each size n, draws ``--sets`` random good sets of
n normal images (numpy seeds 0, 1, ...; seeds 0-9 are bench/bench_good_sets.py's draws) and
compares two schemes on the normals each set leaves out:

- ``library``: what ``MuSc.calibrate`` / ``predict`` do in reference mode: each good image
  scored leave-one-out against the other n - 1, a left-out normal against the n good images
  (averaged over leaving one out), the cut of ``conformal_threshold``;
- ``fixed``: one score function for every image, independent of the draw (each normal image
  against all the other normals of the category, a leave-one-out score over the whole pool), cut
  at the same rank of the set's scores. Its scores are exchangeable by construction, so any
  per-set failure it shows is the draw, not the scores.

And the combinatorial law of an exchangeable score at that rank on this finite pool: the number
of left-out normals above the j-th largest of the set's n scores (j = n + 1 - rank) follows a
negative hypergeometric law, P(more than 10 % of the left-out above the cut) printed as
``theory``. Per scheme: the share of sets whose false alarms exceed 10 %, mean and worst false
alarms, the share of left-out normals above the set's largest score (1 / (n + 1) for exchangeable
scores), and the mean gap between the left-out normals' and the set's own scores.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from defectscope.methods.musc import MuSc, MuScConfig
from defectscope.methods.mutual import _drop_one_interval_mean, _interval_reduce, calibrate_border, to_finest_grid
from defectscope.methods.verdict import conformal_threshold


class TableScorer:
    """Map maxima of query images against reference sets, from a cached distance table (the
    library's reductions: MSM interval, feature sets averaged on the finest grid, border rule,
    blur, maximum)."""

    def __init__(self, data: dict, config: MuScConfig) -> None:
        self.data, self.config, self.model = data, config, MuSc(config)

    def maxima(self, queries: list[int], references: list[int], mode: str) -> np.ndarray:
        """mode: ``loo`` (queries among the references, each without itself), ``drop_one``
        (queries outside: interval over M - 1 references averaged over the M left out), ``plain``."""
        lower, upper, grid = self.config.lower, self.config.upper, self.data["grid"]
        per_set = []
        for table in self.data["tables"]:
            d = table[queries][:, references]
            m = len(references)
            if mode == "loo":
                s = _interval_reduce(d, m - 1, lower, upper)
            elif mode == "drop_one":
                s = _drop_one_interval_mean(d, lower, upper, m)
            else:
                s = _interval_reduce(d, m, lower, upper)
            per_set.append(to_finest_grid(s, grid))
        patch = calibrate_border(torch.stack(per_set).mean(dim=0), grid, self.config.border_depth)
        return self.model.maps_from_patch_scores(patch, grid).flatten(1).amax(dim=1).numpy().astype(np.float64)


def over_probability(pool: int, size: int, rank: int, share: float = 0.10) -> float:
    """P(more than ``share`` of the pool - size left-out images score above the rank-th smallest of
    the set's scores), for exchangeable scores without ties and a uniformly drawn set."""
    left = pool - size
    k = math.floor(share * left + 1e-9) + 1  # this many left-out images above the cut is "over"
    j = size + 1 - rank  # the cut is the set's j-th largest score
    top = k + j - 1  # over <=> at most j - 1 set members among the pool's top k + j - 1
    if top > pool:
        return 0.0
    return sum(math.comb(size, s) * math.comb(left, top - s) for s in range(j)) / math.comb(pool, top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 50])
    parser.add_argument("--sets", type=int, default=200)
    parser.add_argument("--min-test-normals", type=int, default=10)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/goodset-cache"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/goodset-exchange.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = MuScConfig()
    rows = []
    for path in sorted(args.cache.glob("*.pt")):
        name = path.stem
        if args.only and name not in args.only:
            continue
        data = torch.load(path)
        scorer, pool = TableScorer(data, config), data["normals"]
        everyone = list(range(pool))
        fixed = np.concatenate([scorer.maxima([i], [j for j in everyone if j != i], "plain") for i in everyone])
        for size in args.sizes:
            if pool - size < args.min_test_normals:
                continue
            draws = []
            for seed in range(args.sets):
                chosen = sorted(np.random.default_rng(seed).choice(pool, size, replace=False).tolist())
                left = [i for i in everyone if i not in set(chosen)]
                own = scorer.maxima(chosen, chosen, "loo")
                new = scorer.maxima(left, chosen, "drop_one")
                threshold = conformal_threshold(own, config.false_alarm_rate)
                rank = int(np.searchsorted(np.sort(own), threshold.value) + 1)
                fixed_cut = np.sort(fixed[chosen])[rank - 1]
                draws.append({
                    "seed": seed, "rank": rank,
                    "far": float((new > threshold.value).mean()), "far_fixed": float((fixed[left] > fixed_cut).mean()),
                    "above_max": float((new > own.max()).mean()), "above_max_fixed": float((fixed[left] > fixed[chosen].max()).mean()),
                    "gap": float(new.mean() - own.mean()), "gap_fixed": float(fixed[left].mean() - fixed[chosen].mean()),
                })
            rank = draws[0]["rank"]
            row = {"category": name, "pool": pool, "good": size, "left": pool - size, "sets": len(draws), "rank": rank,
                   "theory_over": over_probability(pool, size, rank)}
            for scheme, suffix in (("library", ""), ("fixed", "_fixed")):
                far = np.array([d["far" + suffix] for d in draws])
                row[scheme] = {
                    "over_10pct": float((far > 0.10).mean()), "over_10pct_first10": int((far[:10] > 0.10).sum()),
                    "mean_far": float(far.mean()), "worst_far": float(far.max()),
                    "above_max": float(np.mean([d["above_max" + suffix] for d in draws])),
                    "gap_mean": float(np.mean([d["gap" + suffix] for d in draws])),
                    "gap_sd": float(np.std([d["gap" + suffix] for d in draws])),
                }
            row["gap_correlation"] = float(np.corrcoef([d["gap"] for d in draws], [d["gap_fixed"] for d in draws])[0, 1])
            rows.append({**row, "draws": draws})
            print(json.dumps(row), flush=True)
            args.out.write_text(json.dumps(rows))
    print("\n| category | n | left-out | sets | cut rank | theory: P(set > 10 %) | library: P(set > 10 %) | fixed: P(set > 10 %) | "
          "library / fixed: mean FAR | above the set's max: library / fixed / 1/(n+1) | gap library / fixed (sd) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["library"], r["fixed"]
        print(f"| {r['category']} | {r['good']} | {r['left']} | {r['sets']} | {r['rank']} | {100 * r['theory_over']:.1f} | "
              f"{100 * a['over_10pct']:.1f} | {100 * b['over_10pct']:.1f} | {100 * a['mean_far']:.1f} / {100 * b['mean_far']:.1f} | "
              f"{100 * a['above_max']:.1f} / {100 * b['above_max']:.1f} / {100 / (r['good'] + 1):.1f} | "
              f"{a['gap_mean']:+.4f} / {b['gap_mean']:+.4f} ({a['gap_sd']:.4f} / {b['gap_sd']:.4f}) |")


if __name__ == "__main__":
    sys.exit(main())
