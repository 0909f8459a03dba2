"""The Detector protocol and the Result every method returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np


@dataclass
class Result:
    """What a detector says about a batch of N images.

    Attributes:
        paths: the N image paths (as given), in input order.
        image_scores: (N,) float64, higher = more anomalous.
        anomaly_maps: (N, S, S) float32 at the model's input resolution S (the square size
            images were resized to); use :func:`defectscope.report.resize_map` for other sizes.
        masks: optional (N, S, S) bool, where the method produces a binary decision itself.
        settings: everything that produced the result (method, backbone, version, parameters).
        extras: method-specific diagnostics (e.g. CoDeGraph communities), JSON-serialisable.
        is_anomalous: (N,) bool verdict per image, or None when the method gave none.
        threshold: the cut that produced the verdict, in the units of the statistic named by
            ``threshold_rule`` (``image_scores``, or for MuSc/CoDeGraph without ``--good`` the map
            maximum ``extras["raw_image_scores"]``; for U-Flow the NFA level epsilon).
        threshold_rule: short human description of how the threshold was set.
    """

    paths: list[str]
    image_scores: np.ndarray
    anomaly_maps: np.ndarray
    masks: np.ndarray | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)
    is_anomalous: np.ndarray | None = None
    threshold: float | None = None
    threshold_rule: str | None = None


class Detector(Protocol):
    """A method. Zero-shot methods need no ``fit``; trained methods learn in ``fit``."""

    def fit(self, images: Sequence[np.ndarray]) -> "Detector":
        ...

    def predict(self, images: Sequence[np.ndarray], paths: Sequence[str] | None = None) -> Result:
        ...


def build_config(config_class: type, values: dict[str, Any]):
    """Instantiate a method's config dataclass, refusing unknown keys with one clear sentence."""
    from dataclasses import fields

    from defectscope.errors import ConfigError

    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"unknown {config_class.__name__} setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(known))}"
        )
    return config_class(**values)
