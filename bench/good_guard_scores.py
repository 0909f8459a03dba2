"""Score many random good sets per category from the cached distance tables (no backbone), for
choosing the known-good guard band (bench/good_guard.py reads the output).

    python bench/good_sets_diag.py --cache-only --only CATEGORY ...      # tables, once
    python bench/good_guard_scores.py --sizes 24 19 30 38 --sets 200 --threads 1

Two score schemes per (category, n, seed), the set drawn from all normal images of the category
with numpy seed ``seed`` (seeds 0-9 are bench/bench_good_sets.py's draws):

- ``library`` (what ``MuSc.calibrate`` / ``predict`` do in reference mode): each good image
  scored leave-one-out against the other n - 1, every other image (the left-out normals and the
  defective images) against the n good images averaged over leaving one out;
- ``fixed``: one score per image independent of the draw (each normal image against all the
  other normals of the category, each defective image against all normals): exchangeable by
  construction, and cheap (subsets of one array), so it gives many sets where the library
  scheme gives few.

The loop runs seed by seed (all sizes, all categories for one seed), writing after each seed, so
a run stopped early still holds complete seeds. Output: one .npz per category under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from good_sets_exchange import TableScorer  # noqa: E402

from defectscope.methods.musc import MuScConfig  # noqa: E402
from defectscope.methods.smoothing import equalise_edges, gaussian_blur, upsample  # noqa: E402


class FastScorer(TableScorer):
    """TableScorer with the backbone's stride looked up once (the same maps otherwise)."""

    def __init__(self, data: dict, config: MuScConfig) -> None:
        super().__init__(data, config)
        backbone = self.model.backbone
        stride = backbone.image_size / backbone.grid[0]
        grid = data["grid"]
        self.size = (int(round(grid[0] * stride)), int(round(grid[1] * stride)))
        self.model.maps_from_patch_scores = self._maps

    def _maps(self, patch: torch.Tensor, grid) -> torch.Tensor:
        maps = gaussian_blur(upsample(patch, grid, self.size), self.config.smoothing_sigma)
        if self.config.border_depth > 0:
            maps = equalise_edges(maps, grid, self.config.smoothing_sigma)
        return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[24, 19, 30, 38])
    parser.add_argument("--sets", type=int, default=200)
    parser.add_argument("--min-test-normals", type=int, default=10)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-library", action="store_true", help="only the fixed scheme")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/goodset-cache"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/goodguard-scores"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = MuScConfig()
    args.out.mkdir(parents=True, exist_ok=True)
    cats = {}
    for path in sorted(args.cache.glob("*.pt")):
        if args.only and path.stem not in args.only:
            continue
        data = torch.load(path)
        scorer = FastScorer(data, config)
        pool, total = data["normals"], len(data["paths"])
        everyone = list(range(pool))
        fixed_normals = np.concatenate([scorer.maxima([i], [j for j in everyone if j != i], "plain") for i in everyone])
        fixed_defects = scorer.maxima(list(range(pool, total)), everyone, "plain")
        cats[path.stem] = {"scorer": scorer, "pool": pool, "total": total, "fixed": np.concatenate([fixed_normals, fixed_defects]),
                           "library": {}}
        print(f"{path.stem}: pool {pool}, defects {total - pool}, fixed scores done", flush=True)
        if args.no_library:
            del cats[path.stem]["scorer"]
            data.clear()
    for name, c in cats.items():
        np.savez(args.out / f"{name}.npz", fixed=c["fixed"], pool=c["pool"], total=c["total"])
    if args.no_library:
        return
    start = time.time()
    for seed in range(args.sets):
        for size in args.sizes:
            for name, c in cats.items():
                pool, total = c["pool"], c["total"]
                if pool - size < args.min_test_normals:
                    continue
                chosen = sorted(np.random.default_rng(seed).choice(pool, size, replace=False).tolist())
                rest = [i for i in range(total) if i not in set(chosen)]
                own = c["scorer"].maxima(chosen, chosen, "loo")
                other = c["scorer"].maxima(rest, chosen, "drop_one")
                c["library"].setdefault(size, []).append(np.concatenate([own, other]))
        for name, c in cats.items():
            arrays = {f"library_{size}": np.stack(v) for size, v in c["library"].items()}
            tmp = args.out / f"{name}.tmp.npz"
            np.savez(tmp, fixed=c["fixed"], pool=c["pool"], total=c["total"], **arrays)
            tmp.replace(args.out / f"{name}.npz")
        print(f"seed {seed} done, {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
