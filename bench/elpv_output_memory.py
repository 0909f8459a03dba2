"""Peak memory of the stage after scoring for all 2,624 elpv cells: maps, RsCIN, outputs.

Runs what `defectscope score` does once the patch scores exist (anomaly maps, smoothing, RsCIN,
verdict, overlays, scores.csv, report.html) on the real decoded cells, with random patch scores
and embeddings of the real shapes (memory does not depend on their values); prints the peak RSS.

    python bench/elpv_output_memory.py
"""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path

import torch

from defectscope.data.batch import read_batch
from defectscope.methods.musc import MuSc, MuScConfig
from defectscope.report.batch import write_batch_outputs
from defectscope.sample import elpv_root


def main() -> None:
    paths = sorted((elpv_root() / "images").glob("*.png"))
    images, kept, _ = read_batch(paths)
    musc = MuSc(MuScConfig())
    grid = (28, 28)
    generator = torch.Generator().manual_seed(0)
    patch = torch.rand(len(images), grid[0] * grid[1], generator=generator)
    embeddings = torch.nn.functional.normalize(torch.randn(len(images), 1280, generator=generator), dim=1)
    started = time.perf_counter()
    result = musc.result_from_patch_scores(patch, grid, embeddings, [str(p) for p in kept])
    with tempfile.TemporaryDirectory() as out:
        write_batch_outputs(Path(out), result, images, title="elpv")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"{len(images)} images: maps, RsCIN and outputs in {time.perf_counter() - started:.1f} s; peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
