"""Load benchmark of `defectscope serve`: N concurrent clients post real images for a fixed time.

Starts the service in a child process (this checkout's sources), waits until it listens, then
runs ``--clients`` threads, each with its own HTTP connection, posting the images of
``--images`` (default: the shared MVTec bottle test set, 83 PNGs of 900 x 900) round-robin as
raw PNG bodies for ``--seconds``. Measures throughput (answers 200 per second), latency
percentiles of the 200s (request sent -> answer read), every status and client error, and the
service's resident memory (VmRSS of the child, sampled each second). Then stops the service
with SIGTERM and checks its journal: one row per 200 answer, no id twice.

What is served:
- ``--model DIR``: a trained U-Flow/PRN model; or
- ``--fit-uflow EPOCHS``: train U-Flow at its defaults (256 px, EfficientNet-Lite0) on the bottle
  ``train/good`` for EPOCHS epochs first (into ``--work``; reused when present). Inference cost
  does not depend on the number of epochs, only accuracy does; or
- ``--good DIR``: MuSc in reference mode against those good images.

    python bench/bench_serve.py --fit-uflow 1 --clients 8 --seconds 60 --threads 1 \
        --out bench/results/serve_uflow.json

Prints a markdown table and writes the JSON (latencies summarised, the memory series whole).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
TOKEN = "bench-token"


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def start_server(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-c", "from defectscope.cli import main; main()", "serve", "--port", "0", "--token", TOKEN, *args]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "COLUMNS": "400"}
    handle = open(log, "w", encoding="utf-8")
    process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the service ended before listening:\n{log.read_text()}")
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("serving ") and " on http://" in line:
                return process, line.split(" on ", 1)[1].split("/v1/inspect", 1)[0]
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the service did not start within 15 minutes")


def fit_uflow(epochs: int, work: Path, threads: int) -> Path:
    model = work / f"uflow-bottle-{epochs}ep"
    if (model / "model.safetensors").is_file():
        return model
    command = [sys.executable, "-c", "from defectscope.cli import main; main()", "fit", str(SHARED / "mvtec_bottle"), "--method", "uflow",
               "--epochs", str(epochs), "--threads", str(threads), "--out", str(model)]
    subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    return model


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_load(url: str, images: list[bytes], clients: int, seconds: float, pid: int) -> dict:
    import httpx

    latencies: list[list[tuple[float, float]]] = [[] for _ in range(clients)]
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    ids: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)
    began = [0.0]
    memory: list[tuple[float, int]] = []
    done = threading.Event()

    def client(number: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "image/png"}, timeout=120) as session:
            index = number
            start.wait()
            while time.monotonic() - began[0] < seconds:
                body = images[index % len(images)]
                index += clients
                sent = time.monotonic()
                try:
                    response = session.post(f"{url}/v1/inspect", content=body)
                except httpx.HTTPError as exc:
                    with lock:
                        errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                received = time.monotonic()
                with lock:
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if response.status_code == 200:
                        latencies[number].append((sent - began[0], received - sent))
                        ids.append(response.json()["id"])

    def sample() -> None:
        while not done.is_set():
            value = rss_bytes(pid)
            if value is not None:
                memory.append((round(time.monotonic() - began[0], 2), value))
            done.wait(1.0)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    began[0] = time.monotonic()
    start.wait()
    began[0] = time.monotonic()
    sampler = threading.Thread(target=sample)
    sampler.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began[0]
    done.set()
    sampler.join()
    answered = [latency for per_client in latencies for _, latency in per_client]
    return {"elapsed_s": elapsed, "latencies": answered, "statuses": statuses, "errors": errors, "ids": ids, "memory": memory,
            "completion_times": sorted(t for per_client in latencies for t, _ in per_client)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path)
    source.add_argument("--fit-uflow", type=int, metavar="EPOCHS")
    source.add_argument("--good", type=Path)
    parser.add_argument("--images", type=Path, default=SHARED / "mvtec_bottle" / "test")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds left out of the memory trend")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the service")
    parser.add_argument("--device", default=None, help="--device of the service (when supported)")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra `defectscope serve` argument (repeatable), e.g. --serve-arg=--max-batch=4")
    parser.add_argument("--work", type=Path, default=Path("/tmp/defectscope-bench-serve"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    journal = args.work / f"journal-{os.getpid()}"
    serve_args = ["--out", str(journal), "--threads", str(args.threads), *args.serve_arg]
    if args.device:
        serve_args += ["--device", args.device]
    if args.good is not None:
        serve_args += ["--good", str(args.good)]
        served = f"MuSc reference mode, good images {args.good}"
    else:
        model = args.model or fit_uflow(args.fit_uflow, args.work, args.threads)
        serve_args += ["--model", str(model)]
        served = f"model {model}" + (f" (U-Flow defaults, {args.fit_uflow} epoch(s) on bottle train/good)" if args.fit_uflow else "")
    images = [p.read_bytes() for p in sorted(args.images.rglob("*.png"))]
    if not images:
        raise SystemExit(f"no PNG images under {args.images}")

    started = time.monotonic()
    process, url = start_server(serve_args, args.work / "serve.log")
    startup = time.monotonic() - started
    idle_rss = rss_bytes(process.pid)
    try:
        load = run_load(url, images, args.clients, args.seconds, process.pid)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(120)

    import csv

    with open(journal / "verdicts.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    journal_ids = [row["id"] for row in rows]
    latencies = load["latencies"]
    memory = load["memory"]
    steady = [(t, v) for t, v in memory if t >= args.warmup]
    slope = None
    if len(steady) >= 3:
        times, values = np.array([t for t, _ in steady]), np.array([v for _, v in steady], dtype=np.float64)
        slope = float(np.polyfit(times, values, 1)[0]) * 60 / 2**20
    ok = load["statuses"].get(200, 0)
    summary = {
        "served": served,
        "images": f"{len(images)} PNGs under {args.images}",
        "clients": args.clients,
        "seconds": round(load["elapsed_s"], 1),
        "service_threads": args.threads,
        "serve_args": serve_args,
        "startup_s": round(startup, 1),
        "answers_200": ok,
        "throughput_per_s": round(ok / load["elapsed_s"], 2),
        "latency_s": {q: (None if percentile(latencies, q) is None else round(percentile(latencies, q), 3)) for q in (50, 95, 99)},
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "statuses": load["statuses"],
        "client_errors": load["errors"],
        "rss_mib": {
            "idle_before_load": None if idle_rss is None else round(idle_rss / 2**20, 1),
            f"at_{args.warmup:g}s": round(steady[0][1] / 2**20, 1) if steady else None,
            "end": round(memory[-1][1] / 2**20, 1) if memory else None,
            "max": round(max(v for _, v in memory) / 2**20, 1) if memory else None,
            "trend_after_warmup_mib_per_min": None if slope is None else round(slope, 2),
        },
        "journal": {"rows": len(journal_ids), "unique_ids": len(set(journal_ids)),
                    "answered_ids_in_journal": sum(1 for i in load["ids"] if i in set(journal_ids))},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": os.getloadavg()},
        "memory_series": [(t, round(v / 2**20, 1)) for t, v in memory],
    }
    try:
        import torch

        summary["machine"]["torch"] = torch.__version__
        summary["machine"]["cuda"] = torch.cuda.is_available()
    except ImportError:
        pass
    print(f"| clients | seconds | answers | per s | p50 s | p95 s | p99 s | statuses | errors | RSS at {args.warmup:g} s / end / max MiB | trend MiB/min |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    lat = summary["latency_s"]
    rss = summary["rss_mib"]
    print(f"| {args.clients} | {summary['seconds']} | {ok} | {summary['throughput_per_s']} | {lat[50]} | {lat[95]} | {lat[99]} | "
          f"{summary['statuses']} | {summary['client_errors'] or 0} | {rss[f'at_{args.warmup:g}s']} / {rss['end']} / {rss['max']} | "
          f"{rss['trend_after_warmup_mib_per_min']} |")
    print(json.dumps({k: v for k, v in summary.items() if k != "memory_series"}, indent=2))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
