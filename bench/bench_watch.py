"""Latency of `defectscope watch` per image on a simulated production line.

Copies images one at a time into an inbox (write to a hidden name, then rename, as a camera
would): the first ``--min-bank`` at once, then one every ``--interval`` seconds, while `watch_folder` runs in a thread with the
rolling bank; then reports, for the images scored against the bank (after the first batch),
the ``seconds`` column of verdicts.csv (from reading the file to its row being on disk) and the
end-to-end latency from the file's appearance to its row (adds the settle time, polling and any
queue when images arrive faster than they are processed).

    python bench/bench_watch.py --count 50 --interval 3.0 --bank-size 50 --min-bank 20 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from defectscope.data import mvtec_category
from defectscope.options import RunOptions
from defectscope.watch import watch_folder

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=80)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--bank-size", type=int, default=50)
    parser.add_argument("--min-bank", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    bottle = mvtec_category(SHARED / "mvtec_bottle")
    sources = [s.path for s in bottle.train][: args.count - 10] + [s.path for s in bottle.test if s.label == 1][:10]
    with tempfile.TemporaryDirectory() as tmp:
        inbox, out = Path(tmp) / "in", Path(tmp) / "out"
        inbox.mkdir()
        options = dict(bank_size=args.bank_size, min_bank=args.min_bank, settle=0.3, poll=0.1, exit_after_idle=5.0, log=lambda line: None)
        runner = threading.Thread(target=watch_folder, args=(inbox, out, RunOptions(threads=args.threads)), kwargs=options)
        runner.start()
        appeared = {}
        for index, source in enumerate(sources):
            hidden = inbox / f".{index:04d}.png.part"
            shutil.copyfile(source, hidden)
            name = f"{index:04d}_{source.parent.name}_{source.name}"
            hidden.rename(inbox / name)
            appeared[name] = time.time()
            if index >= args.min_bank - 1:
                time.sleep(args.interval)
        runner.join()
        with open(out / "verdicts.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        end_to_end = np.array([os.path.getmtime(out / "maps" / f"{Path(r['path']).stem}.png") - appeared[Path(r["path"]).name] for r in rows[args.min_bank :]])
    streamed = np.array([float(r["seconds"]) for r in rows[args.min_bank :]])
    normal = [r for r in rows if "_good_" in Path(r["path"]).name]
    defective = [r for r in rows if "_good_" not in Path(r["path"]).name]
    flagged = sum(r["verdict"] == "anomalous" for r in normal)
    found = sum(r["verdict"] == "anomalous" for r in defective)
    print(f"{len(rows)} rows; streamed images, seconds column: median {np.median(streamed):.3f} s, p95 {np.percentile(streamed, 95):.3f} s, max {streamed.max():.3f} s")
    print(f"end to end (file appears -> overlay written): median {np.median(end_to_end):.3f} s, p95 {np.percentile(end_to_end, 95):.3f} s")
    print(f"anomalous verdicts: {flagged} of {len(normal)} good images, {found} of {len(defective)} defective")


if __name__ == "__main__":
    main()
