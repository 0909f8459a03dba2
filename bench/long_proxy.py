"""A dev proxy for long narrow images with thin cracks (issue 23), built from the magnetic tiles.

This is a *proxy* made from the shared development data (every figure measured on it is a dev
figure): the real category of issue 23 (long narrow steel images with thin cracks) is imitated
by putting magnetic tiles side by side. Nothing in ../shared is long and narrow.

Construction (deterministic: ``numpy.random.default_rng(seed)``, inputs sorted by path):
- every magnetic tile is resized to ``TILE`` x ``TILE`` pixels (bilinear; masks nearest
  neighbour), so a strip of n tiles is TILE x n*TILE, aspect n (4, 5 or 6, drawn uniformly);
- normal tiles come from :func:`defectscope.data.magnetic_tile` (seed 0): training strips only
  from its training half of ``MT_Free``, test strips only from its test half; no tile is used
  twice;
- defective strips: one defective tile of the ``Crack`` class (the thinnest defects of the set;
  all of its tiles with a non-empty mask) at a random position, the other n - 1 tiles normal
  (test half) with an empty mask; stored as one defect type ``crack``;
- the folder is in the MVTec AD layout (``train/good``, ``test/good``, ``test/crack``,
  ``ground_truth/crack/<stem>_mask.png``), so ``bench/bench_prn.py --suite --root FOLDER`` and
  ``defectscope`` read it as any category; ``kshot_split`` moves k = 10 defective strips to
  training. ``manifest.json`` records the source tiles of each strip.

Sizes (defaults): 90 training strips (~450 normal tiles; below the 190 normal images where PRN
holds back 10 % for its verdict, so PRN cross-fits 3 fold models on the strips), 40 normal and
all Crack-based defective test strips (57, of which 10 go to training).

A caveat: the strips' seams between tiles fall exactly where ``tile_aspect`` cuts (the tiles are
square), which real long images do not offer.

    python bench/long_proxy.py --out /tmp/prnlong/long_strip
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from defectscope.data import magnetic_tile

ROOT = Path(__file__).resolve().parents[1]
TILE = 160
COUNTS = (4, 5, 6)


def _tile(path: Path, mask: bool = False) -> np.ndarray:
    with Image.open(path) as image:
        image = image.convert("L")
        return np.asarray(image.resize((TILE, TILE), Image.NEAREST if mask else Image.BILINEAR))


def build(source: Path, out: Path, seed: int = 0, train_strips: int = 90, normal_test: int = 40, defect_class: str = "Crack") -> dict:
    """Write the proxy to ``out`` (see the module docstring); returns the manifest."""
    category = magnetic_tile(source, seed=0)
    rng = np.random.default_rng(seed)
    train_pool = [s.path for s in sorted(category.train, key=lambda s: str(s.path))]
    test_pool = [s.path for s in sorted((s for s in category.test if s.label == 0), key=lambda s: str(s.path))]
    defects = sorted((s for s in category.test if s.defect_type == defect_class), key=lambda s: str(s.path))
    defects = [s for s in defects if (np.asarray(Image.open(s.mask_path).convert("L")) > 127).any()]
    train_order = list(rng.permutation(len(train_pool)))
    test_order = list(rng.permutation(len(test_pool)))

    def take(order: list, pool: list, count: int) -> list[Path]:
        if len(order) < count:
            raise SystemExit(f"not enough normal tiles left for the strips asked ({len(order)} < {count})")
        return [pool[order.pop(0)] for _ in range(count)]

    manifest: dict = {"seed": seed, "tile": TILE, "defect_class": defect_class, "source": str(source), "strips": {}}
    for folder in ("train/good", "test/good", "test/crack", "ground_truth/crack"):
        (out / folder).mkdir(parents=True, exist_ok=True)

    def write(name: str, paths: list[Path], defect_at: int | None = None, mask_path: Path | None = None) -> None:
        strip = np.concatenate([_tile(p) for p in paths], axis=1)
        Image.fromarray(strip).save(out / f"{name}.png")
        if defect_at is not None:
            mask = np.zeros_like(strip)
            mask[:, defect_at * TILE : (defect_at + 1) * TILE] = np.where(_tile(mask_path, mask=True) > 127, 255, 0)
            stem = Path(name).name
            Image.fromarray(mask.astype(np.uint8)).save(out / "ground_truth" / "crack" / f"{stem}_mask.png")
        manifest["strips"][name] = {"tiles": [str(p) for p in paths], "defect_at": defect_at}

    for i in range(train_strips):
        write(f"train/good/{i:03d}", take(train_order, train_pool, int(rng.choice(COUNTS))))
    for i in range(normal_test):
        write(f"test/good/{i:03d}", take(test_order, test_pool, int(rng.choice(COUNTS))))
    for i, sample in enumerate(defects):
        count = int(rng.choice(COUNTS))
        at = int(rng.integers(count))
        paths = take(test_order, test_pool, count - 1)
        paths.insert(at, sample.path)
        write(f"test/crack/{i:03d}", paths, at, sample.mask_path)
    manifest["counts"] = {"train_good": train_strips, "test_good": normal_test, "test_crack": len(defects),
                          "unused_train_tiles": len(train_order), "unused_test_tiles": len(test_order)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "datasets" / "magnetic_tile"))
    parser.add_argument("--out", default="/tmp/prnlong/long_strip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-strips", type=int, default=90)
    parser.add_argument("--normal-test", type=int, default=40)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: remove it or choose another --out")
    manifest = build(Path(args.source), out, args.seed, args.train_strips, args.normal_test)
    print(json.dumps(manifest["counts"]))


if __name__ == "__main__":
    main()
