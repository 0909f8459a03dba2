"""The offline demo: real solar-cell electroluminescence images from the `elpv-dataset` package.

The package (CC BY-NC-SA 4.0 images, Deitsch et al., "Automatic classification of defective
photovoltaic module cells in electroluminescence images", Solar Energy 2019) ships 2,624
300x300 cells, each with a defect probability (0, 1/3, 2/3, 1) given by experts. The demo takes
the first cells in file order of the monocrystalline type with probability 0 (normal) and 1
(defective), 80% normal and 20% defective, and evaluates zero-shot MuSc at image level (the
package has no pixel masks).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Callable

from defectscope.data.layouts import Category, Sample
from defectscope.errors import ConfigError, DatasetError

DEFECTIVE_SHARE = 0.2


def elpv_root() -> Path:
    """Folder of the installed `elpv-dataset` package data, or a clear error."""
    try:
        import elpv_dataset
    except ImportError:
        raise DatasetError(
            "the demo needs the `elpv-dataset` package: install it with `pip install elpv-dataset` "
            "(or `pip install defectscope[sample]`)"
        ) from None
    return Path(elpv_dataset.__file__).parent / "data"


def elpv_category(count: int = 60, cell_type: str = "mono") -> Category:
    """A deterministic, labelled sample of ``count`` elpv cells as an image-level category."""
    if count < 5:
        raise ConfigError(f"the demo needs at least 5 images, got --count {count}")
    root = elpv_root()
    normal, defective = [], []
    with open(root / "labels.csv", newline="") as handle:
        for row in csv.reader(handle, delimiter=" ", skipinitialspace=True):
            path, probability, kind = row[0], float(row[1]), row[2]
            if kind != cell_type:
                continue
            if probability == 0.0:
                normal.append(Sample(root / path, 0))
            elif probability == 1.0:
                defective.append(Sample(root / path, 1, defect_type="defective"))
    n_defective = max(1, round(count * DEFECTIVE_SHARE))
    test = normal[: count - n_defective] + defective[:n_defective]
    if len(test) < count:
        raise ConfigError(f"the elpv sample has only {len(test)} {cell_type} cells labelled 0 or 1")
    return Category(name="elpv", root=root, layout="elpv", train=[], test=sorted(test, key=lambda s: s.path), has_masks=False)


def run_demo(
    out: str | Path,
    *,
    count: int = 60,
    overwrite: bool = False,
    threads: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    device: str = "auto",
) -> dict[str, dict[str, float | None]]:
    """Score the elpv sample with the default MuSc settings and write the usual outputs."""
    from defectscope.pipeline import RunOptions, evaluate_categories

    options = RunOptions(overwrite=overwrite, threads=threads, device=device)
    return evaluate_categories([elpv_category(count)], out, options, progress=progress)
