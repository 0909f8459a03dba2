"""Reference banks against exact mutual scoring, on every shared category.

For each batch the default MuSc features are extracted once; the exact mutual scores and the
bank scores for each bank size M (a seeded random sample of the batch; sampled images leave
themselves out) come from the same feature sets, so the rows differ only by the scoring rule.
Sizes M >= N - 1 would be the exact rule again and are left out.

Batches: the test sets of mvtec_bottle and hazelnut_toy, the magnetic-tile batch of
bench/ablation_musc.py (100 tiles), and the test sets of the six paper_impurities types.

    python bench/bench_bank.py --sizes 10 20 50 100 200 400 --seeds 0 1 2 --out bench/results/bank.json

Prints a markdown table: per batch and M the metrics (mean over seeds, and the spread
max - min of I-AUROC and P-AP), the Spearman rank correlation of the image scores with the exact
ones and the median relative difference of the patch scores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ablation_musc import SHARED, batches  # noqa: E402

from defectscope.data import mvtec_category, read_image  # noqa: E402
from defectscope.methods.bank import bank_scores, reference_sample, self_positions  # noqa: E402
from defectscope.methods.musc import MuSc, MuScConfig, mutual_scores  # noqa: E402
from defectscope.metrics import image_metrics, pixel_metrics  # noqa: E402
from defectscope.pipeline import _mask_at, load_ground_truth  # noqa: E402

KEYS = ("image_auroc", "image_ap", "pixel_auroc", "pixel_ap", "pixel_aupro")


def all_batches(shared: Path) -> dict[str, list]:
    out = batches(shared)
    for root in sorted((shared / "paper_impurities").glob("pa_*")):
        out[root.name] = mvtec_category(root).test
    return out


def metrics_of(musc: MuSc, patch: torch.Tensor, grid, embeddings, labels, masks) -> tuple[dict, np.ndarray]:
    result = musc.result_from_patch_scores(patch, grid, embeddings)
    values = dict(image_metrics(result.image_scores, labels))
    values.update(pixel_metrics(result.anomaly_maps, masks))
    return values, result.image_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10, 20, 50, 100, 200, 400])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=None, help="batch names to run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/bank.json"))
    parser.add_argument("--table", type=Path, nargs="*", help="only print the table of earlier runs' printed JSON lines")
    args = parser.parse_args()
    if args.table:
        print_table([json.loads(line) for path in args.table for line in path.read_text().splitlines() if line.startswith("{")])
        return
    torch.set_num_threads(args.threads)
    musc = MuSc(MuScConfig(max_references=None))
    cfg = musc.config  # the default interval and border rule, as a MuSc run uses them
    rows = []
    for name, samples in all_batches(SHARED).items():
        if args.only and name not in args.only:
            continue
        images = [read_image(s.path) for s in samples]
        labels = np.array([s.label for s in samples])
        masks = np.stack([_mask_at(m, musc.backbone.image_size) for m in load_ground_truth(samples, images)])
        sets, grid, embeddings = musc.feature_sets(images, native_grids=True)
        n = len(images)
        started = time.perf_counter()
        exact_sets = [mutual_scores(s, cfg.lower, cfg.upper) for s in sets]
        exact_seconds = time.perf_counter() - started
        exact_patch = musc._combine(exact_sets, grid)
        exact_metrics, exact_images = metrics_of(musc, exact_patch, grid, embeddings, labels, masks)
        rows.append({"batch": name, "n": n, "m": "exact", "seconds": exact_seconds, **exact_metrics})
        print(json.dumps(rows[-1]), flush=True)
        for m in [m for m in args.sizes if m < n - 1]:
            per_seed = []
            for seed in args.seeds:
                chosen = reference_sample(n, m, seed).tolist()
                skip = self_positions(range(n), chosen)
                started = time.perf_counter()
                patch = musc._combine([bank_scores(s, s[chosen], cfg.lower, cfg.upper, self_index=skip) for s in sets], grid)
                seconds = time.perf_counter() - started
                values, image_scores = metrics_of(musc, patch, grid, embeddings, labels, masks)
                values["spearman"] = float(spearmanr(image_scores, exact_images).statistic)
                values["patch_rel_diff"] = float(((patch - exact_patch).abs() / exact_patch.abs().clamp(min=1e-12)).median())
                values["seconds"] = seconds
                per_seed.append(values)
            row = {"batch": name, "n": n, "m": m, "seeds": len(per_seed)}
            for key in per_seed[0]:
                row[key] = float(np.mean([v[key] for v in per_seed]))
            for key in ("image_auroc", "pixel_ap"):
                row[f"{key}_spread"] = float(np.ptp([v[key] for v in per_seed]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print("| batch | N | M | I-AUROC | I-AP | P-AUROC | P-AP | AUPRO | spread I-AUROC / P-AP | Spearman vs exact | median rel. patch diff | scoring s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = " | ".join(f"{100 * row[k]:.1f}" for k in KEYS)
        if row["m"] == "exact":
            extra = "- | 1 | 0 |"
        else:
            spread = f"{100 * row['image_auroc_spread']:.1f} / {100 * row['pixel_ap_spread']:.1f}" if row["seeds"] > 1 else "-"
            extra = f"{spread} | {row['spearman']:.3f} | {100 * row['patch_rel_diff']:.2f} % |"
        print(f"| {row['batch']} | {row['n']} | {row['m']} | {cells} | {extra} {row['seconds']:.1f} |")


if __name__ == "__main__":
    main()
