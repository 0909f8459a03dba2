"""Why does a good set's cut fail on the normal images it left out? Offline diagnosis.

    python bench/good_sets_diag.py --only pa_bdp01_tl pa_btn01_rl --size 24 --seeds 10

Per category the MuSc features of all its normal images (the training normals, at most
``--pool``, plus the test batch's normals) and of its defective test images are computed once,
with the full nearest-patch distance table of every image against every normal image (cached
under ``--cache``). Any score "image x against reference set R" (MuSc's interval mean over R,
combined over feature sets, border rule, blur, map maximum) is then a cheap reduction of that
table, so the schemes below are compared on the same good sets (numpy seeds, as
bench/bench_good_sets.py draws them):

- ``loo``: each good image against the other n - 1 (the calibration scores of ``calibrate``);
- ``test``: a left-out normal against all n good images, averaged over leaving one out (what
  ``predict`` does in reference mode, ``reference_scores(drop_one=True)``);
- ``test_n``: the same against all n (no averaging);
- ``test_loo_k``: against the n - 1 good images without good image k, for every k: the
  jackknife view (the test image scored exactly as a good image is).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_verdicts import categories  # noqa: E402

from defectscope.data.batch import read_batch  # noqa: E402
from defectscope.methods.musc import MuSc, MuScConfig  # noqa: E402
from defectscope.methods.mutual import interval_bounds, similarities_to_distances, to_finest_grid  # noqa: E402
from defectscope.methods.mutual import calibrate_border  # noqa: E402


def table(features: torch.Tensor, normals: int) -> torch.Tensor:
    """(N, normals, L) nearest-patch distances of every image to every normal image (self: inf)."""
    n, length, _ = features.shape
    out = torch.empty(n, normals, length)
    z = features.float().contiguous()
    for j in range(normals):
        sims = torch.einsum("nlc,mc->nlm", z, z[j])  # (N, L, L)
        out[:, j] = similarities_to_distances(sims.amax(dim=2))
    out[torch.arange(normals), torch.arange(normals)] = float("inf")
    return out


def load(name: str, test, pool, cache: Path, pool_size: int) -> dict:
    path = cache / f"{name}.pt"
    if path.exists():
        return torch.load(path)
    if len(pool) > pool_size:
        pool = [pool[i] for i in sorted(np.random.default_rng(0).choice(len(pool), pool_size, replace=False))]
    from_train = len(pool)
    normals = pool + [s for s in test if s.label == 0]
    defects = [s for s in test if s.label != 0]
    images = read_batch([s.path for s in normals] + [s.path for s in defects])[0]
    config = MuScConfig()
    sets, grid, embeddings = MuSc(config).feature_sets(images, native_grids=config.native_grids)
    data = {
        "tables": [table(s, len(normals)) for s in sets], "grid": grid, "embeddings": embeddings,
        "normals": len(normals), "from_train": from_train, "paths": [str(s.path) for s in normals + defects],
    }
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return data


class Scorer:
    """Image scores (map maxima) of query images against reference sets, from the cached tables."""

    def __init__(self, data: dict, config: MuScConfig) -> None:
        self.data, self.config = data, config
        self.model = MuSc(config)

    def patch_set_scores(self, table: torch.Tensor, queries: list[int], references: list[list[int]], drop_one: bool) -> torch.Tensor:
        lower, upper = self.config.lower, self.config.upper
        out = []
        for q, refs in zip(queries, references):
            d = table[q, refs]  # (M, L)
            m = d.shape[0]
            if drop_one:
                start, end = interval_bounds(m - 1, lower, upper)
                s = torch.sort(d, dim=0).values
                values = torch.stack([torch.cat([s[:k], s[k + 1:]])[start:end].mean(dim=0) for k in range(m)]).mean(dim=0)
            else:
                start, end = interval_bounds(m, lower, upper)
                values = torch.sort(d, dim=0).values[start:end].mean(dim=0)
            out.append(values)
        return torch.stack(out)

    def scores(self, queries: list[int], references: list[list[int]], drop_one: bool = False) -> np.ndarray:
        grid = self.data["grid"]
        per_set = [to_finest_grid(self.patch_set_scores(t, queries, references, drop_one), grid) for t in self.data["tables"]]
        patch = calibrate_border(torch.stack(per_set).mean(dim=0), grid, self.config.border_depth)
        return self.model.maps_from_patch_scores(patch, grid).flatten(1).amax(dim=1).numpy().astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=["pa_bdp01_tl", "pa_btn01_rl"])
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--pool", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/goodset-cache"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/goodset-diag.json"))
    parser.add_argument("--cache-only", action="store_true", help="only compute the cached tables")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    config = MuScConfig()
    rows = []
    for name, (test, pool) in categories().items():
        if name not in args.only:
            continue
        data = load(name, test, pool, args.cache, args.pool)
        if args.cache_only:
            print(f"{name}: cached", flush=True)
            continue
        scorer = Scorer(data, config)
        normals = data["normals"]
        for seed in range(args.seeds):
            chosen = sorted(np.random.default_rng(seed).choice(normals, args.size, replace=False).tolist())
            left = [i for i in range(normals) if i not in set(chosen)]
            loo = scorer.scores(chosen, [[j for j in chosen if j != i] for i in chosen])
            test_drop = scorer.scores(left, [chosen] * len(left), drop_one=True)
            test_n = scorer.scores(left, [chosen] * len(left))
            jack = np.stack([scorer.scores(left, [[j for j in chosen if j != k]] * len(left)) for k in chosen])  # (n, left)
            row = {"category": name, "seed": seed, "chosen": chosen, "left": left, "loo": loo.tolist(),
                   "test_drop_one": test_drop.tolist(), "test_n": test_n.tolist(), "test_loo_k": jack.tolist()}
            rows.append(row)
            cut = loo.max()
            print(json.dumps({"category": name, "seed": seed, "cut(max loo)": round(cut, 4),
                              "loo mean/sd": [round(loo.mean(), 4), round(loo.std(), 4)],
                              "test mean/sd": [round(test_drop.mean(), 4), round(test_drop.std(), 4)],
                              "test_n - drop": round(float((test_n - test_drop).mean()), 5),
                              "flagged drop/n": [int((test_drop > cut).sum()), int((test_n > cut).sum())], "left": len(left)}), flush=True)
    args.out.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
