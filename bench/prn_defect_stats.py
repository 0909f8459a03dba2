"""Real defects of the shared categories against PRN's pseudo-defect families: size, shape, contrast.

Every mask is measured at PRN's input (the image and mask squashed to ``--size`` x ``--size``,
default 256, as PRN trains and predicts):
  * ``area %``: share of the image's pixels in the mask;
  * ``width``: widest inscribed diameter of the mask, px (2 x the largest distance-transform value;
    1 to 3 px is a line that one stride-4 feature cell covers less than once);
  * ``length``: pixels of the mask's skeleton (the mask's centre lines), px;
  * ``elong.``: length / mean width (mean width = area / length), i.e. how line-like it is;
  * ``contrast``: |mean grey inside - mean grey of a 4 px ring around the mask| in grey levels,
    and the same divided by the ring's grey standard deviation (``contrast/sd``).
Reported as the median [quartiles] over the masks. Real defects: every defective test image of
the category (per defect type). Pseudo defects: ``--samples`` per family made on the category's
normal training images (seeded, ``numpy.random.default_rng(seed)``), with the foreground estimate
PRN uses.

    python bench/prn_defect_stats.py --out bench/results/prn_defect_stats.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from defectscope.data import magnetic_tile, mvtec_category, read_image, read_mask
from defectscope.methods.prn.generate import PSEUDO_FAMILIES, AnomalyGenerator, _resize, pseudo_defect

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def measure(image: np.ndarray, mask: np.ndarray) -> dict[str, float] | None:
    """Size, shape and contrast of one mask on its (S x S) RGB image; None for an empty mask."""
    if not mask.any():
        return None
    grey = image.astype(np.float64).mean(axis=-1) if image.ndim == 3 else image.astype(np.float64)
    area = float(mask.sum())
    width = 2.0 * float(ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1].max())
    length = float(max(1, skeletonize(mask).sum()))
    ring = ndimage.binary_dilation(mask, iterations=4) & ~mask
    if not ring.any():
        ring = ~mask
    contrast = abs(float(grey[mask].mean()) - float(grey[ring].mean())) if ring.any() else 0.0
    spread = float(grey[ring].std()) if ring.any() else 0.0
    return {"area_pct": 100.0 * area / mask.size, "width": width, "length": length,
            "elongation": length / max(area / length, 1e-9), "contrast": contrast,
            "contrast_sd": contrast / max(spread, 1.0)}


def summary(rows: list[dict[str, float]]) -> dict[str, list[float]]:
    return {key: [round(float(np.percentile([r[key] for r in rows], q)), 3) for q in (25, 50, 75)] for key in rows[0]}


def categories(shared: Path) -> dict[str, Path]:
    found = {"magnetic_tile": shared / "magnetic_tile", "mvtec_bottle": shared / "mvtec_bottle"}
    found.update({p.name: p for p in sorted((shared / "paper_impurities").glob("pa_*")) if p.is_dir()})
    return {k: v for k, v in found.items() if v.is_dir()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(SHARED))
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--normals", type=int, default=12, help="normal training images the pseudo defects are made on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    shape = (args.size, args.size)
    found = categories(Path(args.shared))
    names = args.only or list(found)
    report: dict[str, dict] = {}
    for name in names:
        root = found.get(name)
        if root is None:
            sys.exit(f"no shared category '{name}' under {args.shared}")
        category = magnetic_tile(root, seed=args.seed) if (root / "MT_Free").is_dir() else mvtec_category(root)
        by_type: dict[str, list] = {}
        for sample in category.test:
            if sample.label != 1:
                continue
            image = _resize(read_image(sample.path), shape)
            mask = _resize(read_mask(sample.mask_path), shape)
            row = measure(image, mask)
            if row is not None:
                by_type.setdefault(f"real:{sample.defect_type}", []).append(row)
        rng = np.random.default_rng(args.seed)
        chosen = rng.choice(len(category.train), min(args.normals, len(category.train)), replace=False)
        generator = AnomalyGenerator([read_image(category.train[int(i)].path) for i in chosen], image_size=args.size)
        for family in PSEUDO_FAMILIES:
            rows = []
            for draw in range(args.samples):
                index = draw % len(generator.normals)
                image, mask, _ = pseudo_defect(generator.normals[index], rng, foreground=generator.foreground(index),
                                               other_images=generator.normals[:4], families=(family,))
                row = measure(image, mask)
                if row is not None:
                    rows.append(row)
            by_type[f"pseudo:{family}"] = rows
        report[name] = {kind: {"n": len(rows), **summary(rows)} for kind, rows in by_type.items() if rows}
        print(f"\n{name}")
        print(f"{'masks':<18} {'n':>3} {'area %':>18} {'width px':>16} {'length px':>18} {'elong.':>16} {'contrast':>18} {'contrast/sd':>14}")
        for kind, stats in report[name].items():
            cells = [f"{stats[k][1]:.2f} [{stats[k][0]:.1f}-{stats[k][2]:.1f}]" for k in ("area_pct", "width", "length", "elongation", "contrast", "contrast_sd")]
            print(f"{kind:<18} {stats['n']:>3} " + " ".join(f"{c:>17}" for c in cells))
    if args.out:
        from defectscope.report.atomic import atomic_write_text

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(args.out), json.dumps({"size": args.size, "seed": args.seed, "samples": args.samples,
                                                     "categories": report}, indent=1))


if __name__ == "__main__":
    main()
