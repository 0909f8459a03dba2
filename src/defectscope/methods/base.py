"""The detector contract every method follows, its configuration base and the Result it returns.

Modelled on scikit-learn / PyOD: a detector takes its whole configuration (a
:class:`MethodConfig`) in the constructor, learns in :meth:`Detector.fit` (which returns the
detector; zero-shot methods learn nothing and are fitted from the start) and describes a batch in
:meth:`Detector.predict`, which returns a :class:`Result`. A trained method asked to predict, save
or export before ``fit`` (or ``load``) raises :class:`~defectscope.errors.NotFittedError`.
"""

from __future__ import annotations

import types
import typing
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal, Mapping, Sequence, Union

import numpy as np

from defectscope import __version__
from defectscope.errors import ConfigError, NotFittedError
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


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_NONE = ("none", "null")


class _BadValue(ValueError):
    """A value that does not fit a declared type (turned into a ConfigError naming the key)."""


_WORDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "true/false values"), str: ("text", "names")}


def _describe(hint: Any, plural: bool = False) -> str:
    """Human words for a declared type, e.g. 'a comma-separated list of integers'."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        parts = [_describe(a, plural) for a in args if a is not type(None)]
        return " or ".join(parts + (["none"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a comma-separated list of {_describe(args[0], plural=True)}"
        return f"{len(args)} comma-separated values ({', '.join(_describe(a) for a in args)})"
    return _WORDS[hint][plural] if hint in _WORDS else str(hint)


def _split(value: Any) -> list[Any]:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` (the CLI's text or a Python value) as the declared type ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    text = value.strip() if isinstance(value, str) else None
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None or (text is not None and text.lower() in _NONE):
            if type(None) in args:
                return None
            raise _BadValue
        # Text last: "8" for ``str | int`` is the int 8, "stride8" stays text.
        for option in sorted((a for a in args if a is not type(None)), key=lambda a: a is str):
            try:
                return _coerce(value, option)
            except _BadValue:
                continue
        raise _BadValue
    if origin is Literal:
        for choice in args:
            if value == choice or (text is not None and text == str(choice)):
                return choice
        raise _BadValue
    if origin is tuple:
        items = _split(value)
        if not items:
            raise _BadValue
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(item, args[0]) for item in items)
        if len(items) != len(args):
            raise _BadValue
        return tuple(_coerce(item, kind) for item, kind in zip(items, args))
    if hint is bool:
        if isinstance(value, bool):
            return value
        if text is not None and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        raise _BadValue
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if text is not None:
            try:
                return int(text)
            except ValueError:
                raise _BadValue from None
        raise _BadValue
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if text is not None:
            try:
                return float(text)
            except ValueError:
                raise _BadValue from None
        raise _BadValue
    if hint is str:
        if text is None:
            raise _BadValue
        return text
    return value


def to_text(value: Any) -> str:
    """The CLI's string form of a config value (inverse of the conversion in ``from_options``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(to_text(item) for item in value)
    return str(value)


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's settings dataclass (frozen, one field per setting).

    :meth:`from_options` builds a config from ``--param`` strings (or Python values), converting
    each to the field's declared type: ``int``, ``float``, ``bool`` (true/false, yes/no, on/off,
    1/0), ``str``, ``X | None`` ("none"), ``tuple[X, ...]`` ("1,3,5" or a single "3"), fixed
    tuples, ``Literal`` choices. Unknown keys and values that do not fit are refused with one
    sentence naming the key, the value and the expected type.
    """

    @classmethod
    def field_types(cls) -> dict[str, Any]:
        """Setting name -> declared type (resolved annotations)."""
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in fields(cls)}

    @classmethod
    def from_options(cls, values: Mapping[str, Any]) -> "MethodConfig":
        """A config from ``{setting: value}``; values may be the CLI's strings."""
        types_ = cls.field_types()
        unknown = sorted(set(values) - set(types_))
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(types_))}"
            )
        converted = {}
        for key, value in values.items():
            try:
                converted[key] = _coerce(value, types_[key])
            except _BadValue:
                raise ConfigError(
                    f"{cls.__name__} setting {key}={to_text(value)!r} is invalid: expected {_describe(types_[key])}"
                ) from None
        return cls(**converted)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict of the settings (tuples as lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


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
        self.calibration = conformal_threshold(scores, false_alarm_rate)
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
