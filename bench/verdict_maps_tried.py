"""Label-free rules on the stored maps that were tried and not adopted (docs/VERDICTS.md).

    python bench/verdict_maps_tried.py /tmp/verdict-data-pose --extra /tmp/verdict-data2 /tmp/verdict-data

Same stored data, groups and batches without defects as bench/verdict_rules.py (review capped at
20 %). Rules (each sees only the batch's maxima and 56 x 56 maps, never the labels):
- ``patch null``: the cells of the batch's lower images (map maximum below the batch median, or
  the lowest fifth) pooled into one null; the level is its Q quantile; an image's count of cells
  above the level; anomalous above the largest count among the lower images, review above their
  median count;
- ``location-relative``: per image, the largest cell of (log map - the batch's Q quantile over
  images of the log map at the same cell) (objects in place: a defect is rare at any one cell even
  when most parts are defective), with the default rule
  (:func:`defectscope.methods.labelfree.label_free_threshold`) on it;
- ``split level L``: the default rule with the flat-law split test at level L instead of 0.9;
  ``guarded``: the lower level only where the location-relative statistic (Q = 0.5) also splits
  beyond level 0.3 of flat batches.
Also printed: the Anderson-Darling statistic of a Gumbel law on each batch's log maxima (is a batch
whose groups overlap visibly not one Gumbel group?). All of it is development data.
"""

from __future__ import annotations

import argparse
import math
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

from defectscope.methods.labelfree import (
    MIN_SPLIT_SIZE,
    flat_separation,
    knee_cut,
    label_free_threshold,
    otsu_cut,
    separation,
)
from defectscope.methods.verdict import Threshold, gumbel_threshold
from verdict_rules import _capped, evaluate, group, load, normal_only


def patch_null(lower_share: float, level: float):
    def rule(batch: dict, alpha: float):
        maps = batch["maps"].reshape(len(batch["maxima"]), -1).astype(np.float64)
        lower = np.argsort(batch["maxima"])[: max(3, int(lower_share * len(maps)))]
        cut = np.quantile(maps[lower].ravel(), level)
        counts = (maps > cut).sum(axis=1) + 1.0
        return _capped(counts, Threshold(float(counts[lower].max()), "patch null", float(np.median(counts[lower]))))
    return rule


def location_relative(batch: dict, q: float = 0.5) -> np.ndarray:
    logs = np.log(np.maximum(batch["maps"].astype(np.float64), 1e-6))
    return np.exp((logs - np.quantile(logs, q, axis=0)).reshape(len(logs), -1).max(axis=1))


def on_location_relative(q: float):
    def rule(batch: dict, alpha: float):
        s = location_relative(batch, q)
        return _capped(s, label_free_threshold(s, alpha))
    return rule


def split_level(level: float, guarded: bool = False):
    def rule(batch: dict, alpha: float):
        s = batch["maxima"]
        if s.size < MIN_SPLIT_SIZE:
            return _capped(s, label_free_threshold(s, alpha))
        logs = np.log(s)
        g, o, k = math.log(gumbel_threshold(s, alpha).value), otsu_cut(logs), knee_cut(logs)
        split = separation(logs)
        apart = split > flat_separation(s.size) or (
            split > flat_separation(s.size, level)
            and (not guarded or separation(np.log(location_relative(batch))) > flat_separation(s.size, 0.3)))
        high, low = (o if apart else max(g, o, k)), min(g, o, k)
        return _capped(s, Threshold(math.exp(high), "split level", math.exp(low) if low < high else None))
    return rule


RULES = {
    "patch null, lower half, Q = 0.999": patch_null(0.5, 0.999),
    "patch null, lower half, Q = 0.99": patch_null(0.5, 0.99),
    "patch null, lowest fifth, Q = 0.999": patch_null(0.2, 0.999),
    "location-relative maximum, Q = 0.5": on_location_relative(0.5),
    "location-relative maximum, Q = 0.25": on_location_relative(0.25),
    "split level 0.5": split_level(0.5),
    "split level 0.3": split_level(0.3),
    "split level 0.3, guarded": split_level(0.3, guarded=True),
}


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--extra", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    batches = load([args.folder, *args.extra])
    proxies = normal_only({k: v for k, v in batches.items() if "(" not in k})
    print("| rule | shared + demo MuSc: worst FAR / over 5 % / mean recall | CoDeGraph | pose proxy | elpv 2,624: FAR / recall | "
          "batches without defects: over 5 % (worst) |")
    print("|---|---|---|---|---|---|")
    for name, rule in RULES.items():
        rows, good = evaluate(rule, batches), evaluate(rule, proxies)
        cells = []
        for g in ("shared + demo, MuSc", "shared + demo, CoDeGraph", "pose-and-look proxy (MuSc)"):
            part = [r for n, r in rows.items() if group(n) == g]
            fars = [r["far"] for r in part]
            cells.append(f"{_pct(max(fars))} / {sum(f > 0.05 + 1e-12 for f in fars)} / {_pct(np.mean([r['recall'] for r in part]))}")
        elpv = rows.get("elpv_all")
        cells.append("-" if elpv is None else f"{_pct(elpv['far'])} / {_pct(elpv['recall'])}")
        over = {n: r["far"] for n, r in good.items() if r["far"] > 0.05 + 1e-12}
        worst = max(good, key=lambda n: good[n]["far"])
        cells.append(f"{len(over)} of {len(good)} ({worst}: {_pct(good[worst]['far'])})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    print("\nAnderson-Darling statistic of one Gumbel law on the log maxima (1 % critical value about 1.0):")
    for name, batch in {**batches, **proxies}.items():
        if "(codegraph)" in name or batch["maxima"].size < MIN_SPLIT_SIZE:
            continue
        print(f"  {name}: {stats.anderson(np.log(batch['maxima']), dist='gumbel_r').statistic:.2f}")


if __name__ == "__main__":
    main()
