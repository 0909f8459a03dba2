"""Per-task costs of `--scheduler dask` (inputs of the 100,000-image plan in docs/BENCHMARKS.md).

Scores the first ``--count`` elpv cells with the default MuSc settings and a bank of
``--references`` on a LocalCluster of ``--workers`` single-threaded worker processes, records
Dask's task stream (compute and transfer seconds per task kind) and compares the scores with the
single-process run.

    python bench/bench_dask.py --count 256 --references 50 --workers 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict

import torch

from defectscope.methods import distributed as dist
from defectscope.data import read_image
from defectscope.methods.musc import MuSc, MuScConfig, calibrate_border
from defectscope.sample import elpv_root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--references", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=64)
    args = parser.parse_args()
    from distributed import Client, LocalCluster, get_task_stream

    paths = sorted((elpv_root() / "images").glob("*.png"))[: args.count]
    images = [read_image(p) for p in paths]
    config = MuScConfig(max_references=args.references)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, Client(cluster) as client:
        remote = MuSc(dataclasses.replace(config, scheduler=cluster.scheduler_address))
        timings: dict = {}
        with get_task_stream(client) as stream:
            started = time.perf_counter()
            scores = dist.dask_patch_scores(remote, images, chunk=args.chunk, timings=timings)
            wall = time.perf_counter() - started
        per_kind: dict = defaultdict(lambda: {"tasks": 0, "compute_s": 0.0, "transfer_s": 0.0})
        for record in stream.data:
            kind = record["key"][0] if isinstance(record["key"], tuple) else str(record["key"])
            kind = kind.split("-", 1)[0]
            entry = per_kind[kind]
            entry["tasks"] += 1
            for span in record["startstops"]:
                entry["compute_s" if span["action"] == "compute" else "transfer_s"] += span["stop"] - span["start"]
    started = time.perf_counter()
    local = MuSc(config).patch_scores(images)
    local_seconds = time.perf_counter() - started
    report = {
        "count": args.count,
        "references": args.references,
        "workers": args.workers,
        "chunk": args.chunk,
        "dask_wall_s": wall,
        "phases_s": timings,
        "local_patch_scores_s": local_seconds,
        # dask_patch_scores returns the scores before the border rule, which MuSc.patch_scores
        # applies after either path; compare like with like
        "max_abs_diff": float((calibrate_border(scores.patch_scores, scores.grid, config.border_depth)
                               - local.patch_scores).abs().max()),
        "tasks": dict(per_kind),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
