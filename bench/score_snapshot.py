"""Per-image scores of every method on the nine shared batches, to check that a restructuring
changes no number (issue #20: "equal within 1e-6").

``run`` writes one ``.npz`` per method (paths, image scores, verdict statistic, anomaly maps,
verdicts) computed through the detector classes of ``import defectscope as ds`` on in-memory
arrays, so the script runs unchanged on a checkout before and after a restructuring of the run
layer. ``compare`` prints, per method and batch, the largest absolute difference of image scores
and maps between two snapshot folders and exits 1 when any exceeds the tolerance.

Batches: bottle and hazelnut_toy test sets, the magnetic tiles' seeded 100-tile batch
(bench/suite.py), the six paper types' test sets. MuSc and CoDeGraph score each batch by
itself at their defaults. U-Flow and PRN are trained briefly at a fixed seed (U-Flow: 1 epoch on
at most 24 good training images; PRN: 1 epoch of 32 samples, the first 2 defects of each batch
as its labelled anomalies): a snapshot of the code path, not a benchmark of the method.

    PYTHONPATH=/path/to/checkout/src python bench/score_snapshot.py run --out /tmp/snap-before
    python bench/score_snapshot.py compare /tmp/snap-before /tmp/snap-after
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
METHODS = ("musc", "codegraph", "uflow", "prn")


def batches(shared: Path):
    """(name, test samples, train good paths) for the nine shared batches."""
    from defectscope.data import magnetic_tile, mvtec_category

    out = []
    for folder, name in (("mvtec_bottle", "bottle"), ("hazelnut_toy", "hazelnut_toy")):
        category = mvtec_category(shared / folder)
        out.append((name, list(category.test), [s.path for s in category.train]))
    magnetic = magnetic_tile(shared / "magnetic_tile", seed=0)
    rng = np.random.default_rng(0)
    free = [s for s in magnetic.test if s.label == 0]
    chosen = [free[i] for i in sorted(rng.choice(len(free), 80, replace=False))]
    for kind in sorted({s.defect_type for s in magnetic.test if s.label == 1}):
        members = [s for s in magnetic.test if s.defect_type == kind]
        chosen += [members[i] for i in sorted(rng.choice(len(members), 4, replace=False))]
    out.append(("magnetic_tile", chosen, [s.path for s in magnetic.train]))
    for folder in sorted((shared / "paper_impurities").glob("pa_*")):
        if folder.is_dir():
            category = mvtec_category(folder)
            out.append((folder.name, list(category.test), [s.path for s in category.train]))
    return out


def detector_for(method: str):
    import defectscope as ds

    if method == "musc":
        return ds.MuSc(ds.MuScConfig())
    if method == "codegraph":
        return ds.CoDeGraph(ds.CoDeGraphConfig())
    if method == "uflow":
        return ds.UFlow(ds.UFlowConfig(epochs=1, min_epoch_samples=8, seed=0))
    return ds.PRN(ds.PRNConfig(epochs=1, samples_per_epoch=32, seed=0))


def run(method: str, shared: Path, out: Path, only: list[str]) -> None:
    from defectscope.data import read_image
    from defectscope.data.io import read_mask

    store: dict[str, np.ndarray] = {}
    for name, samples, train in batches(shared):
        if only and not any(name.startswith(p) for p in only):
            continue
        started = time.perf_counter()
        torch.manual_seed(0)
        np.random.seed(0)
        detector = detector_for(method)
        test = samples
        if method == "uflow":
            detector.fit([read_image(p) for p in train[:24]])
        elif method == "prn":
            defects = [s for s in samples if s.label == 1 and s.mask_path is not None][:2]
            anomalies = [(read_image(s.path), read_mask(s.mask_path)) for s in defects]
            detector.fit([read_image(p) for p in train[:24]], anomalies)
            test = [s for s in samples if s not in defects]
        images = [read_image(s.path) for s in test]
        result = detector.predict(images, [str(s.path) for s in test])
        store[f"{name}/paths"] = np.array([str(s.path) for s in test])
        store[f"{name}/image_scores"] = np.asarray(result.image_scores, dtype=np.float64)
        store[f"{name}/decision_scores"] = np.asarray(result.decision_scores(), dtype=np.float64)
        store[f"{name}/maps"] = np.asarray(result.anomaly_maps, dtype=np.float32)
        verdicts = result.verdicts()
        store[f"{name}/verdicts"] = np.array(verdicts if verdicts is not None else [], dtype=str)
        print(f"{method} {name}: {len(test)} images, {time.perf_counter() - started:.1f} s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{method}.npz"
    partial = out / f".{method}.npz.partial"
    with open(partial, "wb") as handle:
        np.savez_compressed(handle, **store)
    partial.replace(target)


def compare(before: Path, after: Path, tolerance: float) -> int:
    worst = 0.0
    failed = False
    print("| method | batch | images | max abs diff image scores | max abs diff maps | verdicts equal |")
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        a_path, b_path = before / f"{method}.npz", after / f"{method}.npz"
        if not a_path.exists() or not b_path.exists():
            continue
        a, b = np.load(a_path), np.load(b_path)
        names = sorted({key.split("/")[0] for key in a.files})
        for name in names:
            if f"{name}/paths" not in b.files or list(a[f"{name}/paths"]) != list(b[f"{name}/paths"]):
                print(f"| {method} | {name} | paths differ | | | |")
                failed = True
                continue
            d_scores = float(np.max(np.abs(a[f"{name}/image_scores"] - b[f"{name}/image_scores"]), initial=0.0))
            d_maps = float(np.max(np.abs(a[f"{name}/maps"] - b[f"{name}/maps"]), initial=0.0)) if a[f"{name}/maps"].shape == b[f"{name}/maps"].shape else float("inf")
            same = list(a[f"{name}/verdicts"]) == list(b[f"{name}/verdicts"])
            worst = max(worst, d_scores, d_maps)
            failed |= d_scores > tolerance or d_maps > tolerance or not same
            print(f"| {method} | {name} | {len(a[f'{name}/paths'])} | {d_scores:.2e} | {d_maps:.2e} | {'yes' if same else 'NO'} |")
    print(f"largest difference {worst:.2e} (tolerance {tolerance:g}): {'FAIL' if failed else 'ok'}")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    go = sub.add_parser("run")
    go.add_argument("--out", type=Path, required=True)
    go.add_argument("--method", action="append", choices=METHODS, default=[])
    go.add_argument("--only", action="append", default=[], help="batch name prefixes")
    go.add_argument("--shared", type=Path, default=SHARED)
    go.add_argument("--threads", type=int, default=1)
    check = sub.add_parser("compare")
    check.add_argument("before", type=Path)
    check.add_argument("after", type=Path)
    check.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args()
    if args.command == "compare":
        sys.exit(compare(args.before, args.after, args.tolerance))
    torch.set_num_threads(args.threads)
    for method in args.method or METHODS:
        run(method, args.shared, args.out, args.only)


if __name__ == "__main__":
    main()
