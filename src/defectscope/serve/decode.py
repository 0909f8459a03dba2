"""Request bodies -> images: the raw body or one multipart field, decoded exactly as
:func:`defectscope.data.io.read_image` decodes a file (same conversions, so a served image gets
the same array, hence the same score, as the file given to ``score`` or ``predict``), with the
service's caps checked before any pixel is decoded.

Every refusal is a :class:`BadRequest` carrying an HTTP status and one sentence.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from defectscope.data.io import _PROBLEM_ERRORS, _SIGNATURES, DecodeProblem, _to_rgb_array, decode_opened
from defectscope.errors import ImageReadError

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/jpg", "image/bmp", "image/x-ms-bmp", "image/tiff", "application/octet-stream"})
"""Content types taken as a raw image body (the decoder looks at the bytes, not at the type)."""
MULTIPART = "multipart/form-data"
IMAGE_FIELDS = ("image", "file")


class BadRequest(Exception):
    """A request the service refuses: ``status`` (4xx) and one sentence."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class Upload:
    """The image bytes of a request and the name the client gave it (may be empty)."""

    data: bytes
    name: str


def media_type(content_type: str | None) -> str:
    """The lower-case media type of a Content-Type header, without parameters ('' when absent)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content_type(content_type: str | None) -> None:
    """Refuse (415) a body type that is neither an image, raw bytes nor multipart."""
    kind = media_type(content_type)
    if kind and kind not in IMAGE_TYPES and kind != MULTIPART:
        raise BadRequest(
            415,
            f"content type '{kind}' is not accepted; send the image file as the body with its image type "
            f"(image/png, image/jpeg, image/bmp, image/tiff or application/octet-stream) or as multipart/form-data",
        )


def _boundary(content_type: str) -> bytes:
    match = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, flags=re.IGNORECASE)
    if match is None:
        raise BadRequest(400, "the multipart body has no boundary in its Content-Type header")
    return (match.group(1) or match.group(2)).encode("latin-1")


def _disposition(headers: bytes) -> tuple[str, str]:
    """(field name, file name) from a part's Content-Disposition header."""
    text = headers.decode("utf-8", "replace")
    line = next((h for h in text.split("\r\n") if h.lower().startswith("content-disposition:")), "")
    name = re.search(r'(?<![a-z*])name="([^"]*)"', line, flags=re.IGNORECASE)
    filename = re.search(r'filename="([^"]*)"', line, flags=re.IGNORECASE)
    return (name.group(1) if name else ""), (filename.group(1) if filename else "")


def multipart_image(body: bytes, content_type: str) -> Upload:
    """The image part of a multipart/form-data body: the field named ``image`` or ``file``, else
    the first part carrying a file name, else the only part."""
    delimiter = b"\r\n--" + _boundary(content_type)
    pieces = (b"\r\n" + body).split(delimiter)
    parts: list[tuple[str, str, bytes]] = []
    for piece in pieces[1:]:
        if piece.startswith(b"--"):
            break
        head, sep, data = piece.partition(b"\r\n\r\n")
        if not sep:
            raise BadRequest(400, "the multipart body is malformed (a part has no blank line after its headers)")
        name, filename = _disposition(head)
        parts.append((name, filename, data))
    if not parts:
        raise BadRequest(400, "the multipart body holds no part; send the image in a field named 'image'")
    for wanted in IMAGE_FIELDS:
        for name, filename, data in parts:
            if name == wanted:
                return Upload(data, filename)
    with_file = [(filename, data) for _, filename, data in parts if filename]
    if with_file:
        return Upload(with_file[0][1], with_file[0][0])
    if len(parts) == 1:
        return Upload(parts[0][2], "")
    raise BadRequest(400, f"the multipart body has {len(parts)} fields and none is named 'image'; send the image in a field named 'image'")


def decode_image(data: bytes, name: str = "", *, max_pixels: int) -> np.ndarray:
    """Decode ``data`` as :func:`~defectscope.data.io.read_image` decodes a file: (H, W, 3) uint8
    RGB. Refused (400) when empty, not an image, damaged or truncated; (413) when its header
    states more than ``max_pixels`` pixels, before the pixels are decoded."""
    shown = f"'{name}'" if name else "the request body"
    if not data:
        raise BadRequest(400, "the request body is empty (0 bytes); send the image file as the body or in a multipart field named 'image'")
    if not any(data.startswith(signature) for signature in _SIGNATURES):
        raise BadRequest(400, f"{shown} is not an image (no PNG, JPEG, BMP or TIFF header found)")
    try:
        image, stated = decode_opened(io.BytesIO(data), max_pixels)
    except DecodeProblem as refused:
        if refused.kind == "too large":
            width, height = refused.size
            raise BadRequest(413, f"{shown} is {width} x {height} pixels, over the cap of {max_pixels} pixels; send a smaller image") from None
        if refused.kind == "truncated":
            raise BadRequest(400, f"{shown} is truncated (its PNG end chunk is missing)") from None
        raise BadRequest(400, f"{shown} has no pixels") from None
    except Image.DecompressionBombError as exc:
        raise BadRequest(413, f"{shown} is too large to decode safely ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise BadRequest(400, f"{shown} is damaged or truncated (its header cannot be parsed)") from exc
    except _PROBLEM_ERRORS as exc:
        detail = "truncated" if "truncated" in str(exc).lower() else f"damaged ({str(exc).strip().rstrip('.') or type(exc).__name__})"
        raise BadRequest(400, f"{shown} is {detail}") from exc
    try:
        return _to_rgb_array(image, name or "upload", stated)
    except ImageReadError as exc:
        raise BadRequest(400, str(exc)) from exc
