"""The detector contract every method follows and the Result it returns.

The configuration base, :class:`~defectscope.methods.config.MethodConfig` (settings declared with
their constraints, checked when a config is built), lives in :mod:`defectscope.methods.config`
and is importable from here too.

Modelled on scikit-learn / PyOD: a detector takes its whole configuration (a
:class:`MethodConfig`) in the constructor, learns in :meth:`Detector.fit` (which returns the
detector; zero-shot methods learn nothing and are fitted from the start) and describes a batch in
:meth:`Detector.predict`, which returns a :class:`Result`. A trained method asked to predict, save
or export before ``fit`` (or ``load``) raises :class:`~defectscope.errors.NotFittedError`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

import numpy as np

from defectscope import __version__
from defectscope.errors import ConfigError, NotFittedError
from defectscope.methods.config import MethodConfig, to_text  # noqa: F401  (the config base lives in config.py)
from defectscope.methods.verdict import Threshold, conformal_threshold, require_good_images, verdict_words
from defectscope.progress import Progress


@dataclass
class Result:
    """What a detector says about a batch of N images.

    Attributes:
        paths: the N image paths (as given), in input order; ``image_0``, ``image_1``, ... when
            the caller gave none.
        image_scores: (N,) float64, higher = more anomalous.
        anomaly_maps: (N, H, W) float32 at the model's input resolution (the size images were
            resized to; H != W when the method keeps the batch's aspect ratio); use
            :func:`defectscope.report.resize_map` for other sizes.
        masks: optional (N, H, W) bool, where the method produces a binary decision itself.
        settings: everything that produced the result (see :meth:`Detector.settings`).
        extras: method-specific diagnostics (e.g. CoDeGraph communities), JSON-serialisable.
        is_anomalous: (N,) bool verdict per image, or None when the method gave none.
        threshold: the cut that produced the verdict, in the units of :meth:`decision_scores`
            (for U-Flow's a contrario test, the NFA level epsilon: no per-image statistic).
        threshold_rule: short human description of how the threshold was set.
        verdict_scores: (N,) float64, the per-image statistic ``threshold`` applies to when it is
            not ``image_scores`` (MuSc/CoDeGraph without ``--good``: the map maxima before RsCIN);
            NaN where the verdict is no cut on a per-image statistic (U-Flow's a contrario test).
        needs_review: (N,) bool, True where the verdict is ``review`` (the statistic lies between
            ``review_threshold`` and ``threshold``: the data cannot tell); never True where
            ``is_anomalous`` is. None when the method gave no verdict.
        review_threshold: the lower edge of the review band, or None when there is none.
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
    verdict_scores: np.ndarray | None = None
    needs_review: np.ndarray | None = None
    review_threshold: float | None = None

    def verdicts(self) -> list[str] | None:
        """Per image ``"anomalous"``, ``"review"`` or ``"normal"``; None without a verdict."""
        return verdict_words(self.is_anomalous, self.needs_review)

    def decision_scores(self) -> np.ndarray:
        """(N,) the statistic the verdict compares with ``threshold``: ``verdict_scores`` when
        set, else ``image_scores``; an image is anomalous when it is strictly above."""
        return self.image_scores if self.verdict_scores is None else self.verdict_scores


def with_batch_fact(extras: dict[str, Any], key: str, facts: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Result's ``extras`` with ``facts`` (a decision the method took from the batch
    itself: ``part_crop``, ``canonical_pose``) under ``key`` and in ``batch_facts`` (written to
    settings.json), the other batch facts kept."""
    extras = dict(extras)
    extras[key] = facts
    extras["batch_facts"] = {**extras.get("batch_facts", {}), key: facts}
    return extras


def default_paths(paths: Sequence[str] | None, count: int, method: str) -> list[str]:
    """The caller's paths as strings, or ``image_0``, ``image_1``, ...; refuses a count mismatch."""
    if paths is None:
        return [f"image_{i}" for i in range(count)]
    if len(paths) != count:
        raise ConfigError(f"{method} got {len(paths)} paths for {count} images")
    return [str(p) for p in paths]


class Detector(ABC):
    """The contract every method implements (see the module docstring).

    Subclasses set ``method`` (the registry name) and keep their settings in ``self.config``.
    Zero-shot methods inherit the trivial :meth:`fit` and :attr:`is_fitted`; trained methods
    override both and call :meth:`require_fitted` before predicting, saving or exporting.
    """

    method: ClassVar[str]
    probability_scores: ClassVar[bool] = False
    """True where image scores are probabilities in [0, 1]: the known-good guard band is then fitted
    on their log-odds so its cut stays reachable (:func:`defectscope.methods.verdict.guard_cut`)."""
    config: MethodConfig

    def __init__(self, config: MethodConfig) -> None:
        self.config = config
        self.calibration: Threshold | None = None

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`predict` can run (always true for zero-shot methods)."""
        return True

    def require_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless the detector is fitted."""
        if not self.is_fitted:
            raise NotFittedError(
                f"this {self.method} model is not trained: call fit() first, or load a model saved by `defectscope fit`"
            )

    def fit(self, images: Sequence[np.ndarray], **kwargs: Any) -> "Detector":
        """Learn from normal ``images``; zero-shot methods have nothing to learn."""
        return self

    @abstractmethod
    def predict(
        self, images: Sequence[np.ndarray], paths: Sequence[str] | None = None, progress: Progress | None = None
    ) -> Result:
        """Scores, anomaly maps and verdicts of ``images`` (N RGB uint8 arrays)."""

    def calibrate(
        self, images: Sequence[np.ndarray], false_alarm_rate: float, progress: Progress | None = None
    ) -> "Detector":
        """Calibrate the verdict on known-good ``images`` (``--good``): the split-conformal cut of
        their image scores at ``false_alarm_rate`` becomes ``self.calibration``, which later
        predictions use instead of the method's own rule. Too few images are refused first."""
        require_good_images(len(images), false_alarm_rate)
        self.calibration = None
        scores = self.predict(images, progress=progress).image_scores
        self.calibration = conformal_threshold(scores, false_alarm_rate, probability=self.probability_scores)
        return self

    def backbone_facts(self) -> dict[str, Any]:
        """What the backbone actually used (input size, layers); overridden where known."""
        return {}

    def settings(self) -> dict[str, Any]:
        """One layout for every method: method, version, every config field, backbone facts."""
        return {"method": self.method, "version": __version__, **self.config.to_json(), **self.backbone_facts()}

    def memory_plan(self) -> tuple[int, int]:
        """(the input size a run uses, the step that valid input sizes are multiples of)."""
        return int(getattr(self.config, "image_size")), 32

    @abstractmethod
    def memory_needed(self, count: int, image_size: int | None = None) -> int:
        """Estimated peak bytes to predict ``count`` images at ``image_size`` (None: configured)."""
