"""Known-good mode (``--good``) over many random good sets: does the budget hold per set?

    python bench/bench_good_sets.py --sizes 10 24 50 --seeds 10 --out bench/results/good_sets.json

For each shared category the MuSc features of its normal training images (the good pool; the
magnetic tiles: 200 of the documented split's training normals, numpy seed 0) and of its test
batch (bench/bench_verdicts.py's batches) are computed once; each (size n, seed) draws n good
images from the pool (numpy seed), calibrates MuSc's reference mode on them exactly as
``defectscope score --good`` does (leave-one-out scores, the per-set conformal cut) and scores
the test batch against them. Reports per category and n: the worst draw's false-alarm rate, the
share of draws above 10 %, mean recall and review share; a size the pool cannot supply is run
once with the whole pool, and a size below the budget's minimum is reported as refused.

``--draw-from normals``: the good set is drawn from ALL normal images of the category (its
training normals, at most ``--pool`` of them, plus the test batch's normals) and each draw is
tested on the normals it left out plus all defective test images, so every category (the paper
types have only 24 training normals) gets ``--seeds`` different good sets of each size; a size
that leaves fewer than ``--min-test-normals`` normals to test on is skipped.

    python bench/bench_good_sets.py --draw-from normals --sizes 10 24 50 --seeds 10 --pool 100
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_verdicts import categories  # noqa: E402

from defectscope.data.batch import read_batch  # noqa: E402
from defectscope.errors import ConfigError  # noqa: E402
from defectscope.methods.musc import MuSc, MuScConfig  # noqa: E402
from defectscope.metrics import verdict_metrics  # noqa: E402


class CachedMuSc(MuSc):
    """MuSc whose "images" are indices into features computed once (same code path otherwise)."""

    def __init__(self, config: MuScConfig, cache) -> None:
        super().__init__(config)
        self._cache = cache

    def input_shape(self, images):
        return None  # the cached features were computed once, at the whole category's input

    def crop_good(self, images):
        self.reference_crop = None  # the cached features are of whole images: no part crop (as with part_crop="off")
        return list(images)

    def feature_sets(self, images, progress=None, *, native_grids=False, shape=None):
        sets, grid, embeddings = self._cache
        index = torch.as_tensor(list(images), dtype=torch.long)
        return [s[index] for s in sets], grid, embeddings[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 24, 50])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--pool", type=int, default=200, help="at most this many pool images per category (seeded)")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--draw-from", choices=["train", "normals"], default="train",
                        help="train: good sets from the training normals, tested on the fixed test batch; normals: from all "
                             "normal images, tested on the normals left out plus all defects")
    parser.add_argument("--min-test-normals", type=int, default=10, help="with --draw-from normals: skip a size leaving fewer")
    parser.add_argument("--out", type=Path, default=Path("bench/results/good_sets.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    for name, (test, pool) in categories().items():
        if args.only and name not in args.only:
            continue
        if len(pool) > args.pool:
            pool = [pool[i] for i in sorted(np.random.default_rng(0).choice(len(pool), args.pool, replace=False))]
        from_train = len(pool)  # with --draw-from normals: pool indices below this are training normals
        if args.draw_from == "normals":
            pool = pool + [s for s in test if s.label == 0]
            test = [s for s in test if s.label != 0]
        images = read_batch([s.path for s in pool] + [s.path for s in test])[0]
        config = MuScConfig()
        cache = MuSc(config).feature_sets(images, native_grids=config.native_grids)
        for size in args.sizes:
            if args.draw_from == "normals" and len(pool) - size < args.min_test_normals:
                print(json.dumps({"category": name, "good": size, "skipped": f"{len(pool)} normal images"}), flush=True)
                continue
            draws = []
            for seed in range(args.seeds if size < len(pool) else 1):
                chosen = sorted(np.random.default_rng(seed).choice(len(pool), min(size, len(pool)), replace=False).tolist())
                if args.draw_from == "normals":
                    left = [i for i in range(len(pool)) if i not in set(chosen)]
                    test_index = left + list(range(len(pool), len(images)))
                    labels = np.array([0] * len(left) + [s.label for s in test])
                else:
                    test_index = list(range(len(pool), len(images)))
                    labels = np.array([s.label for s in test])
                model = CachedMuSc(config, cache)
                try:
                    model.calibrate(chosen, config.false_alarm_rate)
                except ConfigError as error:
                    draws.append({"refused": str(error)})
                    break
                result = model.predict(test_index)
                draw = {"seed": seed, "test_normals": int((labels == 0).sum()), "test_defects": int((labels != 0).sum()),
                        **verdict_metrics(result.is_anomalous, labels, result.needs_review), "rule": result.threshold_rule,
                        "threshold": result.threshold, "review_threshold": result.review_threshold,
                        "normals_to_review": float(np.asarray(result.needs_review)[labels == 0].mean()),
                        "defects_to_review": float(np.asarray(result.needs_review)[labels != 0].mean())}
                if args.draw_from == "normals":  # where the good set and the false alarms come from (train / test split)
                    flagged = np.asarray(result.is_anomalous)[: len(left)]
                    source = np.array([i < from_train for i in left])
                    draw.update({"good_from_train": int(sum(i < from_train for i in chosen)),
                                 "false_alarms_train_normals": int(flagged[source].sum()), "left_train_normals": int(source.sum()),
                                 "false_alarms_test_normals": int(flagged[~source].sum()), "left_test_normals": int((~source).sum()),
                                 "left_normal_scores": np.round(result.decision_scores()[: len(left)], 5).tolist()})
                draws.append(draw)
            fars = [d["verdict_false_alarm_rate"] for d in draws if "refused" not in d]
            row = {"category": name, "good": min(size, len(pool)), "pool": len(pool), "draws": len(draws), "refused": draws[0].get("refused")}
            if fars:
                row.update({
                    "test_normals": draws[0]["test_normals"], "test_defects": draws[0]["test_defects"],
                    "worst_far": max(fars), "draws_over_10pct": int(sum(f > 0.10 for f in fars)),
                    "mean_far": float(np.mean(fars)),
                    "mean_recall": float(np.mean([d["verdict_recall"] for d in draws])),
                    "mean_review": float(np.mean([d["verdict_review_share"] for d in draws])),
                    "mean_normals_to_review": float(np.mean([d["normals_to_review"] for d in draws])),
                    "mean_defects_to_review": float(np.mean([d["defects_to_review"] for d in draws])),
                    "rule": draws[0]["rule"],
                })
            rows.append({**row, "per_draw": draws})
            print(json.dumps({k: v for k, v in row.items()}), flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(rows, indent=1))
    print("\n| category | good images | draws | test normals / defects | worst FAR | draws > 10 % | mean FAR | mean recall | mean review | "
          "normals / defects to review |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r.get("refused"):
            print(f"| {r['category']} | {r['good']} | - | | refused: {r['refused']} | | | | |")
            continue
        f = lambda v: f"{100 * v:.1f}"  # noqa: E731
        print(f"| {r['category']} | {r['good']} | {r['draws']} | {r['test_normals']} / {r['test_defects']} | {f(r['worst_far'])} | {r['draws_over_10pct']} | {f(r['mean_far'])} | {f(r['mean_recall'])} | {f(r['mean_review'])} | "
              f"{f(r['mean_normals_to_review'])} / {f(r['mean_defects_to_review'])} |")


if __name__ == "__main__":
    main()
