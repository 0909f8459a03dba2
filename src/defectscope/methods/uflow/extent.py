"""Mask extent: the outline given to U-Flow's NFA detections, from the anomaly map.

The a contrario test (:mod:`.nfa`) decides WHICH regions of an image are anomalous; a mask is then
the connected regions of {anomaly map >= level} that touch a detection, where the level is
measured beforehand on held-out normal training images. A region that touches no detection is
never kept, so the extent rule cannot add a false detection: the share of normal images with a
mask is the NFA's alone.

Rule (:class:`ExtentRule`): ``quantile`` q of the pooled map values of the held-out normal images
(q = 1: their maximum), then each region optionally cut, in map units or in u = -log(1 - map)
units: at ``level + fraction * (peak - level)``, at a share of its height above the normal maps'
typical value (``base_quantile``), or at Otsu's threshold of its own values (``otsu``). U-Flow's
default is chosen on synthetic defects pasted on held-out normal training images, never on test
masks (``bench/bench_uflow_mask.py``, docs/BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu


@dataclass(frozen=True)
class ExtentRule:
    """Level = ``quantile`` of held-out normal map values; per region raised by ``fraction``
    (of the height above the level, in map units, or with ``log`` in units of -log(1 - map),
    the negative log of the map's likelihood, which does not saturate near 1)."""

    quantile: float = 1.0
    fraction: float = 0.0
    log: bool = False
    base_quantile: float | None = None
    """None: the height is measured from the level. Else from the base, this quantile of the
    held-out normal map values (their typical value): each region is cut at
    ``max(level, base + fraction * (peak - base))``, so a faint region, whose peak is barely
    above the level, keeps its whole level-set component and a strong one is cut at a share of
    its peak."""
    otsu: bool = False
    """Each region is cut at Otsu's threshold of its own values (the split of its value
    histogram into two classes of least within-class variance), in map or, with ``log``, in u
    units; ``fraction`` must then be 0 and ``base_quantile`` None."""

    def __post_init__(self) -> None:
        if not 0.0 < self.quantile <= 1.0:
            raise ValueError(f"extent quantile must be in (0, 1], got {self.quantile}")
        if not 0.0 <= self.fraction < 1.0:
            raise ValueError(f"extent fraction must be in [0, 1), got {self.fraction}")
        if self.base_quantile is not None and not 0.0 < self.base_quantile < self.quantile:
            raise ValueError(f"extent base quantile must be in (0, quantile), got {self.base_quantile}")
        if self.otsu and (self.fraction or self.base_quantile is not None):
            raise ValueError("an Otsu extent rule takes no fraction and no base quantile")


def calibration_level(normal_maps: np.ndarray, quantile: float) -> float:
    """``quantile`` of the pooled values of the held-out normal maps (1: their maximum)."""
    values = np.asarray(normal_maps, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("the extent level needs at least one normal map")
    return float(values.max() if quantile >= 1.0 else np.quantile(values, quantile))


def level_components_touching(detected: np.ndarray, anomaly_map: np.ndarray, level: float) -> np.ndarray:
    """The connected components (4-connectivity) of {anomaly_map >= level} that share at least
    one pixel with ``detected``."""
    detected = np.asarray(detected, dtype=bool)
    above = np.asarray(anomaly_map) >= level
    if detected.shape != above.shape:
        raise ValueError(f"detection {detected.shape} and map {above.shape} differ in shape")
    return _touching(above, detected)


def _touching(candidates: np.ndarray, detected: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(candidates)
    touched = np.unique(labels[detected & candidates])
    return np.isin(labels, touched[touched > 0])


def _log_units(values: np.ndarray | float) -> np.ndarray:
    """u = -log(1 - map), the map's negative log likelihood."""
    return -np.log(np.clip(1.0 - np.asarray(values, dtype=np.float64), 1e-12, None))


def extent_mask(rule: ExtentRule, detected: np.ndarray, anomaly_map: np.ndarray, level: float,
                base: float | None = None) -> np.ndarray:
    """Mask of one image: the regions of {map >= level} touching ``detected``, each cut at Otsu's
    threshold of its values (``rule.otsu``) or at ``max(level, origin + rule.fraction * (its peak -
    origin))`` with origin = ``level``, or ``base`` (the normal maps' ``rule.base_quantile``) for
    a rule with a base quantile; every piece of a kept region stays."""
    mask = level_components_touching(detected, anomaly_map, level)
    if (rule.fraction == 0.0 and not rule.otsu) or not mask.any():
        return mask
    if rule.base_quantile is not None and base is None:
        raise ValueError("this extent rule measures heights from a base level; pass base")
    origin = level if rule.base_quantile is None else float(base)
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if rule.log:
        amap, level, origin = _log_units(amap), float(_log_units(level)), float(_log_units(origin))
    labels, count = ndimage.label(mask)
    if rule.otsu:
        cuts = np.array([_otsu(amap[labels == index]) for index in range(1, count + 1)])
    else:
        peaks = np.asarray(ndimage.maximum(amap, labels, index=np.arange(1, count + 1)))
        cuts = np.maximum(level, origin + rule.fraction * (peaks - origin))
    return amap >= np.concatenate([[np.inf], cuts])[labels]


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of ``values`` (their minimum when they are all equal)."""
    return float(values.min()) if values.max() <= values.min() else float(threshold_otsu(values))
