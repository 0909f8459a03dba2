"""Time writing one batch's outputs (overlays, masks, scores.csv, settings.json, report.html).

    python bench/bench_outputs.py [--category mvtec_bottle] [--repeats 5] [--profile]

The scored batch (the Result, the images, labels and metrics of `defectscope evaluate` on the
category's test set, default settings, one thread) is computed once and pickled under
``--cache`` (default /tmp/defectscope_bench_outputs); later runs time only
:func:`defectscope.report.batch.write_batch_outputs`, each into a fresh folder, and print the
median wall-clock and CPU time (all threads of the process; less sensitive to other programs
on a busy machine) and every run. ``--profile`` adds a cProfile of one run (top 25 by cumulative time).
"""

from __future__ import annotations

import argparse
import cProfile
import pickle
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def scored_batch(category: str, cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    stored = cache / f"{category}.pkl"
    if stored.is_file():
        with open(stored, "rb") as handle:
            return pickle.load(handle)
    from defectscope.data.layouts import discover
    from defectscope.options import RunOptions, apply_threads
    from defectscope.pipeline import _labels_text, evaluate_category

    options = RunOptions(threads=1)
    apply_threads(1)
    (found,) = [c for c in discover(ROOT.parent / "shared" / "datasets" / category)]
    result, images, samples, skipped, metrics = evaluate_category(found, options)
    batch = {"result": result, "images": images, "labels": _labels_text(samples), "skipped": skipped,
             "metrics": {found.name: metrics}, "title": f"defectscope: {found.name}"}
    with open(stored, "wb") as handle:
        pickle.dump(batch, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return batch


def write_once(batch, folder: Path, workers: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process, all threads) of one write."""
    from defectscope.report.batch import write_batch_outputs

    started, cpu = time.perf_counter(), time.process_time()
    write_batch_outputs(folder, batch["result"], batch["images"], title=batch["title"], skipped=batch["skipped"],
                        labels=batch["labels"], metrics=batch["metrics"], communities=batch["result"].extras.get("communities"),
                        workers=workers)
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--category", default="mvtec_bottle")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "defectscope_bench_outputs")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--keep", type=Path, default=None, help="also write one run's outputs here, to look at")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    batch = scored_batch(args.category, args.cache)
    n = len(batch["result"].paths)
    walls, cpus = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            wall, cpu = write_once(batch, Path(tmp) / "out", args.workers)
        walls.append(wall)
        cpus.append(cpu)
    print(f"{args.category}: {n} images, workers={args.workers}: wall median {statistics.median(walls):.2f} s, "
          f"CPU median {statistics.median(cpus):.2f} s over {len(walls)} runs "
          f"(wall {', '.join(f'{t:.2f}' for t in walls)}; CPU {', '.join(f'{t:.2f}' for t in cpus)})")
    if args.keep is not None:
        shutil.rmtree(args.keep, ignore_errors=True)
        write_once(batch, args.keep, args.workers)
        sizes = {p.name: p.stat().st_size for p in args.keep.iterdir() if p.is_file()}
        maps = sum(p.stat().st_size for p in (args.keep / "maps").iterdir())
        print(f"kept in {args.keep}: report.html {sizes.get('report.html', 0) / 1e6:.2f} MB, maps/ {maps / 1e6:.2f} MB")
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            profiler = cProfile.Profile()
            profiler.enable()
            write_once(batch, Path(tmp) / "out", args.workers)
            profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(25)
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
