"""Reading a batch of image files up front, before any heavy work."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from defectscope.data.io import read_image
from defectscope.errors import ImageReadError


def _read_or_error(path: Path) -> np.ndarray | ImageReadError:
    try:
        return read_image(path)
    except ImageReadError as exc:
        return exc


def read_batch(
    paths: Sequence[Path], skip_unreadable: bool = False, workers: int = 4
) -> tuple[list[np.ndarray], list[Path], list[tuple[Path, str]]]:
    """Read every image before any heavy work (decoding in ``workers`` threads, order kept).

    The first unreadable file (in input order) stops the run with its one-sentence error,
    unless ``skip_unreadable``: then it is listed in ``skipped``.
    """
    images: list[np.ndarray] = []
    kept: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for path, outcome in zip(paths, pool.map(_read_or_error, paths)):
            if isinstance(outcome, ImageReadError):
                if not skip_unreadable:
                    raise outcome
                skipped.append((path, str(outcome)))
            else:
                images.append(outcome)
                kept.append(path)
    return images, kept, skipped
