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


def write_large_png(path: Path, width: int, height: int, *, header_only: bool = False) -> Path:
    """Write an all-black 8-bit grayscale PNG of ``width`` x ``height`` without holding its pixels.

    The rows are compressed as a stream, so a 12000 x 12000 file takes well under a second and
    140 KB. ``header_only``: only the first row of pixel data is written (a file a header check must
    refuse before any decoding; the decoder would call it truncated)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    parts = [b"\x89PNG\r\n\x1a\n", chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))]
    if header_only:
        parts += [chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))), chunk(b"IEND", b"")]
    else:
        compressor = zlib.compressobj(1)
        rows = b"\x00" * (width + 1) * 64
        data = [compressor.compress(rows) for _ in range(height // 64)]
        data.append(compressor.compress(b"\x00" * (width + 1) * (height % 64)))
        data.append(compressor.flush())
        parts += [chunk(b"IDAT", b"".join(data)), chunk(b"IEND", b"")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path
