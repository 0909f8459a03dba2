"""The border-peak share a detector WITHOUT border bias shows, when neighbouring patch scores are
correlated (issue 10).

    PYTHONPATH=src python bench/border_null.py --rho 0 0.74 0.78 0.85 [--normals 24 80] [--fields 4000]

``bench/suite.py`` counts the normal images whose map maximum lies in the outer band of the map
(one patch of the 28 x 28 grid wide: 13.8 % of the area). The area is the right reference only for
independent patch scores. MuSc's are not independent: LNAMD aggregates 3 x 3 and 5 x 5
neighbourhoods and the receptive fields overlap, so a normal image's interior patch scores have a
lag-1 correlation of about 0.74 to 0.87 (lag 2 about its square: close to an exponential
correlation). The maximum of a correlated field falls on its boundary more often than the area
says (a boundary point needs a larger value on one side only). This script draws stationary
fields with exponential correlation ``rho`` per patch (separable AR(1), burn-in cut off), passes
them through the library's map path (bilinear upsample, blur sigma 4, edge evening:
:mod:`defectscope.methods.smoothing`) and prints the share of maxima in the band, with the 90 %
band of the count that ``--normals`` normal images would show.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import binom

from defectscope.methods.smoothing import equalise_edges, gaussian_blur, upsample

GRID = (28, 28)
STRIDE = 8
BURN_IN = 12


def correlated_fields(count: int, rho: float, grid: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(count, h, w) unit-variance fields with correlation rho ** |lag| along rows and columns."""
    h, w = grid[0] + 2 * BURN_IN, grid[1] + 2 * BURN_IN
    x = rng.standard_normal((count, h, w))
    for axis in (1, 2):
        x = np.moveaxis(x, axis, -1).copy()
        for t in range(1, x.shape[-1]):
            x[..., t] = rho * x[..., t - 1] + np.sqrt(1.0 - rho * rho) * x[..., t]
        x = np.moveaxis(x, -1, axis)
    return x[:, BURN_IN:BURN_IN + grid[0], BURN_IN:BURN_IN + grid[1]]


def border_share(rho: float, fields: int, sigma: float, seed: int = 0) -> float:
    """Share of the fields whose map maximum lies in the one-patch outer band."""
    rng = np.random.default_rng(seed)
    size = (GRID[0] * STRIDE, GRID[1] * STRIDE)
    band = np.zeros(size, dtype=bool)
    band[:STRIDE] = band[-STRIDE:] = True
    band[:, :STRIDE] = band[:, -STRIDE:] = True
    hits = 0
    for start in range(0, fields, 500):
        chunk = correlated_fields(min(500, fields - start), rho, GRID, rng)
        scores = torch.from_numpy(chunk.reshape(len(chunk), -1)).float()
        maps = equalise_edges(gaussian_blur(upsample(scores, GRID, size), sigma), GRID, sigma)
        hits += int(band.reshape(-1)[maps.flatten(1).argmax(dim=1).numpy()].sum())
    return hits / fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.74, 0.78, 0.85])
    parser.add_argument("--normals", type=int, nargs="+", default=[24, 80])
    parser.add_argument("--fields", type=int, default=4000)
    parser.add_argument("--sigma", type=float, default=4.0)
    args = parser.parse_args()
    area = 1.0 - (GRID[0] - 2) * (GRID[1] - 2) / (GRID[0] * GRID[1])
    print(f"band area {area:.1%} of the {GRID[0]} x {GRID[1]} grid; {args.fields} fields per rho")
    print("| lag-1 correlation rho | expected border-peak share | "
          + " | ".join(f"90 % band of the count, {n} normals" for n in args.normals) + " |")
    print("|---|---|" + "---|" * len(args.normals))
    for rho in args.rho:
        share = border_share(rho, args.fields, args.sigma)
        error = np.sqrt(share * (1 - share) / args.fields)
        bands = [binom.interval(0.9, n, share) for n in args.normals]
        print(f"| {rho:.2f} | {share:.1%} +- {error:.1%} | "
              + " | ".join(f"{int(lo)} to {int(hi)}" for lo, hi in bands) + " |", flush=True)


if __name__ == "__main__":
    main()
