"""Gate statistics of the canonical pose (docs/CANONICAL_POSE.md) on the suite's batches.

For every batch of bench/suite.py (untransformed) and of its pose proxy (bench/pose_proxy.py),
per fold (2: angles modulo 180 degrees; 4: modulo 90): the median coherence and the circular
spread of the confident images' angles; the fold the batch chooses, its share of confident
images, the decision of ``canonical_pose=auto`` and the estimate's seconds per image. Optionally the small-part proxy and the elpv cells (``--elpv N``: the
demo's sample of N mono and N poly cells). No backbone runs: this only reads the images.

    python bench/canonical_pose.py
    python bench/canonical_pose.py --small --elpv 60
    python bench/canonical_pose.py --no-plain --crop        # the crop proxy's batches too

``--oracle NAME``: the upper bound of a canonical pose on the proxy. The posed batch NAME is
scored (library evaluate path, MuSc defaults) with each image turned back by the proxy's own
(known) angle, exactly, not folded (``--oracle-scale``: and scaled back by its known scale);
nothing is estimated. Prints the metrics row.

    python bench/canonical_pose.py --oracle magnetic_tile --threads 1

``--accuracy NAME`` (repeatable): how well the estimate follows the proxy's known turn. Per test
image of NAME, the estimated angle of its posed version minus that of its untransformed original
against the proxy's angle (folded; median error, share within 10 degrees, per fold), and the
log ratio of the radial power spectrum's centroid (posed / untransformed) against the log of the
proxy's scale (correlation, slope), with the centroid's coefficient of variation on each side.

    python bench/canonical_pose.py --accuracy magnetic_tile --accuracy pa_fvn01_tl
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from defectscope.methods import canonical  # noqa: E402
from suite import SHARED, shared_categories  # noqa: E402


def read(samples) -> list[np.ndarray]:
    return [np.asarray(Image.open(s.path).convert("RGB")) for s in samples]


def row(name: str, images: list[np.ndarray]) -> str:
    """One table row: both folds' median coherence and spread, the fold chosen, the decision of
    ``canonical_pose=auto`` and the seconds per image of the estimate."""
    started = time.perf_counter()
    plan = canonical.plan_batch(images, "auto")
    seconds = (time.perf_counter() - started) / len(images)
    f = plan.facts
    coherence, spread = f["median_coherence_by_fold"], f["spread_degrees_by_fold"]
    cells = [name, str(len(images)), f"{coherence['2']:.3f}", f"{abs(spread['2']):.1f}", f"{coherence['4']:.3f}", f"{abs(spread['4']):.1f}",
             str(f["fold"]), f"{f['confident_share']:.2f}", "**on**" if plan.active else "off", f"{seconds:.3f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--small", action="store_true", help="also the small-part proxy (bottle, hazelnut_toy)")
    parser.add_argument("--elpv", type=int, default=0, help="also the demo's N mono and N poly elpv cells (0: skip)")
    parser.add_argument("--no-plain", action="store_true")
    parser.add_argument("--crop", action="store_true", help="also the crop proxy's aligned and turned crops (docs/POSE_CROP.md)")
    parser.add_argument("--oracle", default=None, help="score this posed batch turned back by its known angles")
    parser.add_argument("--oracle-scale", action="store_true", help="with --oracle: also undo the known scale")
    parser.add_argument("--accuracy", action="append", default=[], help="estimate against the proxy's known poses")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--param", action="append", default=[], help="MuSc setting KEY=VALUE (repeatable)")
    args = parser.parse_args()
    if args.oracle:
        oracle(args)
        return
    if args.accuracy:
        for name in args.accuracy:
            accuracy(name)
        return
    from pose_proxy import EDGE_PADDED, mixed_categories, pose_category, small_category

    categories = shared_categories()
    batches = [("plain", c) for c in categories + mixed_categories(categories)] if not args.no_plain else []
    batches += [("pose", pose_category(c)) for c in categories]
    batches += [("pose", c) for c in mixed_categories([pose_category(c) for c in categories])]
    if args.small:
        batches += [("small", small_category(c)) for c in categories if c.name in EDGE_PADDED]
    if args.crop:
        from pose_proxy import crop_category

        batches += [("crop-aligned", crop_category(c, turned=False)[0]) for c in categories]
        batches += [("crop-turned", crop_category(c, turned=True)[0]) for c in categories]
    if args.only:
        batches = [(k, c) for k, c in batches if any(c.name.startswith(p) for p in args.only)]
    print("| batch | n | coherence (fold 2) | spread (fold 2) | coherence (fold 4) | spread (fold 4) | fold | confident | auto | s/img |")
    print("|---" * 10 + "|")
    for kind, category in batches:
        print(row(f"{kind}/{category.name}", read(category.test)), flush=True)
    if args.elpv:
        from defectscope.sample import elpv_category

        for kind in ("mono", "poly"):
            demo = elpv_category(args.elpv, kind)
            print(row(f"elpv demo ({kind})", read(demo.test)), flush=True)

def centroid(grey: np.ndarray) -> float:
    """The radial power spectrum's centroid (cycles per thumbnail) of a grey thumbnail."""
    height, width = grey.shape
    window = np.outer(np.hanning(height), np.hanning(width))
    power = np.abs(np.fft.fftshift(np.fft.fft2((grey - grey.mean()) * window))) ** 2
    yy, xx = np.mgrid[:height, :width]
    radius = np.hypot(yy - height // 2, xx - width // 2)
    band = (radius >= 3) & (radius <= min(height, width) // 2)
    return float((power[band] * radius[band]).sum() / power[band].sum())


def accuracy(name: str) -> None:
    """The estimate on the posed images of ``name`` against the proxy's known angles and scales."""
    from pose_proxy import _seed, draw_pose, pose_category

    category = next(c for c in shared_categories() if c.name == name)
    posed = pose_category(category)
    rows = []
    for index, (plain, moved) in enumerate(zip(category.test, posed.test)):
        angle, scale, _ = draw_pose(np.random.default_rng(_seed(0, name, index)))
        before = canonical.thumbnail(np.asarray(Image.open(plain.path).convert("RGB")))
        after = canonical.thumbnail(np.asarray(Image.open(moved.path).convert("RGB")))
        found = [canonical.orientations(g, (2, 4)) for g in (before, after)]
        rows.append((angle, scale, found, centroid(before), centroid(after)))
    line = [f"{name} ({len(rows)} images):"]
    for k, fold in enumerate((2, 4)):
        # the proxy turns the content by +angle (pixel coordinates): the estimate should grow by it
        errors = np.array([abs(canonical.folded(f[1][k][0] - f[0][k][0] - angle, fold)) for angle, _, f, _, _ in rows])
        line.append(f"fold {fold}: median error {np.median(errors):.1f} deg, within 10 deg {np.mean(errors < 10):.0%}")
    ratio = np.log([b / a for _, _, _, a, b in rows])
    true = np.log([s for _, s, _, _, _ in rows])
    plain_c = np.array([a for *_, a, _ in rows])
    posed_c = np.array([b for *_, b in rows])
    line.append(f"scale: correlation {np.corrcoef(ratio, true)[0, 1]:.2f}, slope {np.polyfit(true, ratio, 1)[0]:.2f}, "
                f"centroid CV untransformed {plain_c.std() / plain_c.mean():.3f} / posed {posed_c.std() / posed_c.mean():.3f}")
    print(" ".join(line[:1]) + " " + "; ".join(line[1:]), flush=True)


def oracle(args) -> None:
    """Score the posed batch ``args.oracle`` turned back by the proxy's known poses."""
    from pose_proxy import _seed, draw_pose, pose_category

    from defectscope.pipeline import RunOptions, apply_threads, evaluate_category

    category = next(c for c in shared_categories() if c.name == args.oracle)
    posed = pose_category(category)
    poses = [draw_pose(np.random.default_rng(_seed(0, category.name, i))) for i in range(len(posed.test))]
    # the proxy turns the content by +angle (pixel coordinates, y down) and magnifies it by scale
    turns = [-angle for angle, _, _ in poses]
    scales = [1.0 / scale for _, scale, _ in poses] if args.oracle_scale else None

    def known(images, mode="auto", fold=canonical.FOLD, expand=False):
        assert len(images) == len(turns), "the oracle needs every image of the batch"
        facts = {"mode": "oracle", "turned": True, "scaled": scales is not None}
        return canonical.PosePlan(True, facts, list(turns), None if scales is None else list(scales), expand)

    canonical.plan_batch = known
    params = dict(item.partition("=")[::2] for item in args.param)
    params["canonical_pose"] = "on"
    options = RunOptions(method="musc", threads=args.threads, method_options=params)
    apply_threads(args.threads)
    result, _, samples, _, metrics = evaluate_category(posed, options)
    keys = ("image_auroc", "pixel_auroc", "pixel_ap", "pixel_aupro")
    print(f"oracle{'+scale' if scales else ''} pose/{category.name}: " + ", ".join(f"{k}={100 * metrics[k]:.1f}" for k in keys)
          + f", s/img={float(result.settings['seconds']) / len(samples):.3f}", flush=True)


if __name__ == "__main__":
    main()
