"""The seeded k-shot split for supervised evaluation (PRN on MTD, MVTec AD, ...).

``kshot_split`` takes a category's test samples and moves ``k`` defective images (with masks) of
every defect type to training; everything else (all normal test images and the remaining
defective ones) stays in the test set. Per defect type, the samples are sorted by resolved path
and shuffled by ``numpy.random.default_rng([seed, crc32(defect_type)])``; the first ``k`` of the
shuffled order are taken (all but one when a type has ``k`` or fewer images, so every type keeps
at least one test image). Only samples whose mask has foreground pixels are eligible for
training (e.g. the 4 empty ``Uneven`` masks of MTD stay in test). The split depends only on the
file list, ``k`` and ``seed``.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from defectscope.errors import ConfigError
from defectscope.methods.config import DEFAULT_KSHOT


def _mask_has_foreground(mask_path: Path | None) -> bool:
    if mask_path is None:
        return False
    with Image.open(mask_path) as mask:
        return bool((np.asarray(mask.convert("L")) > 127).any())


def kshot_split(
    category_test_samples: Sequence[Any], k: int = DEFAULT_KSHOT, seed: int = 0
) -> tuple[list[Any], list[Any]]:
    """Split test samples into (train_anomalies, test_samples): k labelled defects per type to training.

    Samples need ``path``, ``label`` (1 = defective), ``mask_path`` and ``defect_type``
    attributes (:class:`defectscope.data.layouts.Sample`). Returned lists keep the input order.
    """
    if k < 0:
        raise ConfigError(f"k-shot split needs k >= 0, got {k}.")
    by_type: dict[str, list[int]] = defaultdict(list)
    for position, sample in enumerate(category_test_samples):
        if getattr(sample, "label", None) == 1:
            by_type[str(getattr(sample, "defect_type", None))].append(position)
    chosen: set[int] = set()
    for defect_type, positions in sorted(by_type.items()):
        ordered = sorted(positions, key=lambda p: str(Path(category_test_samples[p].path).resolve()))
        rng = np.random.default_rng([seed, zlib.crc32(defect_type.encode())])
        shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
        eligible = [p for p in shuffled if _mask_has_foreground(category_test_samples[p].mask_path)]
        take = min(k, max(0, len(ordered) - 1))
        chosen.update(eligible[:take])
    train = [s for p, s in enumerate(category_test_samples) if p in chosen]
    test = [s for p, s in enumerate(category_test_samples) if p not in chosen]
    return train, test
