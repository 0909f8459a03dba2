"""Seeded benchmark batches for CoDeGraph: recurring defects vs rare, all-different defects.

Batches (all zero-shot: each batch scores itself):

* ``mtd_blowhole_{10,30,50}``: ``size`` Magnetic Tile images, of which 10 / 30 / 50 % are
  Blowhole tiles (one defect type recurring), the rest defect-free tiles;
* ``mtd_mixed_10``: ``size`` Magnetic Tile images, 10 % defective, drawn from all five defect
  classes (rare and mostly different defects);
* ``bottle_test``: the MVTec AD bottle test set as it is (83 images, 63 defective of 3 types,
  no single dominant repetition of an identical defect);
* ``hazelnut_colour_{10,30,50}``: hazelnut_toy photos, good ones (``train/good`` and
  ``test/good``, 34 in all) plus 4 / 14 / 17 of the 17 ``colour`` defects (pen marks of the same
  kind on every nut: one defect type recurring), i.e. 38 / 47 / 34 images with 11 / 30 / 50 %
  defective;
* ``bottle_pasted_{10,30,50}``: 60 MVTec bottle ``train/good`` images, of which 6 / 18 / 30 carry
  the SAME real defect: the pixels under the mask of one real ``contamination`` test image
  (seeded choice among those covering 0.5 to 3 % of the image), copied at the same position (the
  "worn tool marks every part" case: an identical defect recurring). These images and their exact
  masks are written once under ``bench/results/pasted_bottle/`` (deterministic for a seed).

Normal tiles come from the ``magnetic_tile(seed=0)`` test split (476 tiles); defective tiles
with an empty published mask are never drawn. Draws use ``numpy.random.default_rng([seed,
batch number])``, so a batch does not change when others are added. Print the batches with

    python bench/recurring_batches.py --size 80 --seed 0
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from defectscope.data.io import read_image, read_mask
from defectscope.data.layouts import Sample, magnetic_tile, mvtec_category

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
PASTED = Path(__file__).resolve().parent / "results" / "pasted_bottle"
PASTED_SIZE = 60
BLOWHOLE_FRACTIONS = (0.1, 0.3, 0.5)
HAZELNUT_COUNTS = ((4, 34), (14, 33), (17, 17))
"""(colour defects, good photos) of the hazelnut batches."""


@dataclass(frozen=True)
class Batch:
    """One benchmark batch: its name, its samples (paths, labels, masks) and whether one
    defect type recurs in it."""

    name: str
    samples: list[Sample]
    recurring: bool


def _has_defect_pixels(sample: Sample) -> bool:
    return sample.mask_path is not None and bool(read_mask(sample.mask_path).any())


def _draw(rng: np.random.Generator, pool: list[Sample], count: int) -> list[Sample]:
    if count > len(pool):
        raise ValueError(f"asked for {count} samples from a pool of {len(pool)}")
    picked = rng.choice(len(pool), size=count, replace=False)
    return [pool[int(i)] for i in sorted(picked)]


def build_batches(size: int = 80, seed: int = 0, datasets: Path = DATASETS) -> list[Batch]:
    """The benchmark batches (see the module docstring), in a fixed order."""
    tiles = magnetic_tile(datasets / "magnetic_tile", seed=0)
    normal = [s for s in tiles.test if s.label == 0]
    defective = [s for s in tiles.test if s.label == 1 and _has_defect_pixels(s)]
    blowholes = [s for s in defective if s.defect_type == "Blowhole"]
    batches = []
    for number, fraction in enumerate(BLOWHOLE_FRACTIONS):
        rng = np.random.default_rng([seed, number])
        count = int(round(fraction * size))
        samples = _draw(rng, normal, size - count) + _draw(rng, blowholes, count)
        batches.append(Batch(f"mtd_blowhole_{int(round(fraction * 100))}", samples, True))
    rng = np.random.default_rng([seed, len(BLOWHOLE_FRACTIONS)])
    count = int(round(0.1 * size))
    samples = _draw(rng, normal, size - count) + _draw(rng, defective, count)
    batches.append(Batch("mtd_mixed_10", samples, False))
    bottle = mvtec_category(datasets / "mvtec_bottle")
    batches.append(Batch("bottle_test", list(bottle.test), False))
    hazelnut = mvtec_category(datasets / "hazelnut_toy")
    good = list(hazelnut.train) + [s for s in hazelnut.test if s.label == 0]
    colour = [s for s in hazelnut.test if s.defect_type == "colour"]
    for number, (defects, normals) in enumerate(HAZELNUT_COUNTS, start=len(BLOWHOLE_FRACTIONS) + 1):
        rng = np.random.default_rng([seed, number])
        samples = _draw(rng, good, normals) + _draw(rng, colour, defects)
        share = int(round(100 * defects / (defects + normals), -1))
        batches.append(Batch(f"hazelnut_colour_{share}", samples, True))
    batches.extend(pasted_bottle_batches(seed, datasets))
    return batches


def pasted_bottle_batches(seed: int = 0, datasets: Path = DATASETS, out: Path = PASTED) -> list[Batch]:
    """The ``bottle_pasted_*`` batches (see the module docstring); writes their images once."""
    from PIL import Image

    bottle = mvtec_category(datasets / "mvtec_bottle")
    sources = []
    for sample in bottle.test:
        if sample.defect_type == "contamination" and sample.mask_path is not None:
            area = read_mask(sample.mask_path).mean()
            if 0.005 <= area <= 0.03:
                sources.append(sample)
    rng = np.random.default_rng([seed, 20])
    source = sources[int(rng.integers(len(sources)))]
    defect_image = read_image(source.path)
    defect_mask = read_mask(source.mask_path)
    batches = []
    for number, fraction in enumerate(BLOWHOLE_FRACTIONS):
        rng = np.random.default_rng([seed, 21 + number])
        chosen = _draw(rng, list(bottle.train), PASTED_SIZE)
        count = int(round(fraction * PASTED_SIZE))
        pasted = set(int(i) for i in rng.choice(PASTED_SIZE, size=count, replace=False))
        name = f"bottle_pasted_{int(round(fraction * 100))}"
        folder = out / f"seed{seed}" / name
        samples = []
        for index, sample in enumerate(chosen):
            if index not in pasted:
                samples.append(Sample(sample.path, 0))
                continue
            image_path = folder / f"{sample.path.stem}.png"
            mask_path = folder / f"{sample.path.stem}_mask.png"
            if not (image_path.is_file() and mask_path.is_file()):
                folder.mkdir(parents=True, exist_ok=True)
                image = read_image(sample.path).copy()
                image[defect_mask] = defect_image[defect_mask]
                for array, path in ((image, image_path), (defect_mask.astype(np.uint8) * 255, mask_path)):
                    partial = path.with_name(f".{path.stem}.partial.png")
                    Image.fromarray(array).save(partial)
                    partial.replace(path)
            samples.append(Sample(image_path, 1, mask_path, f"pasted {source.path.name}"))
        batches.append(Batch(name, samples, True))
    return batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for batch in build_batches(args.size, args.seed):
        kinds: dict[str, int] = {}
        for sample in batch.samples:
            key = sample.defect_type or "good"
            kinds[key] = kinds.get(key, 0) + 1
        print(f"{batch.name}: {len(batch.samples)} images {kinds} recurring={batch.recurring}")


if __name__ == "__main__":
    main()
