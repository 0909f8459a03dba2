"""One zero-shot method over every shared category: the table that chooses the defaults.

Categories (test images only; each batch scores itself, labels only for the metrics):
- ``bottle``: mvtec_bottle test (83 images);
- ``hazelnut_toy``: its test set (23);
- ``magnetic_tile``: the seeded 100-tile batch of bench/ablation_musc.py (80 defect-free tiles
  from the test half of the seed-0 split, 4 of each defect class, numpy seed 0);
- ``pa_*``: the six paper types of paper_impurities, test sets (72 each: 24 normal, 48 with impurities).

Every category runs through the library's evaluate path (:func:`defectscope.pipeline.
evaluate_category`: reading, detector, metrics), without writing the per-image outputs.
Columns: I-AUROC, P-AUROC, P-AP, AUPRO, ``border``: the share of normal images whose image
score (maximum of the anomaly map) lies in the outer ring of patches (a band one patch of the
finest feature grid wide), next to ``ring``, that band's share of the map area (what a
detector without border bias gives for independent patch scores; for MuSc's spatially correlated
scores about 17 to 21 %, see bench/border_null.py), and seconds per image (predict only; wall time, an upper bound
on a loaded machine). Rows: every category, the mean over all, the mean over the paper types.

    python bench/suite.py --method musc --threads 2 --json bench/results/suite_default.json
    python bench/suite.py --param border=reflect --backbone dinov2-vits14 --image-size 448
    python bench/suite.py --only pa_ --only bottle          # a subset (name prefixes)
    python bench/suite.py --pose --threads 1 --json bench/results/pose_default.json

``--pose``: the pose-and-look *proxy* (bench/pose_proxy.py, docs/POSE.md): the categories and two
mixed-looks batches, untransformed and with a seeded rotation, scale and shift per image, both
tables and a side-by-side one (``--pose-only`` skips the untransformed run).

``--pose-crop``: the crop proxy (bench/pose_proxy.py, docs/POSE_CROP.md): no padding; a square
window inside every turn of each photograph, cut from it turned (the mirror proxy's draws) and
unturned (angle 0, same scale and shift): both tables and a side-by-side one
(``--pose-crop-only``: the turned crops only).

    python bench/suite.py --pose-crop --threads 1 --json bench/results/pose_crop_default.json

``--small``: the small-part *proxy* (bench/pose_proxy.py, docs/PARTCROP.md): bottle and
hazelnut_toy, each test image shrunk to 30-45 % of its side, turned by any angle and placed at a
random position on its own plain background; only that table.

    python bench/suite.py --small --threads 1 --param part_crop=off
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
import numpy as np

from defectscope.data import magnetic_tile, mvtec_category
from defectscope.data.layouts import Category
from defectscope.pipeline import RunOptions, apply_threads, evaluate_category

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
COLUMNS = (
    ("image_auroc", "I-AUROC"),
    ("pixel_auroc", "P-AUROC"),
    ("pixel_ap", "P-AP"),
    ("pixel_aupro", "AUPRO"),
    ("border_share", "border"),
    ("ring_share", "ring"),
    ("seconds_per_image", "s/img"),
)


def magnetic_batch(shared: Path, seed: int = 0) -> Category:
    """The seeded 100-tile batch: 80 defect-free test tiles and 4 of each defect class."""
    category = magnetic_tile(shared / "magnetic_tile", seed=seed)
    rng = np.random.default_rng(seed)
    free = [s for s in category.test if s.label == 0]
    chosen = [free[i] for i in sorted(rng.choice(len(free), 80, replace=False))]
    for kind in sorted({s.defect_type for s in category.test if s.label == 1}):
        members = [s for s in category.test if s.defect_type == kind]
        chosen += [members[i] for i in sorted(rng.choice(len(members), 4, replace=False))]
    return Category("magnetic_tile", category.root, category.layout, [], chosen, category.has_masks)


def shared_categories(shared: Path = SHARED) -> list[Category]:
    """bottle, hazelnut_toy, the magnetic-tile batch and the six paper types, in that order."""
    found = [
        mvtec_category(shared / "mvtec_bottle"),
        mvtec_category(shared / "hazelnut_toy"),
        magnetic_batch(shared),
    ]
    found[0].name, found[1].name = "bottle", "hazelnut_toy"
    found += [mvtec_category(p) for p in sorted((shared / "paper_impurities").glob("pa_*")) if p.is_dir()]
    return found


def ring_mask(shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the outer band of the map one patch of ``grid`` wide."""
    height, width = shape
    rows = max(1, round(height / grid[0]))
    cols = max(1, round(width / grid[1]))
    mask = np.zeros(shape, dtype=bool)
    mask[:rows], mask[-rows:], mask[:, :cols], mask[:, -cols:] = True, True, True, True
    return mask


def border_shares(maps: np.ndarray, labels: np.ndarray, grid: tuple[int, int]) -> tuple[float | None, float]:
    """Share of normal images whose map maximum lies in the ring, and the ring's area share."""
    ring = ring_mask(tuple(maps.shape[-2:]), grid)
    normal = [m for m, y in zip(maps, labels) if y == 0]
    if not normal:
        return None, float(ring.mean())
    hits = [ring.flat[int(np.argmax(m))] for m in normal]
    return float(np.mean(hits)), float(ring.mean())


def run_suite(options: RunOptions, categories: list[Category]) -> dict[str, dict[str, float | None]]:
    """Evaluate each category; metrics plus border/ring shares and seconds per image."""
    rows: dict[str, dict[str, float | None]] = {}
    for category in categories:
        started = time.perf_counter()
        result, _, samples, _, metrics = evaluate_category(category, options)
        labels = np.array([s.label for s in samples])
        grid = tuple(result.extras.get("grid", result.anomaly_maps.shape[-2:]))
        border, ring = border_shares(result.anomaly_maps, labels, grid)  # type: ignore[arg-type]
        row = {key: metrics.get(key) for key, _ in COLUMNS[:4]}
        row.update(
            border_share=border,
            ring_share=ring,
            seconds_per_image=float(result.settings["seconds"]) / len(samples),
            wall_seconds=time.perf_counter() - started,
        )
        rows[category.name] = row
        print(f"{category.name}: " + ", ".join(f"{k}={v:.3f}" for k, v in row.items() if v is not None), flush=True)
    return rows


def with_means(rows: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Add the rows ``mean`` (all categories) and ``paper mean`` (the pa_* categories)."""
    out = dict(rows)
    groups = {
        "mean": [name for name in rows if not name.startswith("mix_")],
        "paper mean": [name for name in rows if name.startswith("pa_")],
        "texture mean": [name for name in rows if name.startswith(("pa_", "magnetic"))],
        "mixed mean": [name for name in rows if name.startswith("mix_")],
    }
    for label, names in groups.items():
        if not names:
            continue
        mean_row: dict[str, float | None] = {}
        for key, _ in COLUMNS:
            values = [rows[n][key] for n in names if rows[n].get(key) is not None]
            mean_row[key] = float(np.mean(values)) if values else None
        out[label] = mean_row
    return out


def markdown(rows: dict[str, dict[str, float | None]]) -> str:
    """The table: metrics and shares in percent, seconds per image with 3 decimals."""
    lines = ["| category | " + " | ".join(title for _, title in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, row in rows.items():
        cells = []
        for key, _ in COLUMNS:
            value = row.get(key)
            if value is None:
                cells.append("n/a")
            elif key == "seconds_per_image":
                cells.append(f"{value:.3f}")
            else:
                cells.append(f"{100 * value:.1f}")
        label = f"**{name}**" if name.endswith("mean") else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def side_by_side(
    plain: dict[str, dict[str, float | None]], posed: dict[str, dict[str, float | None]], names: tuple[str, str] = ("", "pose"),
) -> str:
    """I-AUROC, P-AUROC and P-AP (percent) of two tables, per row of both: the columns of the
    first named ``names[0]`` (nothing: untransformed), of the second ``names[1]`` (the pose proxy;
    the crop proxy's tables are "aligned" and "turned")."""
    keys = ("image_auroc", "pixel_auroc", "pixel_ap")
    titles = [f"{title} {name}".rstrip() for title in ("I-AUROC", "P-AUROC", "P-AP") for name in names]
    lines = ["| category | " + " | ".join(titles) + " |", "|---" * 7 + "|"]
    for name in posed:
        if name not in plain:
            continue
        cells = []
        for key in keys:
            for row in (plain[name], posed[name]):
                value = row.get(key)
                cells.append("n/a" if value is None else f"{100 * value:.1f}")
        label = f"**{name}**" if name.endswith("mean") else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="musc", choices=("musc", "codegraph"))
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--param", action="append", default=[], help="method setting KEY=VALUE (repeatable)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", action="append", default=[], help="keep categories whose name starts with this (repeatable)")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--json", type=Path, default=None, help="write the rows and the options here")
    parser.add_argument("--pose", action="store_true", help="also run the pose-and-look proxy (docs/POSE.md)")
    parser.add_argument("--pose-only", action="store_true", help="run only the pose-and-look proxy")
    parser.add_argument("--pose-seed", type=int, default=0)
    parser.add_argument("--small", action="store_true", help="run only the small-part proxy (docs/PARTCROP.md)")
    parser.add_argument("--pose-crop", action="store_true", help="run the crop proxy: aligned crops and turned crops (docs/POSE_CROP.md)")
    parser.add_argument("--pose-crop-only", action="store_true", help="run only the turned crops of the crop proxy")
    parser.add_argument("--crop-labels", default="follow", choices=("follow", "common"),
                        help="crop proxy: a defect that leaves the window makes its image normal (follow), or such images are left out of both the aligned and the turned batch (common)")
    args = parser.parse_args()
    params = {}
    for item in args.param:
        key, _, value = item.partition("=")
        params[key.strip()] = value.strip()
    options = RunOptions(
        method=args.method, backbone=args.backbone, weights=args.weights, image_size=args.image_size,
        threads=args.threads, method_options=params,
    )
    apply_threads(args.threads)
    categories = shared_categories(args.shared)
    if args.only:
        categories = [c for c in categories if any(c.name.startswith(prefix) for prefix in args.only)]
    described = {"method": args.method, "backbone": args.backbone, "image_size": args.image_size, "params": args.param}
    if args.small:
        from pose_proxy import EDGE_PADDED, small_category

        small = [small_category(c, args.pose_seed) for c in categories if c.name in EDGE_PADDED]
        rows = with_means(run_suite(options, small))
        print("small-part proxy:\n" + markdown(rows))
        if args.json is not None:
            write_json(args.json, {"options": {**described, "small": True, "pose_seed": args.pose_seed}, "rows": rows})
        return
    if args.pose_crop or args.pose_crop_only:
        run_crop_proxy(args, options, categories, described)
        return
    if not (args.pose or args.pose_only):
        rows = with_means(run_suite(options, categories))
        print(markdown(rows))
        if args.json is not None:
            write_json(args.json, {"options": described, "rows": rows})
        return
    from pose_proxy import mixed_categories, pose_category

    mixed = mixed_categories(shared_categories(args.shared), args.pose_seed)
    posed = [pose_category(c, args.pose_seed) for c in categories]
    posed += mixed_categories([pose_category(c, args.pose_seed) for c in shared_categories(args.shared)], args.pose_seed)
    if args.only:
        mixed = [c for c in mixed if any(c.name.startswith(prefix) for prefix in args.only)]
        posed = [c for c in posed if any(c.name.startswith(prefix) for prefix in args.only)]
    out: dict[str, object] = {"options": {**described, "pose_seed": args.pose_seed}}
    if not args.pose_only:
        plain = with_means(run_suite(options, categories + mixed))
        out["rows"] = plain
        print("untransformed:\n" + markdown(plain))
    pose_rows = with_means(run_suite(options, posed))
    out["pose_rows"] = pose_rows
    print("pose proxy:\n" + markdown(pose_rows))
    if not args.pose_only:
        print("side by side:\n" + side_by_side(plain, pose_rows))
    if args.json is not None:
        write_json(args.json, out)


def run_crop_proxy(args, options: RunOptions, categories: list[Category], described: dict) -> None:
    """The crop proxy (docs/POSE_CROP.md): the aligned crops (unless ``--pose-crop-only``), the
    turned crops, and both side by side; the count of defective images whose defect left the
    window (they are scored as normal) per batch."""
    from pose_proxy import crop_category

    out: dict[str, object] = {"options": {**described, "pose_seed": args.pose_seed, "crop": True, "crop_labels": args.crop_labels}}
    kinds = [("turned", True)] if args.pose_crop_only else [("aligned", False), ("turned", True)]
    drops: dict[str, set[int] | None] = {c.name: None for c in categories}
    if args.crop_labels == "common":
        for category in categories:
            both = [crop_category(category, args.pose_seed, turned=turned)[1]["lost"] for turned in (False, True)]
            drops[category.name] = set(both[0]) | set(both[1])
        out["crop_dropped"] = {name: sorted(d or ()) for name, d in drops.items()}
        print("left out of both batches (defect outside the aligned or the turned window): "
              + ", ".join(f"{name} {len(d or ())}" for name, d in drops.items() if d), flush=True)
    tables = {}
    for kind, turned in kinds:
        cropped, facts = [], {}
        for category in categories:
            crop, counts = crop_category(category, args.pose_seed, turned=turned, drop=drops[category.name])
            cropped.append(crop)
            facts[category.name] = counts
        lost = sum(c["left_window"] for c in facts.values())
        total = sum(c["defective"] for c in facts.values())
        fate = "left out" if args.crop_labels == "common" else "scored as normal"
        print(f"{kind} crops: {lost} of {total} defective images lost their defect to the window ({fate}): "
              + ", ".join(f"{name} {c['left_window']}" for name, c in facts.items() if c["left_window"]), flush=True)
        rows = with_means(run_suite(options, cropped))
        tables[kind] = rows
        out[f"{kind}_crop_rows"] = rows
        out[f"{kind}_crop_counts"] = facts
        print(f"{kind} crops:\n" + markdown(rows), flush=True)
    if len(tables) == 2:
        print("aligned crop vs turned crop:\n" + side_by_side(tables["aligned"], tables["turned"], ("aligned", "turned")))
    if args.json is not None:
        write_json(args.json, out)


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` to ``path`` atomically."""
    from defectscope.report.atomic import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")


if __name__ == "__main__":
    main()
