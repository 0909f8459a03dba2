"""CPU and GPU side by side: the same work on each device, timings and scores compared.

Parts (``--only`` picks some; all by default):
- ``musc``: MuSc (defaults) on every shared category of bench/suite.py (or the categories given
  with ``--category``), each test batch scoring itself; seconds per image, image AUROC and pixel
  AP, and the largest difference of image scores and anomaly maps between the devices;
- ``uflow``: U-Flow fit (``--uflow-epochs``, default 2) on mvtec_bottle train/good, then predict on
  its test set; fit and predict seconds and the largest score/map differences (the two devices
  train their own flows from the same seed, so the trained models themselves may differ a
  little); then the CPU-trained model loaded on each device ("load"): predict seconds and the
  differences, the comparison that isolates inference;
- ``serve``: bench/bench_serve.py against that model for ``--serve-seconds`` with 8 clients, per device.

Devices: ``cpu`` and, when ``torch.cuda.is_available()``, ``cuda``; otherwise the script says
that CUDA is absent and reports the CPU alone (nothing is made up for the GPU).

    python bench/bench_device.py --threads 2 --out bench/results/device.json            # everything
    python bench/bench_device.py --only musc --category bottle --limit 12                # a quick CPU check

Tolerance: scores are equal when within 1e-4 (fp32 on both devices; GPU kernels sum in another
order, so bit-equality is not expected).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from defectscope.data import mvtec_category  # noqa: E402
from defectscope.data.batch import read_batch  # noqa: E402
from defectscope.methods.registry import get_method  # noqa: E402
from defectscope.metrics import image_metrics, pixel_metrics  # noqa: E402
from defectscope.options import RunOptions, apply_threads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
TOLERANCE = 1e-4


def devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    return found


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device: str, work):
    synchronise(device)
    started = time.perf_counter()
    out = work()
    synchronise(device)
    return out, time.perf_counter() - started


def differences(results: dict) -> dict:
    """Largest |difference| of image scores and maps of each device against the CPU."""
    base = results["cpu"]
    out = {}
    for device, result in results.items():
        if device == "cpu":
            continue
        out[device] = {
            "max_score_difference": float(np.max(np.abs(result.image_scores - base.image_scores))),
            "max_map_difference": float(np.max(np.abs(result.anomaly_maps - base.anomaly_maps))),
        }
        out[device]["within_tolerance"] = max(out[device].values()) <= TOLERANCE
    return out


def bench_musc(categories, limit: int | None) -> dict:
    from suite import shared_categories

    from defectscope.pipeline import load_ground_truth

    table = {}
    for category in shared_categories():
        if categories and category.name not in categories:
            continue
        samples = list(category.test)[:limit] if limit else list(category.test)
        images, kept, _ = read_batch([s.path for s in samples])
        labels = np.array([s.label for s in samples])
        truth = load_ground_truth(samples, images) if category.has_masks else None
        results, rows = {}, {}
        for device in devices():
            detector = get_method("musc").build(RunOptions(device=device))
            result, seconds = timed(device, lambda: detector.predict(images))
            results[device] = result
            row = {"seconds_per_image": seconds / len(images)}
            if len(set(labels.tolist())) == 2:
                row["image_auroc"] = image_metrics(result.image_scores, labels)["image_auroc"]
            if truth is not None:
                from defectscope.pipeline import _mask_at

                masks = np.stack([_mask_at(m, tuple(result.anomaly_maps.shape[-2:])) for m in truth])
                row["pixel_ap"] = pixel_metrics(result.anomaly_maps, masks)["pixel_ap"]
            rows[device] = row
        table[category.name] = {"images": len(images), "devices": rows, "compared": differences(results)}
        print(category.name, json.dumps(table[category.name]), flush=True)
    return table


def bench_uflow(epochs: int, work: Path, limit: int | None) -> dict:
    from defectscope.training import load_detector

    category = mvtec_category(SHARED / "mvtec_bottle")
    train, _, _ = read_batch([s.path for s in category.train][:limit] if limit else [s.path for s in category.train])
    test_samples = list(category.test)[:limit] if limit else list(category.test)
    test, _, _ = read_batch([s.path for s in test_samples])
    out = {"fit": {}, "load": {}}
    fitted, loaded = {}, {}
    for device in devices():
        detector = get_method("uflow").build(RunOptions(method="uflow", device=device, method_options={"epochs": epochs}))
        _, fit_seconds = timed(device, lambda: detector.fit(train))
        result, predict_seconds = timed(device, lambda: detector.predict(test))
        fitted[device] = result
        out["fit"][device] = {"fit_seconds": fit_seconds, "predict_seconds_per_image": predict_seconds / len(test)}
        if device == "cpu":
            detector.save(work / "uflow-cpu", overwrite=True)
    out["fit"]["compared"] = differences(fitted)
    for device in devices():
        detector = load_detector(work / "uflow-cpu", device)
        result, seconds = timed(device, lambda: detector.predict(test))
        loaded[device] = result
        out["load"][device] = {"predict_seconds_per_image": seconds / len(test)}
    out["load"]["compared"] = differences(loaded)
    out["images"] = {"train": len(train), "test": len(test)}
    print("uflow", json.dumps(out), flush=True)
    return out


def bench_serve(work: Path, seconds: float, threads: int) -> dict:
    out = {}
    model = work / "uflow-cpu"
    if not (model / "model.safetensors").is_file():
        return {"skipped": "no model: run the uflow part first"}
    for device in devices():
        report = work / f"serve-{device}.json"
        command = [sys.executable, str(REPO / "bench" / "bench_serve.py"), "--model", str(model), "--clients", "8", "--seconds", str(seconds),
                   "--threads", str(threads), "--device", device, "--work", str(work / f"serve-{device}"), "--out", str(report)]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")}, stdout=subprocess.DEVNULL)
        summary = json.loads(report.read_text())
        out[device] = {key: summary[key] for key in ("throughput_per_s", "latency_s", "statuses", "client_errors", "rss_mib")}
    print("serve", json.dumps(out), flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=["musc", "uflow", "serve"], help="parts to run (repeatable; default all)")
    parser.add_argument("--category", action="append", help="MuSc: only these shared categories")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images per set (a quick check)")
    parser.add_argument("--uflow-epochs", type=int, default=2)
    parser.add_argument("--serve-seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    apply_threads(args.threads)
    found = devices()
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    else:
        print(f"CUDA is absent on this machine (torch {torch.__version__}, cuda {torch.version.cuda}): only the CPU is measured", flush=True)
    parts = args.only or ["musc", "uflow", "serve"]
    report = {"machine": machine, "devices": found, "tolerance": TOLERANCE}
    with tempfile.TemporaryDirectory(prefix="defectscope-device-") as folder:
        work = Path(folder)
        if "musc" in parts:
            report["musc"] = bench_musc(args.category, args.limit)
        if "uflow" in parts or "serve" in parts:
            report["uflow"] = bench_uflow(args.uflow_epochs, work, args.limit)
        if "serve" in parts:
            report["serve"] = bench_serve(work, args.serve_seconds, args.threads or 1)
    print(json.dumps(report, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
