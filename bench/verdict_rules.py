"""Compare label-free verdict rules on stored zero-shot scores (bench/verdict_data.py output).

    python bench/verdict_rules.py /tmp/verdict-data2 --extra /tmp/verdict-data /tmp/pose-verdict-data [--details]

Every folder holds ``NAME__METHOD.npz`` files (labels, map maxima, optionally the anomaly maps
max-pooled by 4); a batch found in several folders is taken from the first. Batches are grouped:
the shared batches and the demo (MuSc; CoDeGraph), all elpv cells, the pose-and-look proxy
(``pose_*``). For each rule and batch: false-alarm rate (normal images called anomalous), recall
(defective images called anomalous), review share (all images sent to review), missed (defective
images called normal). Every rule has the review band capped at 20 % (the default
``--review-budget``). Rules see only the batch's scores and maps, never the labels. Proxies of
batches without defects: each batch's normal images alone (8 or more) and three draws of 6 of
bottle's normal images. All of it is development data: the default rule was chosen on it.
"""

from __future__ import annotations

import argparse
import glob
import math
from pathlib import Path

import numpy as np
from scipy import stats

from defectscope.methods.labelfree import (
    MIN_GROUP,
    MIN_SPLIT_SIZE,
    flat_separation,
    knee_cut,
    label_free_threshold,
    otsu_cut,
    separation,
)
from defectscope.methods.verdict import Threshold, cap_review, decide, gumbel_threshold, in_review

BUDGET = 0.2


def _capped(statistic: np.ndarray, threshold: Threshold) -> tuple[np.ndarray, np.ndarray]:
    threshold = cap_review(statistic, threshold, BUDGET)
    return decide(statistic, threshold), in_review(statistic, threshold)


def gumbel(batch: dict, alpha: float):
    """The rule before the review band: the Gumbel cut alone."""
    return _capped(batch["maxima"], gumbel_threshold(batch["maxima"], alpha))


def three_cut(batch: dict, alpha: float):
    """The previous default: anomalous above the highest of the Gumbel, Otsu and knee cuts of
    the log maxima, review down to the lowest (small batches: today's small-batch rule)."""
    s = batch["maxima"]
    if s.size < MIN_SPLIT_SIZE:
        return _capped(s, label_free_threshold(s, alpha))
    logs = np.log(s)
    cuts = [math.log(gumbel_threshold(s, alpha).value), otsu_cut(logs), knee_cut(logs)]
    high, low = max(cuts), min(cuts)
    return _capped(s, Threshold(math.exp(high), "three-cut", math.exp(low) if low < high else None))


def default(batch: dict, alpha: float):
    """Today's rule: :func:`defectscope.methods.labelfree.label_free_threshold`."""
    return _capped(batch["maxima"], label_free_threshold(batch["maxima"], alpha))


def lower_part_cut(x: np.ndarray, share: float = MIN_GROUP, spreads: float = 2.0) -> float:
    """Rank-based cut: the lowest ``share`` of ``x`` is taken as normal (at most ``1 - share``
    anomalous); the cut lies ``spreads`` times that part's spread (its largest value minus its
    10 % point) above its largest value. ``spreads`` = 2 was set on this dev data."""
    values = np.sort(np.asarray(x, dtype=np.float64).reshape(-1))
    count = min(values.size, max(3, int(math.ceil(share * values.size))))
    top = float(values[count - 1])
    low = float(values[int(math.floor(0.1 * (count - 1)))])
    return top + spreads * (top - low)


def aggressive(batch: dict, alpha: float):
    """The default's split test, but where the batch is not clearly two groups the anomalous cut is
    the highest of Otsu, the knee and the lower-part cut (no Gumbel): more recall on benchmark
    batches, many false alarms on batches of good parts."""
    s = batch["maxima"]
    if s.size < MIN_SPLIT_SIZE:
        return _capped(s, label_free_threshold(s, alpha))
    logs = np.log(s)
    otsu, knee, lower, g = otsu_cut(logs), knee_cut(logs), lower_part_cut(logs), math.log(gumbel_threshold(s, alpha).value)
    high = otsu if separation(logs) > flat_separation(s.size) else max(otsu, knee, lower)
    low = min(otsu, knee, lower, g)
    return _capped(s, Threshold(math.exp(high), "aggressive", math.exp(low) if low < high else None))


def lower_part(batch: dict, alpha: float):
    """Rank-based null on the batch's lower part, maximum anomaly share 80 %: anomalous above
    the lower-part cut (2 spreads above the lowest fifth's top), review down to 1 spread."""
    s = batch["maxima"]
    logs = np.log(s)
    high, low = lower_part_cut(logs), lower_part_cut(logs, spreads=1.0)
    return _capped(s, Threshold(math.exp(high), "lower part", math.exp(low)))


COUNT_LEVELS = (0.99, 0.995, 0.999)
COUNT_AREA = 16
"""Cells of the pooled map counted as one independent sample (a 16 x 16-pixel square)."""


def a_contrario(batch: dict, alpha: float):
    """An a contrario test per image on its map: for each level (the batch's median, over images,
    of each image's 99 %, 99.5 %, 99.9 % cell quantile) the number of the image's cells above it,
    against a binomial law of independent squares of ``COUNT_AREA`` cells that exceed with the
    level's rate; NFA = the number of levels times the smallest tail probability. Anomalous at
    NFA <= alpha, review at NFA <= 1."""
    maps = batch["maps"].reshape(batch["maps"].shape[0], -1).astype(np.float64)
    cells = maps.shape[1]
    tail = np.ones(maps.shape[0])
    for level in COUNT_LEVELS:
        cut = np.median(np.quantile(maps, level, axis=1))
        counts = np.ceil((maps > cut).sum(axis=1) / COUNT_AREA)
        tail = np.minimum(tail, stats.binom.sf(counts - 1, cells // COUNT_AREA, 1.0 - level))
    evidence = -np.log(np.maximum(len(COUNT_LEVELS) * tail, 1e-300))
    return _capped(evidence, Threshold(-math.log(alpha), "a contrario", 0.0))


RULES = {
    "Gumbel cut alone (before the review band)": gumbel,
    "three-cut agreement (previous default)": three_cut,
    "a contrario patch count per image": a_contrario,
    "rank-based lower-part null (max anomaly share 80 %)": lower_part,
    "two groups apart ? Otsu : max(Otsu, knee, lower part) (not adopted)": aggressive,
    "two groups apart ? Otsu : max(Gumbel, Otsu, knee) (default)": default,
}


def load(folders: list[Path]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for folder in folders:
        for path in sorted(glob.glob(str(folder / "*__*.npz"))):
            name, method = Path(path).name[: -len(".npz")].split("__")
            key = name if method == "musc" else f"{name} ({method})"
            if key in out:
                continue
            data = np.load(path)
            out[key] = {"labels": data["labels"].astype(bool), "maxima": data["maxima"].astype(np.float64),
                        "maps": data["maps"] if "maps" in data.files else None}
    return out


def group(name: str) -> str:
    if name.startswith("elpv_all"):
        return "all 2,624 elpv cells"
    if name.startswith("pose_"):
        return "pose-and-look proxy (MuSc)"
    return "shared + demo, CoDeGraph" if "(codegraph)" in name else "shared + demo, MuSc"


def normal_only(batches: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for name, batch in batches.items():
        keep = ~batch["labels"]
        if keep.sum() >= 8 and not name.startswith("elpv_all"):
            maps = None if batch["maps"] is None else batch["maps"][keep]
            out[f"{name} (normals only)"] = {"labels": batch["labels"][keep], "maxima": batch["maxima"][keep], "maps": maps}
    if "bottle" in batches:
        bottle = batches["bottle"]
        normal = np.flatnonzero(~bottle["labels"])
        rng = np.random.default_rng(0)
        for draw in range(3):
            pick = rng.choice(normal, 6, replace=False)
            out[f"6 good bottles, draw {draw}"] = {"labels": np.zeros(6, dtype=bool), "maxima": bottle["maxima"][pick],
                                                 "maps": None if bottle["maps"] is None else bottle["maps"][pick]}
    return out


def evaluate(rule, batches: dict[str, dict], alpha: float = 0.05) -> dict[str, dict]:
    rows = {}
    for name, batch in batches.items():
        if rule is a_contrario and batch["maps"] is None:
            continue
        y = batch["labels"]
        anomalous, review = rule(batch, alpha)
        rows[name] = {
            "far": float(anomalous[~y].mean()) if (~y).any() else None,
            "recall": float(anomalous[y].mean()) if y.any() else None,
            "review": float(review.mean()),
            "missed": float((~anomalous & ~review)[y].mean()) if y.any() else None,
        }
    return rows


def _pct(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def summary_table(results: dict[str, dict[str, dict]], proxies: dict[str, dict[str, dict]]) -> str:
    lines = ["| rule | batches | worst FAR | batches over 5 % | mean recall | mean review | max review | mean missed |",
             "|---|---|---|---|---|---|---|---|"]
    for rule, rows in results.items():
        groups: dict[str, list[dict]] = {}
        for name, row in rows.items():
            groups.setdefault(group(name), []).append(row)
        for name in sorted(groups):
            g = groups[name]
            fars = [r["far"] for r in g if r["far"] is not None]
            lines.append(
                f"| {rule} | {name} ({len(g)}) | {_pct(max(fars))} | {sum(f > 0.05 + 1e-12 for f in fars)} | "
                f"{_pct(np.mean([r['recall'] for r in g]))} | {_pct(np.mean([r['review'] for r in g]))} | "
                f"{_pct(max(r['review'] for r in g))} | {_pct(np.mean([r['missed'] for r in g]))} |"
            )
        p = proxies[rule]
        fars = [r["far"] for r in p.values()]
        worst = max(p, key=lambda k: p[k]["far"])
        lines.append(f"| {rule} | batches without defects ({len(p)}) | {_pct(max(fars))} ({worst}) | "
                     f"{sum(f > 0.05 + 1e-12 for f in fars)} | | {_pct(np.mean([r['review'] for r in p.values()]))} | | |")
    return "\n".join(lines)


def detail_table(rows_by_rule: dict[str, dict[str, dict]]) -> str:
    rules = list(rows_by_rule)
    names = list(dict.fromkeys(n for rows in rows_by_rule.values() for n in rows))
    head = "| batch | " + " | ".join(f"{i + 1}: FAR / recall / review" for i in range(len(rules))) + " |"
    lines = ["Rules: " + "; ".join(f"{i + 1} = {r}" for i, r in enumerate(rules)), "", head, "|---|" + "---|" * len(rules)]
    for name in names:
        cells = []
        for rule in rules:
            r = rows_by_rule[rule].get(name)
            cells.append("-" if r is None else f"{_pct(r['far'])} / {_pct(r['recall'])} / {_pct(r['review'])}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--extra", type=Path, nargs="*", default=[])
    parser.add_argument("--details", action="store_true", help="also print every batch's figures per rule")
    args = parser.parse_args()
    batches = load([args.folder, *args.extra])
    proxies = normal_only({k: v for k, v in batches.items() if "(" not in k})
    results = {name: evaluate(rule, batches) for name, rule in RULES.items()}
    proxy_results = {name: evaluate(rule, proxies) for name, rule in RULES.items()}
    print(summary_table(results, proxy_results))
    if args.details:
        print()
        print(detail_table(results))
        print()
        print(detail_table(proxy_results))
