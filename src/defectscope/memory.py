"""Memory guard: estimate what a run needs before heavy work and refuse what cannot fit.

The estimate (:func:`estimate_bytes`) adds the decoded input images, the backbone's forward pass
over one batch, the features kept for all images, the N x N x L nearest-distance tables of mutual
scoring and the anomaly maps. It is deliberately simple and errs on the large side; the guard
(:func:`check_memory`) compares it with the memory available now (``MemAvailable`` of
/proc/meminfo, or psutil; ``DEFECTSCOPE_MEMORY_LIMIT`` in bytes overrides both, for tests and for
sharing a machine) and refuses in one sentence that names a setting that would fit. On a CUDA
device the same estimate (without the decoded images) is also compared with the device's free
memory (``torch.cuda.mem_get_info``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from defectscope.data.io import max_image_pixels
from defectscope.errors import ConfigError, MemoryLimitError

MAX_IMAGE_SIZE = 2048
"""Largest ``--image-size`` accepted (pixels per side); larger inputs are refused at once."""

ACTIVATION_FLOATS_PER_PIXEL = 48
"""Backbone activations alive at once during a forward pass, in float32 values per input pixel."""

INPUT_COPIES = 2
"""Decoded inputs held at once: the images themselves and the report's resized copies and overlays."""

MAP_COPIES = 3
"""Anomaly maps held at once (upsampled, smoothed, returned)."""

LIMIT_VARIABLE = "DEFECTSCOPE_MEMORY_LIMIT"


def check_image_size(image_size: int | None) -> None:
    """Refuse an ``--image-size`` that is not positive or beyond :data:`MAX_IMAGE_SIZE`."""
    if image_size is None:
        return
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ConfigError(f"--image-size must be a positive integer, got {image_size!r}")
    if image_size > MAX_IMAGE_SIZE:
        raise ConfigError(
            f"--image-size {image_size} is beyond the largest supported input of {MAX_IMAGE_SIZE} pixels per side; "
            "choose a smaller size (the backbones work best near their default, e.g. 224-512)"
        )


def estimate_bytes(
    *, count: int, image_size: int, batch_size: int, feature_floats: int, patches: int = 0, tables: int = 0
) -> int:
    """Peak bytes of a run on ``count`` images at ``image_size``, excluding the decoded inputs.

    ``feature_floats``: float32 feature values kept per image; ``patches``: patch cells per image
    of the pairwise tables; ``tables``: how many N x N x L tables are held at once.
    """
    pixels = image_size * image_size
    forward = min(batch_size, count) * pixels * ACTIVATION_FLOATS_PER_PIXEL * 4
    features = count * feature_floats * 4
    pairwise = tables * count * count * patches * 4
    maps = count * pixels * 4 * MAP_COPIES
    return forward + features + pairwise + maps


def available_memory() -> int | None:
    """Bytes available to this run now (None when it cannot be told)."""
    override = os.environ.get(LIMIT_VARIABLE)
    if override:
        try:
            return int(float(override))
        except ValueError:
            raise ConfigError(f"{LIMIT_VARIABLE}={override!r} is not a number of bytes") from None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def decoded_bytes(paths: Sequence[Path]) -> int:
    """Bytes of the decoded RGB images, from their headers only (unreadable files, and files above
    the reader's pixel cap, which are refused or skipped before decoding, count 0)."""
    cap = max_image_pixels()
    total = 0
    for path in paths:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
        if width * height <= cap:
            total += width * height * 3
    return total


def _size(size: float) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def check_memory(
    need: Callable[[int, int], int],
    count: int,
    image_size: int,
    *,
    inputs: int = 0,
    size_step: int = 32,
    available: int | None = None,
    where: str = "memory",
) -> None:
    """Refuse a run whose estimate ``inputs + need(count, image_size)`` exceeds the memory available.

    The sentence names the largest image size (a multiple of ``size_step``) and the largest image
    count that would fit. ``available``: bytes to compare with (default :func:`available_memory`).
    """
    limit = available_memory() if available is None else available
    needed = inputs + need(count, image_size)
    if limit is None or needed <= limit:
        return
    hints = []
    size = (image_size // size_step) * size_step
    while size >= size_step and inputs + need(count, size) > limit:
        size -= size_step
    if size_step <= size < image_size:
        hints.append(f"a smaller --image-size such as {size}")
    fewer = count
    while fewer > 2 and inputs * fewer / count + need(fewer, image_size) > limit:
        fewer = fewer * 3 // 4
    if 2 <= fewer < count and inputs * fewer / count + need(fewer, image_size) <= limit:
        hints.append(f"at most {fewer} images per run")
    advice = " or ".join(hints) if hints else "a machine with more memory"
    raise MemoryLimitError(
        f"this run of {count} images at {image_size} px needs about {_size(needed)} of {where} but {_size(limit)} "
        f"is available; use {advice}"
    )


def guard_run(detector: Any, paths: Sequence[Path], *, available: int | None = None) -> None:
    """Refuse a run of ``detector`` over the image files ``paths`` that would not fit in memory.

    ``detector`` follows :class:`defectscope.methods.base.Detector` (``memory_plan``,
    ``memory_needed``); the decoded input size is read from the image headers only."""
    size, step = detector.memory_plan()
    inputs = INPUT_COPIES * decoded_bytes(paths)
    check_memory(detector.memory_needed, len(paths), size, inputs=inputs, size_step=step, available=available)
    device = getattr(getattr(detector, "config", None), "device", None)
    if device is not None and available is None:
        from defectscope.device import device_free_memory, resolve_device

        resolved = resolve_device(device)
        free = device_free_memory(resolved)
        if free is not None:
            # Features, tables and maps live on the device; the decoded images stay in host memory.
            check_memory(detector.memory_needed, len(paths), size, size_step=step, available=free, where=f"{resolved} memory")
