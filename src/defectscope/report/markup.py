"""Small pieces of the HTML report: escaping, embedded pictures, numbers and the verdict colours."""

from __future__ import annotations

import base64
import html
import json
import math
from typing import Any, Mapping

import numpy as np

from defectscope.report.overlay import encode_image

JPEG_QUALITY = 85

VERDICT_ORDER = {"anomalous": 0, "review": 1, "normal": 2}
VERDICT_COLOURS = {"anomalous": "#c62828", "review": "#f0a202", "normal": "#2e7d32", None: "#9e9e9e"}
"""Anomalous red, review amber, normal green (no verdict grey): badges, card edges and histogram bars."""


def escape(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too, so it may stand in an attribute)."""
    return html.escape(str(value), quote=True)


def data_uri(array: np.ndarray, fmt: str) -> str:
    """An image array embedded as a ``data:`` URI (``fmt`` "JPEG" or "PNG")."""
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    payload = base64.b64encode(encode_image(array, fmt, quality=JPEG_QUALITY)).decode("ascii")
    return f"data:{mime};base64,{payload}"


def img_tag(array: np.ndarray, fmt: str, alt: str) -> str:
    """An ``<img>`` tag embedding ``array`` at its own size."""
    height, width = np.asarray(array).shape[:2]
    return f'<img src="{data_uri(array, fmt)}" width="{width}" height="{height}" alt="{escape(alt)}">'


def _setting_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def key_value_table(items: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><th>{escape(key)}</th><td>{escape(_setting_value(value))}</td></tr>" for key, value in items.items())
    return f'<table class="kv">{rows}</table>'


def finite_number(value: Any) -> float | None:
    """``value`` as a finite float, else None."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def percent(value: Any) -> str:
    """0.05 -> '5 %', 0.025 -> '2.5 %'."""
    return f"{100 * float(value):.3g} %"
