"""Magnetic tiles: PRN's pixel figures without the test images that have a near twin among the
labelled training defects (maps saved by ``bench/bench_prn.py --suite --only magnetic_tile
--save-maps FILE.npz``).

The MTD folders hold some photographs of what looks like one tile more than once: file names
``exp<E>_num_<N>.jpg`` with numbers N close together and sizes equal to a few pixels, under other
exposures. A test image whose twin is one of the k labelled defects PRN trained on may be scored
well for having been seen, not for generalising. Here a *twin* is an image of the same defect
class whose N differs by less than ``--num-gap`` (default 200) and whose width and height each
differ by at most ``--size-gap`` pixels (default 4): a heuristic read off the file names, not a
pixel comparison. The labelled training defects are the class's images that are not in the saved
test set. Pixel AP and AUROC at each image's own size (the benchmark's image protocol) over all
saved test images, and again without the defective test images that have a twin in training
(every normal test image kept). Prints both and writes nothing.

    python bench/prn_mt_twins.py /tmp/maps/mt_s0.npz [more.npz ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from defectscope.metrics import pixel_metrics

from prn_maps import at_image_size, test_masks
from prn_mt_split import defect_type


def number(path: Path) -> int:
    return int(path.stem.split("_num_")[1])


def twinned(test_paths: list[str], num_gap: int, size_gap: int) -> set[str]:
    """The defective test paths with a twin among their class's images outside the test set."""
    tested = {str(Path(p).resolve()) for p in test_paths}
    outside: dict[Path, list[tuple[int, tuple[int, int]]]] = {}  # class folder -> (N, size) of its training images

    def training(folder: Path) -> list[tuple[int, tuple[int, int]]]:
        if folder not in outside:
            outside[folder] = [(number(other), Image.open(other).size) for other in sorted(folder.glob("*.jpg"))
                               if str(other.resolve()) not in tested]
        return outside[folder]

    out = set()
    for path in test_paths:
        if defect_type(path) is None:
            continue
        here = Path(path)
        (width, height), n = Image.open(here).size, number(here)
        if any(abs(other_n - n) < num_gap and abs(other_width - width) <= size_gap and abs(other_height - height) <= size_gap
               for other_n, (other_width, other_height) in training(here.parent)):
            out.add(path)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("maps", nargs="+", help=".npz files from bench_prn.py --save-maps (magnetic tiles)")
    parser.add_argument("--num-gap", type=int, default=200)
    parser.add_argument("--size-gap", type=int, default=4)
    args = parser.parse_args()
    for file in args.maps:
        saved = np.load(file)
        paths = [str(p) for p in saved["paths"]]
        twins = twinned(paths, args.num_gap, args.size_gap)
        keep = np.array([p not in twins for p in paths])
        masks = test_masks(saved["mask_paths"], saved["shapes"], saved["labels"])
        maps = at_image_size(saved["maps"], saved["shapes"])
        every = pixel_metrics(maps, masks)
        kept = pixel_metrics([m for m, k in zip(maps, keep) if k], [m for m, k in zip(masks, keep) if k])
        defective = int(saved["labels"].sum())
        print(f"{file}: {defective} defective test images, {len(twins)} with a twin in training; "
              f"P-AP all {every['pixel_ap']:.3f} / without twins {kept['pixel_ap']:.3f}; "
              f"P-AUROC {every['pixel_auroc']:.3f} / {kept['pixel_auroc']:.3f}")


if __name__ == "__main__":
    main()
