"""PRN benchmarks: the regression suite over the shared categories, and MTD with k labelled defects.

Regression suite (``--suite``): every shared category (or ``--only NAME ...``) with the
protocol of `bench/prn_benchmark.py` (all normal training images, k = 10
labelled defects per type moved from test to training, seed 0) and the settings of
``--protocol``: ``defaults`` (``PRNConfig()``) or ``guard`` (the short protocol the shared test
``tests/test_prn_shared.py`` runs: 128 px input, 2 epochs of 96 samples). The figures are
compared with ``bench/expected/prn_reference.json`` (kept in the repository); the exit status is
1 when a category's pixel AP is more than ``--tolerance`` (default 0.02) below its stored figure
or its verdict false-alarm rate is above 5 %. ``--update`` stores the measured figures instead
(only for the categories run). The reference also records the commit, date and seconds.

    python bench/bench_prn.py --suite --protocol guard --only pa_btn01_rl --threads 1
    python bench/bench_prn.py --suite --threads 1                     # defaults, all nine (hours on 2 cores)
    python bench/bench_prn.py --suite --only magnetic_tile --param final_model=never  # a setting against the stored figures
    python bench/bench_prn.py --suite --only pa_bdp01_tl --musc --threads 1 --json bench/results/prn_paper_pa_bdp01_tl.json
    python bench/bench_prn.py --suite --root /tmp/prnlong/long_strip --musc --threads 1   # a folder outside ../shared

``--musc`` also scores zero-shot MuSc at its defaults on exactly PRN's test images (the same
images, masks and metric code; `prn_benchmark.musc_on_test`) and prints both methods' pixel AP
under both pixel protocols: ``img`` (maps resized to each image's own size, the figure compared
with the stored reference) and ``map`` (masks resized to the method's map size, as
``defectscope evaluate`` and bench/suite.py measure), and the margin PRN - MuSc in points on the
``img`` protocol. ``--json PATH`` writes every row measured (atomically).

MTD mode (without ``--suite``): PRN on the Magnetic Tile Defect set (MTD) with k labelled
defects per class.

Split (deterministic, written to bench/results/prn_mtd_k<k>_split.json so other methods can be run
on the identical test images):
  * normal tiles: ``defectscope.data.magnetic_tile(root, seed=0)`` (half of MT_Free, seeded, for
    training; the other half in test); PRN trains on ``--max-normal`` of the training half, drawn
    with ``numpy.random.default_rng(seed)`` (all when 0);
  * defective tiles: ``kshot_split(category.test, k, seed)``: k per defect class to training, the
    rest in test.
Metrics (defectscope.metrics) on the test images: pixel AUROC / AP / AUPRO (FPR <= 0.3) with
maps resized (bilinear) to each image's own size, image AUROC, and the verdict's false-alarm rate
and recall (PRN's probability cut, calibrated on its held-back normal training tiles; cross-fitted
when ``--max-normal`` is below 190, see PRN's module docstring).

Run: python bench/bench_prn.py --k 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from defectscope.data import magnetic_tile, read_image, read_mask
from defectscope.methods.prn import PRN, PRNConfig, kshot_split
from defectscope.metrics import image_metrics, pixel_metrics, verdict_metrics

ROOT = Path(__file__).resolve().parents[1]


def _identities(paths: list[Path]) -> set[str]:
    found = set()
    for path in paths:
        found.add(str(Path(path).resolve()))
        found.add(hashlib.sha256(Path(path).read_bytes()).hexdigest())
    return found


SHARED = ROOT.parent / "shared" / "datasets"
REFERENCE = ROOT / "bench" / "expected" / "prn_reference.json"
GUARD = {"image_size": 128, "epochs": 2, "samples_per_epoch": 96}
MAX_FAR = 0.05


def shared_categories(shared: Path) -> dict[str, Path]:
    """Name -> folder of every shared category PRN can be run on."""
    found = {"magnetic_tile": shared / "magnetic_tile", "mvtec_bottle": shared / "mvtec_bottle",
             "hazelnut_toy": shared / "hazelnut_toy"}
    found.update({p.name: p for p in sorted((shared / "paper_impurities").glob("pa_*")) if p.is_dir()})
    return {name: path for name, path in found.items() if path.is_dir()}


def protocol_config(protocol: str, seed: int = 0) -> PRNConfig:
    """The PRN settings of a suite protocol (``defaults`` or ``guard``)."""
    return PRNConfig(seed=seed, **(GUARD if protocol == "guard" else {}))


def param_overrides(params: list[str]) -> dict:
    """``--param KEY=VALUE`` items as ``{key: value}``: a JSON value, or else the text as given."""
    overrides = {}
    for item in params:
        key, _, text = item.partition("=")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text
    return overrides


def with_params(config: PRNConfig, params: list[str]) -> PRNConfig:
    """``config`` with ``--param KEY=VALUE`` items over it: a JSON value, or the CLI's text
    (``pseudo_families=perlin,thin``), checked as ``defectscope --param`` checks it."""
    overrides = param_overrides(params)
    return PRNConfig.from_options({**config.to_json(), **overrides}) if overrides else config


def _machine() -> str:
    """The CPU model, its core count and torch's version: the same commit and seed can differ
    between machines (1.6 points of pixel AP on the magnetic tiles, docs/PRN_VARIANTS.md)."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__}"


def _commit() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def suite(args: argparse.Namespace) -> int:
    from prn_benchmark import PROTOCOLS as PIXEL_PROTOCOLS
    from prn_benchmark import evaluate_category
    from defectscope.report.atomic import atomic_write_text

    if args.root:
        categories = {Path(args.root).name: Path(args.root)}  # a category outside ../shared: no stored figure
        names = list(categories)
    else:
        categories = shared_categories(Path(args.shared))
        names = args.only or list(categories)
    missing = [n for n in names if n not in categories]
    if missing:
        sys.exit(f"no shared category {missing} under {args.shared}")
    reference = json.loads(REFERENCE.read_text()) if REFERENCE.is_file() else {}
    stored = reference.setdefault(args.protocol, {})
    failed = []
    print(f"{'category':<14} {'P-AP':>6} {'ref':>6} {'I-AUROC':>8} {'FAR':>6} {'recall':>7} {'s':>6}"
          + ("   [pixel AP: PRN img / map, MuSc img / map, margin img in points]" if args.musc else ""))
    measured_rows, overrides = {}, param_overrides(args.param)
    for name in names:
        config = with_params(protocol_config(args.protocol, args.seed), args.param)
        musc = None
        if args.musc:
            from defectscope.options import RunOptions

            musc = RunOptions(method="musc", threads=args.threads)
        measured = evaluate_category(categories[name], config, k=args.k, seed=args.seed, save_model=args.save_model,
                                     save_maps_to=args.save_maps, log=lambda line: print(line, flush=True), musc=musc)
        m = measured["metrics"]
        row = {"pixel_ap": m["pixel_ap"], "pixel_auroc": m["pixel_auroc"], "pixel_aupro": m["pixel_aupro"],
               "image_auroc": m["image_auroc"], "verdict_far": m["verdict_false_alarm_rate"],
               "verdict_recall": m["verdict_recall"], "verdict_review_share": m.get("verdict_review_share"),
               "test": measured["test"], "test_defective": measured["test_defective"], "calibration": measured["calibration"],
               "threshold": measured["threshold"], "pixel_protocols": measured["pixel_protocols"], "map_size": measured["map_size"],
               "seconds": round(measured["train_seconds"] + measured["predict_seconds"], 1), "commit": _commit(),
               "machine": _machine(), "overrides": overrides,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        before = stored.get(name, {}).get("pixel_ap")
        problems = []
        if before is not None and row["pixel_ap"] < before - args.tolerance:
            problems.append(f"pixel AP {row['pixel_ap']:.3f} is more than {args.tolerance} below the stored {before:.3f}")
        if row["verdict_far"] is not None and row["verdict_far"] > MAX_FAR:
            problems.append(f"verdict false-alarm rate {row['verdict_far']:.3f} above {MAX_FAR}")
        ref_text = f"{before:6.3f}" if before is not None else "     -"
        extra = ""
        if measured.get("musc") is not None:
            zero = measured["musc"]
            row["musc"] = zero
            row["margin_points_image_protocol"] = round(100 * (row["pixel_ap"] - zero["pixel"]["image"]["pixel_ap"]), 1)
            row["margin_points_map_protocol"] = round(100 * (row["pixel_protocols"]["map"]["pixel_ap"] - zero["pixel"]["map"]["pixel_ap"]), 1)
            extra = (f"   [PRN {row['pixel_ap']:.3f} / {row['pixel_protocols']['map']['pixel_ap']:.3f}, MuSc "
                     f"{zero['pixel']['image']['pixel_ap']:.3f} / {zero['pixel']['map']['pixel_ap']:.3f}, "
                     f"margin {row['margin_points_image_protocol']:+.1f}]")
        print(f"{name:<14} {row['pixel_ap']:6.3f} {ref_text} {row['image_auroc']:8.3f} {row['verdict_far']:6.3f} "
              f"{row['verdict_recall']:7.3f} {row['seconds']:6.0f}" + extra + ("  FAIL: " + "; ".join(problems) if problems else ""), flush=True)
        measured_rows[name] = row
        if args.json:
            atomic_write_text(Path(args.json), json.dumps({"protocol": args.protocol, "k": args.k, "seed": args.seed, "threads": args.threads,
                                                          "pixel_protocols": PIXEL_PROTOCOLS, "rows": measured_rows}, indent=1) + "\n")
        failed.extend(f"{name}: {p}" for p in problems)
        if args.update:
            stored[name] = row
            atomic_write_text(REFERENCE, json.dumps(reference, indent=1, sort_keys=True) + "\n")
    if failed and not args.update:
        print("regressions:\n  " + "\n  ".join(failed))
        return 1
    return 0


def main() -> None:
    if "--suite" in sys.argv:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--suite", action="store_true")
        parser.add_argument("--protocol", choices=("defaults", "guard"), default="defaults")
        parser.add_argument("--only", nargs="+", default=None)
        parser.add_argument("--shared", default=str(SHARED))
        parser.add_argument("--root", default=None, help="one category folder instead of the shared ones (e.g. bench/long_proxy.py's)")
        parser.add_argument("--k", type=int, default=10)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--tolerance", type=float, default=0.02)
        parser.add_argument("--update", action="store_true")
        parser.add_argument("--musc", action="store_true", help="also zero-shot MuSc (defaults) on exactly PRN's test images")
        parser.add_argument("--json", default=None, help="write the measured rows to this JSON file")
        parser.add_argument("--param", action="append", default=[], help="KEY=VALUE (JSON value) over the protocol's PRN settings")
        parser.add_argument("--threads", type=int, default=1)
        parser.add_argument("--save-model", default=None, help="folder for the trained model (one category only)")
        parser.add_argument("--save-maps", default=None, help=".npz for the test maps etc. (one category only; bench/prn_maps.py)")
        args = parser.parse_args()
        if (args.save_model or args.save_maps) and len(args.only or []) != 1 and not args.root:
            parser.error("--save-model / --save-maps need exactly one category in --only")
        if args.root and args.update:
            parser.error("--update stores figures of the shared categories only, not of --root")
        torch.set_num_threads(args.threads)
        sys.exit(suite(args))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="store_true", help="the regression suite instead of MTD mode; `--suite --help` lists its options")
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "datasets" / "magnetic_tile"))
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-normal", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=PRNConfig.epochs)
    parser.add_argument("--samples-per-epoch", type=int, default=PRNConfig.samples_per_epoch)
    parser.add_argument("--image-size", type=int, default=PRNConfig.image_size)
    parser.add_argument("--max-test", type=int, default=0, help="smoke runs only: cap the test set")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save-model", default=None, help="folder for the trained model (default: OUT/prn_mtd_k<k>_model)")
    parser.add_argument("--save-maps", default=None, help=".npz for the test maps, scores, labels, calibration maps (bench/prn_maps.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"prn_mtd_k{args.k}"

    category = magnetic_tile(args.root, seed=args.seed)
    train_anomalies, test_samples = kshot_split(category.test, k=args.k, seed=args.seed)
    normals = list(category.train)
    if args.max_normal and len(normals) > args.max_normal:
        chosen = np.sort(np.random.default_rng(args.seed).choice(len(normals), args.max_normal, replace=False))
        normals = [normals[int(i)] for i in chosen]
    if args.max_test:
        test_samples = test_samples[:: max(1, len(test_samples) // args.max_test)][: args.max_test]

    train_files = [s.path for s in normals] + [s.path for s in train_anomalies] + [s.mask_path for s in train_anomalies]
    test_files = [s.path for s in test_samples] + [s.mask_path for s in test_samples if s.mask_path is not None and s.label == 1]
    leaked = _identities(train_files) & _identities(test_files)
    if leaked:
        sys.exit(f"split leaks {len(leaked)} files or contents from test into training")
    split = {
        "dataset": "magnetic_tile",
        "description": __doc__.split("Metrics")[0].strip(),
        "k": args.k,
        "seed": args.seed,
        "train_normal": [str(s.path) for s in normals],
        "train_anomalies": [{"image": str(s.path), "mask": str(s.mask_path), "type": s.defect_type} for s in train_anomalies],
        "test": [
            {"image": str(s.path), "mask": str(s.mask_path) if s.mask_path else None, "label": s.label, "type": s.defect_type}
            for s in test_samples
        ],
    }
    (out / f"{tag}_split.json").write_text(json.dumps(split, indent=1))
    print(f"train: {len(normals)} normal + {len(train_anomalies)} defective; test: {len(test_samples)} "
          f"({sum(s.label == 1 for s in test_samples)} defective)", flush=True)

    config = PRNConfig(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch, image_size=args.image_size, seed=args.seed)
    started = time.time()
    normal_images = [read_image(s.path) for s in normals]
    anomalies = [(read_image(s.path), read_mask(s.mask_path)) for s in train_anomalies]

    def progress(stage: str, done: int, total: int) -> None:
        if stage != "train" or done % 10 == 0 or done == total:
            print(f"[{time.time() - started:7.1f}s] {stage} {done}/{total}", flush=True)

    detector = PRN(config).fit(normal_images, anomalies, progress=progress, checkpoint_dir=out / f"{tag}_checkpoint", resume=True)
    train_seconds = time.time() - started
    detector.save(Path(args.save_model) if args.save_model else out / f"{tag}_model", overwrite=True)

    started = time.time()
    from prn_benchmark import predict_test

    maps, masks, scores, labels, verdicts, result = predict_test(detector, test_samples, 32, log=lambda line: print(line, flush=True))
    predict_seconds = time.time() - started
    if args.save_maps:
        from prn_benchmark import save_maps

        save_maps(detector, test_samples, normals, args.save_maps, 32, log=lambda line: print(line, flush=True))
    metrics = {**pixel_metrics(maps, masks), **image_metrics(np.array(scores), np.array(labels)),
               **verdict_metrics(np.array(verdicts), np.array(labels))}
    report = {
        "dataset": "magnetic_tile",
        "k": args.k,
        "metrics": metrics,
        "train_seconds": round(train_seconds, 1),
        "predict_seconds": round(predict_seconds, 1),
        "test_images": len(test_samples),
        "train_normal": len(normals),
        "train_anomalies": len(train_anomalies),
        "threshold": result.threshold,
        "threshold_rule": result.threshold_rule,
        "losses": detector.losses,
        "config": config.to_json(),
        "machine": f"{platform.processor() or platform.machine()}, torch threads {args.threads}",
        "scores": {str(s.path): score for s, score in zip(test_samples, scores)},
    }
    (out / f"{tag}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "scores"}, indent=1))


if __name__ == "__main__":
    main()
