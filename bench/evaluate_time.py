"""End-to-end time of `defectscope evaluate` for a few variants, alternated, wall and CPU.

    python bench/evaluate_time.py --rounds 3 \
        --variant "lite0=" --variant "lite2=--backbone efficientnet-lite2"
    python bench/evaluate_time.py --variant "before@/path/to/old/src=" --variant "after="

Each variant is ``NAME[@PYTHONPATH]=EXTRA ARGS`` (``@PYTHONPATH``: run that checkout's code).
Every round runs each variant once, in turn, as a fresh process (imports included):
``python -m defectscope evaluate DATA --out OUT/NAME --overwrite EXTRA``. Printed per run and
as medians per variant: wall seconds, CPU seconds (user + sys of the child, all its threads; less
sensitive than wall to other programs on a shared machine) and the 1-minute load average before
and after. Alternating spreads a changing load over the variants; compare variants by ratio
within one session.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_variant(text: str) -> tuple[str, str | None, list[str]]:
    head, _, extra = text.partition("=")
    name, _, path = head.partition("@")
    if not name:
        raise SystemExit(f"variant {text!r} needs a name: NAME[@PYTHONPATH]=ARGS")
    return name, path or None, shlex.split(extra)


def run_once(data: Path, out: Path, pythonpath: str | None, extra: list[str]) -> tuple[float, float, float, float]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, "-m", "defectscope", "evaluate", str(data), "--out", str(out), "--overwrite", *extra]
    load_before = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return wall, cpu, load_before, os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "mvtec_bottle")
    parser.add_argument("--variant", action="append", required=True, help="NAME[@PYTHONPATH]=EXTRA ARGS (repeatable)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "defectscope_evaluate_time")
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant]
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name, _, _ in variants}
    for number in range(1, args.rounds + 1):
        for name, path, extra in variants:
            wall, cpu, load_before, load_after = run_once(args.data, args.out / name, path, extra)
            runs[name].append((wall, cpu))
            print(f"round {number} {name}: wall {wall:.1f} s, CPU {cpu:.1f} s, load {load_before:.1f} -> {load_after:.1f}", flush=True)
    print("| variant | wall median (s) | CPU median (s) | runs (wall / CPU) |")
    print("|---|---|---|---|")
    for name, values in runs.items():
        walls, cpus = [w for w, _ in values], [c for _, c in values]
        listed = ", ".join(f"{w:.1f} / {c:.1f}" for w, c in values)
        print(f"| {name} | {statistics.median(walls):.1f} | {statistics.median(cpus):.1f} | {listed} |")


if __name__ == "__main__":
    main()
