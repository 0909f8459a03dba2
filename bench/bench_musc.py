"""MuSc with the default settings: per-category metrics, time split, peak memory, scaling with N.

    python bench/bench_musc.py categories        # bottle, hazelnut_toy, magnetic-tile batch
    python bench/bench_musc.py scaling --n 25 50 100 200

`categories` evaluates each batch end to end (the same code path as `defectscope evaluate`)
and, separately, times the three stages on the same images: features (backbone + LNAMD),
scoring (MSM over all layer/degree sets) and RsCIN. Each measurement runs in a fresh
subprocess so that its peak resident memory (ru_maxrss) is its own.
`scaling` scores the first N training images of mvtec_bottle (N up to 209).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PUBLISHED = {"bottle": {"image_auroc": 0.999, "pixel_auroc": 0.985, "pixel_ap": 0.830}}


def _batch(name: str):
    sys.path.insert(0, str(Path(__file__).parent))
    from ablation_musc import batches

    return batches(SHARED)[name]


def run_one(kind: str, name: str, n: int | None) -> dict:
    import torch

    from defectscope.data import mvtec_category
    from defectscope.methods.musc import MuSc, MuScConfig, mutual_scores, rscin, to_finest_grid
    from defectscope.pipeline import category_metrics, read_batch

    torch.set_num_threads(2)
    if kind == "scaling":
        samples = mvtec_category(SHARED / "mvtec_bottle").train[:n]
    else:
        samples = _batch(name)
    started = time.perf_counter()
    images, _, _ = read_batch([s.path for s in samples])
    t_read = time.perf_counter() - started
    detector = MuSc(MuScConfig())
    out: dict = {"name": name, "n": len(images), "read_s": t_read}
    t = time.perf_counter()
    sets, grid, embeddings = detector.feature_sets(images, native_grids=detector.config.native_grids)
    out["features_s"] = time.perf_counter() - t
    t = time.perf_counter()
    patch = torch.stack([to_finest_grid(mutual_scores(s, detector.config.lower, detector.config.upper), grid) for s in sets]).mean(0)
    out["scoring_s"] = time.perf_counter() - t
    maps = detector.maps_from_patch_scores(patch, grid)
    t = time.perf_counter()
    rscin(maps.flatten(1).amax(1), embeddings, detector.config.rscin_ks)
    out["rscin_s"] = time.perf_counter() - t
    out["grid"] = list(grid)
    out["sets"] = len(sets)
    if kind == "categories":
        t = time.perf_counter()
        result = detector.predict(images, [str(s.path) for s in samples])
        out["predict_s"] = time.perf_counter() - t
        out["metrics"] = category_metrics(result, samples, images, True)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["categories", "scaling", "_one"])
    parser.add_argument("--n", type=int, nargs="*", default=[25, 50, 100, 200])
    parser.add_argument("--name", default="bottle")
    parser.add_argument("--kind", default="categories")
    args = parser.parse_args()
    if args.mode == "_one":
        print(json.dumps(run_one(args.kind, args.name, args.n[0] if args.n else None)))
        return
    jobs = [("categories", name, 0) for name in ("bottle", "hazelnut_toy", "magnetic_tile")] if args.mode == "categories" else [("scaling", "bottle-train", n) for n in args.n]
    rows = []
    for kind, name, n in jobs:
        output = subprocess.run([sys.executable, __file__, "_one", "--kind", kind, "--name", name, "--n", str(n)], capture_output=True, text=True, check=True)
        row = json.loads(output.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.mode == "categories":
        keys = ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro")
        print("| batch | N | " + " | ".join(keys) + " | read s | features s | scoring s | RsCIN s | predict s | peak RSS MiB |")
        for row in rows:
            cells = []
            for key in keys:
                value = row["metrics"][key]
                published = PUBLISHED.get(row["name"], {}).get(key)
                cells.append(f"{100 * value:.1f}" + (f" ({100 * published:.1f})" if published else ""))
            print(f"| {row['name']} | {row['n']} | " + " | ".join(cells) + f" | {row['read_s']:.1f} | {row['features_s']:.1f} | {row['scoring_s']:.1f} | {row['rscin_s']:.3f} | {row['predict_s']:.1f} | {row['peak_rss_mib']:.0f} |")
    else:
        print("| N | features s | scoring s | RsCIN s | peak RSS MiB |")
        for row in rows:
            print(f"| {row['n']} | {row['features_s']:.1f} | {row['scoring_s']:.1f} | {row['rscin_s']:.3f} | {row['peak_rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
