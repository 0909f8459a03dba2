"""Choose the known-good guard band (n below ``goods_for``) on all shared categories together.

    python bench/good_guard_scores.py --sizes 24 --sets 200 --threads 1     # scores, cached
    python bench/good_guard.py --scheme fixed --sizes 19 24 30 38 --sets 200
    python bench/good_guard.py --scheme library --sizes 24 --out /tmp/goodguard-library.json
    python bench/good_guard.py --choose /tmp/goodguard-choice.json /tmp/goodguard-library.json

For n good scores whose largest is M, each candidate puts the anomalous cut at M + margin
(never below M); review covers (M, cut]. Candidates, each with one constant c:

- ``sd``:       margin = c x the standard deviation of the n scores;
- ``median``:   margin = c x (M - median);
- ``spacing``:  margin = c x the mean of the top five spacings, (M - the 6th largest) / 5;
- ``gumbel``:   cut = the upper c-confidence bound of the 95 % quantile of a Gumbel law fitted
                by maximum likelihood to the n scores (``NullFit.quantile_bound``), at least M.

Per (category, n, candidate, c), over the sets: the share of sets with more than 10 % of their
left-out normals anomalous, P(pass) = P(at most 1 of 10 sets over) for that share, mean false
alarms, mean recall (defects anomalous), mean review share (of the test images: left-out normals
+ defects) and the share of defects sent to review.

``--choose`` reads such outputs (all categories and sizes together) and, per candidate, takes the
smallest constant whose worst per-set failure over every (category, n, scheme) has a one-sided
95 % Clopper-Pearson upper bound below 5.4 % (the failure share at which "at most 1 of 10 sets
over" holds with probability 0.9); among the candidates, the one with the highest mean recall. The sets are the ones
bench/good_guard_scores.py drew (numpy seeds 0, 1, ...), from all normal images of the category.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from defectscope.methods.verdict import NullFit, weighted_gumbel

CANDIDATES = {
    "sd": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0],
    "median": [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5],
    "spacing": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
    "gumbel": [0.5, 0.75, 0.9, 0.95, 0.975, 0.99, 0.995],
}


def cut(candidate: str, c: float, own: np.ndarray, rate: float = 0.05) -> float:
    s = np.sort(own)
    top = float(s[-1])
    if candidate == "sd":
        return top + c * float(s.std(ddof=1))
    if candidate == "median":
        return top + c * (top - float(np.median(s)))
    if candidate == "spacing":
        return top + c * (top - float(s[-6])) / 5.0
    if candidate == "gumbel":
        location, scale = weighted_gumbel(s, np.ones(s.size))
        return max(top, NullFit(location, scale, float(s.size), 1).quantile_bound(rate, c))
    raise ValueError(candidate)


def draws(path: Path, scheme: str, size: int, sets: int):
    """Yield (own, left-out normals, defects) per set."""
    z = np.load(path)
    pool, total, fixed = int(z["pool"]), int(z["total"]), z["fixed"]
    if scheme == "library":
        key = f"library_{size}"
        if key not in z:
            return
        rows = z[key][:sets]
        for row in rows:
            yield row[:size], row[size:size + pool - size], row[size + pool - size:]
        return
    for seed in range(sets):
        chosen = np.random.default_rng(seed).choice(pool, size, replace=False)
        mask = np.zeros(pool, bool)
        mask[chosen] = True
        yield fixed[:pool][mask], fixed[:pool][~mask], fixed[pool:]


def p_pass(p: float, sets: int = 10) -> float:
    return (1 - p) ** sets + sets * p * (1 - p) ** (sets - 1)


def choose(rows: list[dict], limit: float = 0.054) -> None:
    from scipy import stats

    print("| candidate | chosen constant | worst per-set failure (category, n, sets) | its 95 % upper bound | mean recall | mean review | mean defects to review |")
    print("|---|---|---|---|---|---|---|")
    best = None
    for candidate, constants in CANDIDATES.items():
        for c in constants:
            sel = [r for r in rows if r["candidate"] == candidate and r["c"] == c]
            worst = max(sel, key=lambda r: stats.beta.ppf(0.95, round(r["over"] * r["sets"]) + 1, r["sets"] - round(r["over"] * r["sets"])))
            k = round(worst["over"] * worst["sets"])
            upper = float(stats.beta.ppf(0.95, k + 1, worst["sets"] - k))
            if upper < limit:
                m = lambda key: 100 * float(np.mean([r[key] for r in sel]))  # noqa: E731
                print(f"| {candidate} | {c:g} | {100 * worst['over']:.1f} ({worst['category']}, {worst['n']}, {worst['sets']}) | "
                      f"{100 * upper:.1f} | {m('recall'):.1f} | {m('review'):.1f} | {m('defects_to_review'):.1f} |")
                if best is None or m("recall") > best[2]:
                    best = (candidate, c, m("recall"))
                break
        else:
            print(f"| {candidate} | none in {constants} | | | | | |")
    print(f"\nchosen: {best[0]} {best[1]:g}" if best else "\nnone meets the target")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheme", choices=["fixed", "library"], default="fixed")
    parser.add_argument("--sizes", type=int, nargs="+", default=[19, 24, 30, 38])
    parser.add_argument("--sets", type=int, default=200)
    parser.add_argument("--min-test-normals", type=int, default=10)
    parser.add_argument("--scores", type=Path, default=Path("/tmp/goodguard-scores"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/goodguard-choice.json"))
    parser.add_argument("--detail", nargs=2, metavar=("CANDIDATE", "C"), default=["gumbel", "0.99"],
                        help="per-category table of this candidate and constant, beside the largest good score")
    parser.add_argument("--choose", nargs="+", type=Path, help="choose from these outputs of earlier runs")
    args = parser.parse_args()
    if args.choose:
        return choose([row for path in args.choose for row in json.loads(path.read_text())])
    rows = []
    for path in sorted(args.scores.glob("*.npz")):
        if path.name.endswith(".tmp.npz"):
            continue
        z = np.load(path)
        pool = int(z["pool"])
        for size in args.sizes:
            if pool - size < args.min_test_normals:
                continue
            data = list(draws(path, args.scheme, size, args.sets))
            if not data:
                continue
            for candidate, constants in CANDIDATES.items():
                for c in constants:
                    far, recall, review, moved = [], [], [], []
                    for own, normals, defects in data:
                        t, top = cut(candidate, c, own), float(own.max())
                        far.append(float((normals > t).mean()))
                        recall.append(float((defects > t).mean()))
                        band = np.concatenate([normals, defects])
                        review.append(float(((band > top) & (band <= t)).mean()))
                        moved.append(float(((defects > top) & (defects <= t)).mean()))
                    far = np.array(far)
                    over = float((far > 0.10).mean())
                    rows.append({"category": path.stem, "n": size, "sets": len(data), "candidate": candidate, "c": c,
                                 "over": over, "p_pass": p_pass(over), "mean_far": float(far.mean()), "worst_far": float(far.max()),
                                 "recall": float(np.mean(recall)), "review": float(np.mean(review)), "defects_to_review": float(np.mean(moved))})
    args.out.write_text(json.dumps(rows))
    # summary: per candidate and constant, over all categories and sizes
    print(f"scheme {args.scheme}; sets per (category, n): {sorted({r['sets'] for r in rows})}")
    print("| candidate | c | n | worst category: sets over 10 % | categories with P(pass) < 0.9 | mean over categories: sets over | recall | review | defects to review |")
    print("|---|---|---|---|---|---|---|---|---|")
    for candidate, constants in CANDIDATES.items():
        for c in constants:
            for size in args.sizes:
                sel = [r for r in rows if r["candidate"] == candidate and r["c"] == c and r["n"] == size]
                if not sel:
                    continue
                worst = max(sel, key=lambda r: r["over"])
                bad = sum(r["p_pass"] < 0.9 for r in sel)
                m = lambda k: 100 * float(np.mean([r[k] for r in sel]))  # noqa: E731
                print(f"| {candidate} | {c:g} | {size} | {100 * worst['over']:.1f} ({worst['category']}) | {bad} of {len(sel)} | "
                      f"{m('over'):.1f} | {m('recall'):.1f} | {m('review'):.1f} | {m('defects_to_review'):.1f} |")
    name, c = args.detail[0], float(args.detail[1])
    base = "sd"  # sd with c = 0 is the largest good score: today's cut
    print(f"\nper category: {name} {c:g} (and the largest good score alone)")
    print("| category | n | sets | sets over 10 %: largest / guard | P(pass): largest / guard | worst FAR: largest / guard | "
          "mean FAR: largest / guard | recall: largest / guard | review (of test images) | defects to review |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for r in rows:
            if r["candidate"] != name or r["c"] != c or r["n"] != size:
                continue
            b = next(x for x in rows if x["candidate"] == base and x["c"] == 0.0 and x["n"] == size and x["category"] == r["category"])
            f = lambda v: f"{100 * v:.1f}"  # noqa: E731
            print(f"| {r['category']} | {size} | {r['sets']} | {f(b['over'])} / {f(r['over'])} | {b['p_pass']:.2f} / {r['p_pass']:.2f} | "
                  f"{f(b['worst_far'])} / {f(r['worst_far'])} | {f(b['mean_far'])} / {f(r['mean_far'])} | "
                  f"{f(b['recall'])} / {f(r['recall'])} | {f(r['review'])} | {f(r['defects_to_review'])} |")


if __name__ == "__main__":
    main()
