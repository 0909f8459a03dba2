"""Filling the corners a canonical turn cuts off (docs/CANONICAL_POSE.md section 9).

Where ``canonical_pose=auto`` turns a batch, a same-size turn leaves each image's cut-off corners
without a score of their own. ``MuSc.score_posed`` fills them from a second pass over the unturned
batch (:data:`defectscope.methods.canonical.FILL`). This script scores each named posed batch of
the pose proxy (bench/pose_proxy.py) once through the library's evaluate path with the fill on,
keeps both passes' maps (the turned pass turned back, the unturned pass) and measures every
variant from the same two passes, so that the variants differ only in how they are combined:

- ``edge``: no fill, the turned map's nearest edge value in the corners (the rule before the fill);
- ``unturned``: the unturned pass alone (the pixel metrics of the default path; its image score
  goes through RsCIN with the turned pass's embeddings, so it is not the default's exactly);
- ``MATCHING/a``: corners from the unturned pass brought to scale by MATCHING (quantile: one
  quantile map for the batch; affine: mean and standard deviation per image, both on the region
  both passes cover); image score from the turned region only;
- ``MATCHING/b``: the same maps, image score from the filled map;
- ``MATCHING/min`` and ``MATCHING/mean``: the minimum / mean of the two passes' maps where both
  cover, the unturned pass in the corners; image score from that map (``.../a``: from the
  turned pass's region only); ``quantile/meanW/a``: the weighted mean, W on the turned pass;
  ``quantile/unturned/a``: the unturned pass's map everywhere (brought to scale), image score from
  the turned pass's region (the library's rule).

The row of the library's own setting (the module constants at the time of the run) is checked
against the evaluate path's own metrics.

    python bench/canonical_fill.py --threads 1                 # posed magnetic_tile
    python bench/canonical_fill.py --threads 1 --only pa_fvn   # a batch whose gate stays shut: no rows
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from defectscope.methods import canonical  # noqa: E402
from defectscope.methods.musc import MuSc  # noqa: E402
from defectscope.pipeline import RunOptions, apply_threads, category_metrics, evaluate_category  # noqa: E402

KEYS = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="posed batches whose name starts with this (default magnetic)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--pose-seed", type=int, default=0)
    args = parser.parse_args()
    from pose_proxy import pose_category
    from suite import SHARED, shared_categories

    apply_threads(args.threads)
    prefixes = args.only or ["magnetic"]
    categories = [pose_category(c, args.pose_seed) for c in shared_categories(SHARED) if any(c.name.startswith(p) for p in prefixes)]
    seen: dict[str, object] = {}
    fill, result_from_maps = canonical.fill_corners, MuSc.result_from_maps

    def keep_fill(turned, plain, covered, *rest, **named):
        seen.update(turned=np.array(turned), plain=np.array(plain), covered=np.array(covered))
        return fill(turned, plain, covered, *rest, **named)

    def keep_result(self, maps, embeddings, grid, paths=None, score_maps=None, facts=None):
        seen.update(detector=self, embeddings=embeddings, grid=grid, paths=paths, facts=facts)
        return result_from_maps(self, maps, embeddings, grid, paths, score_maps=score_maps, facts=facts)

    canonical.fill_corners, MuSc.result_from_maps = keep_fill, keep_result
    blend, score = canonical.FILL_BLEND, "a" if canonical.FILL_SCORE == "turned" else "b"
    own = f"{canonical.FILL}/{score}" if blend == "none" else f"{canonical.FILL}/{blend}" + ("/a" if score == "a" else "")
    for category in categories:
        seen.clear()
        started = time.perf_counter()
        options = RunOptions(threads=args.threads, method_options={"canonical_pose": "auto"})
        result, images, samples, _, metrics = evaluate_category(category, options)
        wall = time.perf_counter() - started
        facts = result.extras.get("canonical_pose", {})
        print(f"{category.name}: turned={facts.get('turned')} corner_fill={facts.get('corner_fill')} wall {wall:.0f} s", flush=True)
        if "plain" not in seen:
            print("  no corners filled (gate shut or nothing cut off): no variants", flush=True)
            continue
        back, plain, covered = seen["turned"], seen["plain"], seen["covered"]
        detector, embeddings, grid, paths, batch_facts = seen["detector"], seen["embeddings"], seen["grid"], seen["paths"], seen["facts"]
        variants: dict[str, tuple[np.ndarray, np.ndarray]] = {"edge": (back, back), "unturned": (plain, plain)}
        for matching in ("quantile", "affine"):
            filled = canonical.fill_corners(back, plain, covered, matching, "none")
            variants[f"{matching}/a"] = (filled, back)
            variants[f"{matching}/b"] = (filled, filled)
            for blend in ("min", "mean"):
                both = canonical.fill_corners(back, plain, covered, matching, blend)
                variants[f"{matching}/{blend}"] = (both, both)
                variants[f"{matching}/{blend}/a"] = (both, back)
        for weight in ("0.25", "0.75"):
            variants[f"quantile/mean{weight}/a"] = (canonical.fill_corners(back, plain, covered, "quantile", f"mean{weight}"), back)
        variants["quantile/unturned/a"] = (canonical.fill_corners(back, plain, covered, "quantile", "unturned"), back)
        print(f"  cut-off share {1.0 - covered.mean():.3f}; I-AUROC / P-AUROC / P-AP / AUPRO", flush=True)
        print("| variant | I-AUROC | P-AUROC | P-AP | AUPRO |\n|---|---|---|---|---|")
        for name, (maps, score) in variants.items():
            redone = detector.result_from_maps(torch.from_numpy(np.ascontiguousarray(maps)), embeddings, grid, paths, score_maps=torch.from_numpy(np.ascontiguousarray(score)), facts=batch_facts)
            found = category_metrics(redone, samples, images, category.has_masks)
            if name == own:
                same = all(found[k] == metrics[k] for k in KEYS)
                print(f"  (library setting {own}: {'equal to' if same else 'DIFFERS from'} the evaluate path's metrics)", flush=True)
            print(f"| {name} | " + " | ".join(f"{100 * found[k]:.2f}" for k in KEYS) + " |", flush=True)


if __name__ == "__main__":
    main()
