"""Pose- and look-robust scoring options of MuSc, compared on cached similarity tables.

For every batch of the suite and of the pose-and-look proxy (bench/pose_proxy.py; all of it is
dev data) the expensive part is computed once and cached under ``--cache``: the backbone
features of the images and of their turned copies (quarter turns), the nearest-similarity
tables per feature set (unturned references; the half turn; the best of the two odd quarter
turns) and each patch's best match in its own image outside a neighbourhood. Every candidate
rule (:mod:`defectscope.methods.pose`) is then scored from the cache with the library's
functions (``scores_from_tables``, the border rule, ``result_from_patch_scores``, the metrics of
the evaluate path), so the candidates differ only in the rule. With no option on, a candidate is
the default MuSc (checked against bench/suite.py).

    python bench/pose_ablation.py --threads 1                  # compute what is missing, evaluate
    python bench/pose_ablation.py --no-compute --json bench/results/pose_ablation.json
    python bench/pose_ablation.py --only pose/pa_ --variants base,rot4

Seconds per image: backbone (unturned), backbone (each turned copy), similarity tables (plain
and the extra turned blocks), own-image tables; wall time with one thread on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pose_proxy import mixed_categories, pose_category  # noqa: E402
from suite import SHARED, shared_categories  # noqa: E402

from defectscope.data.io import read_image  # noqa: E402
from defectscope.methods import pose  # noqa: E402
from defectscope.methods.musc import MuSc, MuScConfig, calibrate_border, nearest_similarities  # noqa: E402
from defectscope.metrics import image_metrics, pixel_metrics  # noqa: E402
from defectscope.pipeline import _mask_at, load_ground_truth  # noqa: E402

RADII = (2, 4)
TURNS = {1: ("t0",), 2: ("t0", "t2"), 4: ("t0", "t2", "t13")}

VARIANTS: dict[str, dict] = {
    "base": {},
    "rot2": {"turns": 2},
    "rot4": {"turns": 4},
    "self_on_min": {"self_term": "on"},
    "self_on_mean": {"self_term": "on", "self_mix": "mean"},
    "self_on_min_r2": {"self_term": "on", "self_radius": 2},
    "self_auto": {"self_term": "auto"},
    "rot4_self_auto": {"turns": 4, "self_term": "auto"},
    "rot4_self_on": {"turns": 4, "self_term": "on"},
    "top1pct": {"image_top": 0.01},
    "top0.1pct": {"image_top": 0.001},
    "near20": {"nearest_images": 20},
    "near20_low": {"nearest_images": 20, "lower": 0.0, "upper": 0.5},
    "near_half": {"nearest_images": "half"},
    "low03": {"lower": 0.0, "upper": 0.3},
    "looks": {"looks_gate": 0.89},
    "looks_rot4": {"looks_gate": 0.89, "turns": 4},
    "low05": {"lower": 0.0, "upper": 0.5},
    "mid": {"lower": 0.25, "upper": 0.75},
    "near_quarter": {"nearest_images": "quarter"},
    "near_half_low03": {"nearest_images": "half", "lower": 0.0, "upper": 0.3},
}


def batches(shared: Path, seed: int) -> list[tuple[str, object]]:
    """("pose/NAME" or "plain/NAME", Category) for the proxy and the untransformed batches."""
    plain = shared_categories(shared)
    posed = [pose_category(c, seed) for c in plain]
    out = [(f"pose/{c.name}", c) for c in posed + mixed_categories(posed, seed)]
    out += [(f"plain/{c.name}", c) for c in plain + mixed_categories(plain, seed)]
    return out


def compute(category, detector: MuSc, path: Path, turned_copies: bool = True) -> None:
    """Fill the cache file of one batch (without ``turned_copies``: the unturned tables only)."""
    samples = category.test
    images = [read_image(s.path) for s in samples]
    gt_full = load_ground_truth(samples, images) if category.has_masks else None
    timing: dict[str, float] = {}
    started = time.perf_counter()
    sets, grid, embeddings = detector.feature_sets(images, native_grids=detector.config.native_grids)
    timing["backbone"] = time.perf_counter() - started
    shape = detector.input_shape(images)
    square = shape is None or shape[0] == shape[1]
    group = pose.turn_group(4, square) if turned_copies else pose.turn_group(1, square)
    turned_sets = []
    for turns, mirrored in group[1:]:
        started = time.perf_counter()
        turned = [pose.turn_image(image, turns, mirrored) for image in images]
        turned_sets.append(detector.feature_sets(turned, native_grids=detector.config.native_grids)[0])
        timing[f"backbone_turn{turns}{'m' if mirrored else ''}"] = time.perf_counter() - started
    tables: dict[str, list[torch.Tensor]] = {"t0": [], "t2": [], "t13": []} if turned_copies else {"t0": []}
    timing["tables_plain"] = timing["tables_turned"] = 0.0
    for index, plain in enumerate(sets):
        started = time.perf_counter()
        tables["t0"].append(nearest_similarities(plain, workers=1))
        timing["tables_plain"] += time.perf_counter() - started
        if not turned_copies:
            continue
        started = time.perf_counter()
        copies = [copy[index] for copy in turned_sets]
        per_turn = pose.rotated_similarities(plain, copies, group[1:], pose.set_grid(plain.shape[1], grid), per_turn=True)
        timing["tables_turned"] += time.perf_counter() - started
        # group[1:] is (quarter, half, three quarters) for square inputs, (half, mirror, mirror+half) else
        tables["t2"].append(per_turn[1] if square else per_turn[0])
        tables["t13"].append(torch.maximum(per_turn[0], per_turn[2]) if square else torch.maximum(per_turn[1], per_turn[2]))
    started = time.perf_counter()
    own = {r: pose.self_tables(sets, grid, detector.config.degrees, r) for r in RADII}
    timing["self"] = (time.perf_counter() - started) / len(RADII)
    stride = detector.backbone.image_size / detector.backbone.grid[0]
    size = (int(round(grid[0] * stride)), int(round(grid[1] * stride)))
    gt = np.stack([_mask_at(m, size) for m in gt_full]) if gt_full is not None else None
    payload = {
        "tables": tables, "own": own, "grid": grid, "embeddings": embeddings, "gt": gt,
        "labels": [s.label for s in samples], "paths": [str(s.path) for s in samples],
        "has_masks": category.has_masks, "square": square, "timing": timing, "count": len(images),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".part")
    torch.save(payload, partial)
    partial.replace(path)


def evaluate(payload: dict, detector: MuSc, variant: dict) -> dict:
    """One candidate rule on one cached batch: metrics and the batch facts."""
    n = payload["count"]
    turns = variant.get("turns", 1)
    names = TURNS[turns]
    if any(k not in payload["tables"] for k in names):
        return None
    tables = [torch.stack([payload["tables"][k][i] for k in names]).amax(dim=0) for i in range(len(payload["tables"]["t0"]))]
    near = variant.get("nearest_images")
    if near == "half":
        near = max(1, (n - 1) // 2)
    elif near == "quarter":
        near = max(1, (n - 1) // 4)
    config = replace(detector.config, image_top=variant.get("image_top", 0.0), looks_gate=variant.get("looks_gate"),
                     lower=variant.get("lower", detector.config.lower), upper=variant.get("upper", detector.config.upper))
    lower, upper, looks = pose.batch_interval(config, payload["embeddings"])
    scores, facts = pose.scores_from_tables(
        tables, payload["grid"], payload["embeddings"], lower, upper,
        self_sims=payload["own"][variant.get("self_radius", 4)] if variant.get("self_term", "off") != "off" else None,
        self_term=variant.get("self_term", "off"), self_mix=variant.get("self_mix", "min"),
        self_gate=variant.get("self_gate", config.self_gate), nearest_images=near,
    )
    grid = payload["grid"]
    scores = calibrate_border(scores, grid, config.border_depth)
    probe = MuSc(config, backbone=detector.backbone)
    result = probe.result_from_patch_scores(scores, grid, payload["embeddings"])
    # the evaluate path's image and pixel metrics (category_metrics without the verdict columns)
    metrics = dict(image_metrics(result.image_scores, np.array(payload["labels"])))
    if payload["gt"] is not None:
        metrics.update(pixel_metrics(result.anomaly_maps, payload["gt"]))
    keep = {k: metrics.get(k) for k in ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro")}
    keep.update(facts)
    keep.update(looks)
    return keep


def seconds_per_image(payload: dict, variant: dict) -> float:
    """Cost of the rule per image from the cached timings (backbone + tables + own-image part)."""
    t = payload["timing"]
    turns = variant.get("turns", 1)
    turned = [v for k, v in t.items() if k.startswith("backbone_turn")]
    cost = t["backbone"] + t["tables_plain"]
    if turns > 1:
        share = 1 / 3 if turns == 2 else 1.0  # the half turn is one of the three turned copies
        cost += share * (sum(turned) + t["tables_turned"])
    if variant.get("self_term", "off") != "off":
        cost += t["self"]
    return cost / payload["count"]


def group_means(rows: dict[str, dict], key: str) -> dict[str, float | None]:
    """Means of ``key`` over the batch groups of one variant (only the batches it has)."""
    def mean(labels: list[str]) -> float | None:
        values = [rows[k][key] for k in labels if rows[k].get(key) is not None]
        return float(np.mean(values)) if values else None

    groups = {}
    for side in ("plain", "pose"):
        names = [k for k in rows if k.startswith(side + "/")]
        groups[f"{side} all"] = mean([k for k in names if "/mix_" not in k])
        groups[f"{side} paper"] = mean([k for k in names if "/pa_" in k])
        groups[f"{side} textures"] = mean([k for k in names if "/pa_" in k or "/magnetic" in k])
        groups[f"{side} mixed"] = mean([k for k in names if "/mix_" in k])
    both = [k for k in rows if "/mix_" not in k]
    groups["suite + pose"] = mean(both)
    return groups


def markdown(rows: dict[str, dict[str, dict]], timings: dict[str, dict[str, float]], key: str) -> str:
    """One table per metric: a row per variant, a column per batch, then the group means."""
    variants = [v for v in rows if rows[v]]
    if not variants:
        return ""
    labels = list(rows[variants[0]])
    for v in variants[1:]:
        labels += [k for k in rows[v] if k not in labels]
    short = [k.replace("plain/", "").replace("pose/", "P:").replace("pa_", "").replace("_tl", "").replace("_rl", "") for k in labels]
    group_names = list(group_means(rows[variants[0]], key))
    head = "| variant | " + " | ".join(short) + " | " + " | ".join(group_names) + " | s/img |"
    lines = [head, "|---" * (len(labels) + len(group_names) + 2) + "|"]
    for v in variants:
        cells = [f"{100 * rows[v][k][key]:.1f}" if k in rows[v] and rows[v][k].get(key) is not None else "—" for k in labels]
        means = group_means(rows[v], key)
        cells += [f"{100 * means[g]:.1f}" if means[g] is not None else "—" for g in group_names]
        cells.append(f"{np.mean(list(timings[v].values())):.3f}" if timings[v] else "—")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/pose-cache"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", action="append", default=[], help="batch name prefixes, e.g. pose/pa_")
    parser.add_argument("--variants", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--no-compute", action="store_true", help="evaluate cached batches only")
    parser.add_argument("--no-evaluate", action="store_true", help="fill the cache only")
    parser.add_argument("--recompute", action="store_true", help="recompute the cached batches that --only selects")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--turned", action="append", default=[],
                        help="batch name prefixes that get the turned copies (default: all); others get the unturned tables only")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    detector = MuSc(MuScConfig())
    wanted = VARIANTS if args.variants is None else {k: VARIANTS[k] for k in args.variants.split(",")}
    rows: dict[str, dict[str, dict]] = {name: {} for name in wanted}
    timings: dict[str, dict[str, float]] = {name: {} for name in wanted}
    for label, category in batches(args.shared, args.seed):
        if args.only and not any(label.startswith(p) for p in args.only):
            continue
        path = args.cache / f"{label.replace('/', '__')}.pt"
        if not path.exists() or args.recompute:
            if args.no_compute:
                continue
            started = time.perf_counter()
            turned = not args.turned or any(label.startswith(p) for p in args.turned)
            compute(category, detector, path, turned)
            print(f"{label}: cached in {time.perf_counter() - started:.0f} s", flush=True)
        if args.no_evaluate:
            continue
        payload = torch.load(path, weights_only=False)
        for name, variant in wanted.items():
            r = evaluate(payload, detector, variant)
            if r is None:
                continue
            rows[name][label] = r
            timings[name][label] = seconds_per_image(payload, variant)
            print(f"{label} {name}: I {100 * r['image_auroc']:.1f} P {100 * (r['pixel_auroc'] or 0):.1f} AP {100 * (r['pixel_ap'] or 0):.1f}"
                  + (f" ratio {r['own_image_ratio']:.3f} self {r['self_term_used']}" if "own_image_ratio" in r else "")
                  + (f" agreement {r['embedding_agreement']:.3f} several {r['several_looks']}" if "embedding_agreement" in r else ""), flush=True)
    if not args.no_evaluate:
        for key in ("image_auroc", "pixel_auroc", "pixel_ap"):
            print(f"\n{key}:\n" + markdown(rows, timings, key))
    if args.json is not None and not args.no_evaluate:
        from defectscope.report.atomic import atomic_write_text

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps({"rows": rows, "seconds_per_image": timings, "variants": wanted}, indent=1) + "\n")


if __name__ == "__main__":
    main()
