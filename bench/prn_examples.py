"""Save a grid of PRN training examples (generated image | mask) to docs/prn_examples.png.

Rows: real defects pasted onto normal tiles (MTD), Perlin pseudo defects on tiles (MTD), then the
same two kinds on MVTec AD bottle (where the foreground estimate keeps defects on the bottle).
The real defects come from the k = 10 training split of :func:`kshot_split` (seed 0).

Run: python bench/prn_examples.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from defectscope.data import magnetic_tile, mvtec_category, read_image, read_mask
from defectscope.methods.prn import AnomalyGenerator, kshot_split

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
CELL = 160
PER_ROW = 4


def _rows(category, seed: int) -> list[list[np.ndarray]]:
    train_anomalies, _ = kshot_split(category.test, k=10, seed=seed)
    rng = np.random.default_rng(seed)
    normals = [read_image(category.train[int(i)].path) for i in rng.choice(len(category.train), 8, replace=False)]
    anomalies = [(read_image(s.path), read_mask(s.mask_path)) for s in train_anomalies[::3]]
    generator = AnomalyGenerator(normals, anomalies, image_size=CELL)
    rows = []
    for kind in ("real", "pseudo"):
        cells = []
        for index in range(PER_ROW):
            sample = generator.make(index, kind, rng)
            cells += [sample.image, np.repeat((sample.mask * 255).astype(np.uint8)[..., None], 3, axis=2)]
        rows.append(cells)
    return rows


def main() -> None:
    rows = _rows(magnetic_tile(DATASETS / "magnetic_tile", seed=0), 0)
    rows += _rows(mvtec_category(DATASETS / "mvtec_bottle"), 0)
    grid = np.full((len(rows) * (CELL + 4), 2 * PER_ROW * (CELL + 4), 3), 255, dtype=np.uint8)
    for r, cells in enumerate(rows):
        for c, cell in enumerate(cells):
            top, left = r * (CELL + 4), c * (CELL + 4)
            grid[top : top + CELL, left : left + CELL] = cell
    path = ROOT / "docs" / "prn_examples.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    print(path)


if __name__ == "__main__":
    main()
