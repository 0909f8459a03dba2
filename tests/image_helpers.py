"""Writing synthetic images into a folder, as a user's parts folder (shared by the tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image


def save_images(folder: Path, images: Sequence[np.ndarray], name: str = "part_{:02d}.png") -> list[Path]:
    """Save ``images`` into ``folder`` (created) as ``name.format(index)``; returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / name.format(index)
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths
