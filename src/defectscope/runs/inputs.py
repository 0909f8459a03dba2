"""The one input source of every run: which files a run reads, and how it reads them.

- :func:`folder_images`: every image under a plain folder (recursive), for score, predict, watch.
- :func:`good_images`: known-good images (``--good``, ``fit``, ``watch --good``): an MVTec AD
  category root means its ``train/good``, anything else every image in the folder.
- dataset categories (evaluate) come from :func:`defectscope.data.layouts.discover`.

:func:`read_samples` reads them all before any heavy work with the run's one skip policy
(``--skip-unreadable``): each image's size is checked from its header before it is decoded
(:func:`defectscope.data.io.read_image`), so an oversized file is refused, or skipped and listed,
in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from defectscope.data.batch import read_batch
from defectscope.data.layouts import Sample, plain_folder, training_images


def folder_images(folder: str | Path) -> list[Sample]:
    """Every image under ``folder`` (recursive, sorted), unlabelled."""
    return plain_folder(folder)


def good_images(folder: str | Path) -> list[Sample]:
    """Known-good images: an MVTec category's ``train/good``, else every image in ``folder``."""
    return training_images(folder)


@dataclass
class Batch:
    """Images read for a run: the decoded ``images``, the ``samples`` they came from (same order)
    and the files ``skipped`` as (path, reason)."""

    images: list[np.ndarray]
    samples: list[Sample]
    skipped: list[tuple[Path, str]]

    @property
    def paths(self) -> list[str]:
        return [str(s.path) for s in self.samples]


def read_samples(samples: Sequence[Sample], skip_unreadable: bool = False) -> Batch:
    """Read ``samples`` (order kept). The first unreadable or oversized file stops the run with
    its one-sentence error, unless ``skip_unreadable``: then it is left out and listed."""
    images, kept, skipped = read_batch([s.path for s in samples], skip_unreadable)
    by_path = {s.path: s for s in samples}
    return Batch(images, [by_path[p] for p in kept], skipped)
