"""Why :func:`defectscope.methods.partcrop.otsu` is kept as it is: on the distance array that
:func:`~defectscope.methods.partcrop.find_part` thresholds, for every image under a folder, its cut
against scikit-image's ``threshold_otsu`` (on the same 256-bin histogram, the chosen bin mapped
back to its upper edge; and as it is, the bin's centre) and against
:func:`defectscope.methods.labelfree.otsu_cut` (exact split of the sorted values, the lower group
at least ``MIN_GROUP``, the cut a value of the data). Counts how often the cut and the foreground
(``distance > cut``) are the same, and lists the images where the mapped scikit-image cut differs.

    python bench/partcrop_otsu.py ../shared/datasets
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from skimage.filters import threshold_otsu

from defectscope.data.io import IMAGE_EXTENSIONS, read_image
from defectscope.methods import labelfree, partcrop


def skimage_edge(values: np.ndarray, bins: int = 256) -> float:
    """scikit-image's Otsu bin on partcrop.otsu's histogram, as that bin's upper edge."""
    values = values.ravel()
    if float(values.max()) <= float(values.min()):
        return float(values.max())
    counts, edges, centres = partcrop.histogram(values, bins)
    cut = threshold_otsu(hist=(counts, centres))
    return float(edges[int(np.searchsorted(centres, cut)) + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    args = parser.parse_args()
    seen: list[np.ndarray] = []
    original = partcrop.otsu

    def spy(values: np.ndarray, bins: int = 256) -> float:
        seen.append(np.asarray(values).ravel().copy())
        return original(values, bins)

    partcrop.otsu = spy
    paths = sorted(p for p in args.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                   and "ground_truth" not in p.parts and "_mask" not in p.name)
    others = {"scikit-image, upper edge": skimage_edge,
              "scikit-image, bin centre": lambda v: float(threshold_otsu(v, nbins=256)),
              "labelfree.otsu_cut": labelfree.otsu_cut}
    cuts_equal = dict.fromkeys(others, 0)
    foreground_equal = dict.fromkeys(others, 0)
    for path in paths:
        seen.clear()
        partcrop.find_part(read_image(path))
        values = seen[0]
        ours = original(values)
        for name, other in others.items():
            cut = other(values)
            cuts_equal[name] += cut == ours
            foreground_equal[name] += bool(np.array_equal(values > cut, values > ours))
            if name == "scikit-image, upper edge" and cut != ours:
                print(f"differs: {path}  partcrop {ours:.6g}  scikit-image {cut:.6g}  foreground pixels "
                      f"{int((values > ours).sum())} vs {int((values > cut).sum())} of {values.size}")
    print(f"{len(paths)} images under {args.root}")
    for name in others:
        print(f"{name:26s} cut equal {cuts_equal[name]}/{len(paths)}, foreground equal {foreground_equal[name]}/{len(paths)}")


if __name__ == "__main__":
    main()
