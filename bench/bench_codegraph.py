"""MuSc vs CoDeGraph on the seeded batches of bench/recurring_batches.py.

Both methods run end to end (features, mutual scoring, maps, RsCIN) with the same backbone and
settings; each batch is read once, then MuSc and CoDeGraph are timed one after the other.
Metrics: image AUROC, pixel AP, pixel AUROC, pixel F1-max (pooled at the model resolution, as
``pipeline.category_metrics`` does). An untimed "oracle" row re-scores with all defective images
given as one group (``CoDeGraph.analyse(groups=...)``): what perfect community detection would
give with this backbone and these settings. Prints a Markdown table and writes JSON with ``--json``.
``--histogram`` also draws the burnout histogram of docs/CODEGRAPH.md from the recurring batches.

    python bench/bench_codegraph.py --size 80 --seed 0 --json bench/results/codegraph.json \
        --histogram docs/codegraph_burnout_hist.png
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from recurring_batches import Batch, build_batches  # noqa: E402

from defectscope.methods.codegraph import CoDeGraph, CoDeGraphConfig, CoDeGraphScores  # noqa: E402
from defectscope.methods.musc import MuSc, MuScConfig  # noqa: E402
from defectscope.metrics import image_metrics  # noqa: E402
from defectscope.pipeline import category_metrics, load_ground_truth, read_batch  # noqa: E402

METRICS = ("image_auroc", "pixel_ap", "pixel_auroc", "pixel_f1_max")


def patch_truth(masks: np.ndarray, grid: tuple[int, int], share: float = 0.5) -> np.ndarray:
    """(N, L) bool: patches whose cell of the feature grid is at least ``share`` defect pixels."""
    cells = F.adaptive_avg_pool2d(torch.as_tensor(masks, dtype=torch.float32).unsqueeze(1), grid)
    return (cells.flatten(1) >= share).numpy()


def run_batch(batch: Batch, common: dict, options: dict) -> tuple[dict, CoDeGraphScores, np.ndarray]:
    """Metrics and seconds of both methods on one batch, plus CoDeGraph's analysis and the
    ground-truth masks at the model resolution."""
    images, _, _ = read_batch([s.path for s in batch.samples])
    paths = [str(s.path) for s in batch.samples]
    row: dict = {"batch": batch.name, "images": len(images), "defective": sum(s.label for s in batch.samples)}
    musc = MuSc(MuScConfig(**common))
    started = time.perf_counter()
    musc_result = musc.predict(images, paths)
    row["musc_seconds"] = time.perf_counter() - started
    codegraph = CoDeGraph(CoDeGraphConfig(**common, **options))
    started = time.perf_counter()
    scores = codegraph.analyse(images)
    codegraph_result = codegraph.result(scores, paths)
    row["codegraph_seconds"] = time.perf_counter() - started
    labels = np.array([s.label for s in batch.samples])
    oracle = codegraph.result(codegraph.analyse(images, groups=[np.nonzero(labels)[0].tolist()]), paths)
    for name, result in (("musc", musc_result), ("codegraph", codegraph_result), ("oracle", oracle)):
        metrics = category_metrics(result, batch.samples, images, has_masks=True)
        row.update({f"{name}_{key}": metrics[key] for key in METRICS})
    row["communities"] = [len(c) for c in scores.communities]
    row["community_defective"] = [int(labels[c].sum()) for c in scores.communities]
    size = codegraph_result.anomaly_maps.shape[-2:]
    from defectscope.pipeline import _mask_at

    masks = np.stack([_mask_at(m, size) for m in load_ground_truth(batch.samples, images)])
    return row, scores, masks


def markdown(rows: list[dict]) -> str:
    """The results as a Markdown table (values in percent, seconds, communities)."""
    head = "| batch | N (def.) | method | I-AUROC | P-AP | P-AUROC | P-F1 | time s | communities (defective members) |"
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        for method in ("musc", "codegraph", "oracle"):
            values = [row[f"{method}_{key}"] for key in METRICS]
            cells = " | ".join("n/a" if v is None else f"{100 * v:.1f}" for v in values)
            groups, seconds = "", "-"
            if method == "codegraph":
                groups = ", ".join(f"{size} ({d})" for size, d in zip(row["communities"], row["community_defective"])) or "none"
            if method == "oracle":
                groups = "all defective images, given"
            else:
                seconds = f"{row[f'{method}_seconds']:.1f}"
            lines.append(
                f"| {row['batch']} | {row['images']} ({row['defective']}) | {method} | {cells} | {seconds} | {groups} |"
            )
    return "\n".join(lines)


def burnout_histogram(samples: list[tuple[str, np.ndarray, np.ndarray]], threshold: float, path: Path) -> None:
    """Histogram of log10 burnout of recurring-defect patches vs patches of normal images."""
    from matplotlib.figure import Figure

    columns = min(3, len(samples))
    rows = -(-len(samples) // columns)
    figure = Figure(figsize=(4.4 * columns, 3.2 * rows), dpi=90)
    for index, (name, defect, normal) in enumerate(samples):
        axes = figure.add_subplot(rows, columns, index + 1)
        bins = np.linspace(-0.5, 3.5, 81)
        axes.hist(np.log10(np.clip(normal, 10**-0.5, None)), bins=bins, density=True, alpha=0.6, label=f"normal images ({normal.size} patches)")
        axes.hist(np.log10(np.clip(defect, 10**-0.5, None)), bins=bins, density=True, alpha=0.6, label=f"inside defect masks ({defect.size})")
        axes.axvline(np.log10(threshold), color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
        axes.set_yscale("log")
        axes.set_title(name)
        axes.set_xlabel("log10 burnout (endurance ratio)")
        axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", nargs="*", default=None, help="names of batches to run (default: all)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--histogram", type=Path, default=None)
    parser.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="CoDeGraphConfig option, e.g. burnout_threshold=25")
    args = parser.parse_args()
    options = {}
    for item in args.option:
        name, _, value = item.partition("=")
        default = getattr(CoDeGraphConfig(), name)
        options[name] = value.lower() in ("1", "true", "yes") if isinstance(default, bool) else type(default)(value)
    torch.set_num_threads(args.threads)
    common = {"backbone": args.backbone, "image_size": args.image_size}
    config = CoDeGraphConfig(**options)
    rows, histogram = [], []
    for batch in build_batches(args.size, args.seed):
        if args.batches and batch.name not in args.batches:
            continue
        row, scores, masks = run_batch(batch, common, options)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if batch.recurring:
            truth = patch_truth(masks, scores.grid)
            normal_images = np.array([s.label == 0 for s in batch.samples])
            ratio = scores.burnout.ratio.numpy()
            histogram.append((batch.name, ratio[truth], ratio[normal_images].ravel()))
            defect, normal = ratio[truth], ratio[normal_images].ravel()
            separation = image_metrics(np.concatenate([defect, normal]),
                                       np.concatenate([np.ones(defect.size), np.zeros(normal.size)]))["image_auroc"]
            print(f"burnout {batch.name}: {defect.size} defect patches, patch AUROC {separation:.2f}, median "
                  f"{np.median(defect):.1f} / {np.median(normal):.1f}, share > {config.burnout_threshold:g}: "
                  f"{100 * np.mean(defect > config.burnout_threshold):.0f} % / {100 * np.mean(normal > config.burnout_threshold):.2f} %",
                  flush=True)
    print(markdown(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    if args.histogram is not None and histogram:
        burnout_histogram(histogram, config.burnout_threshold, args.histogram)


if __name__ == "__main__":
    main()
