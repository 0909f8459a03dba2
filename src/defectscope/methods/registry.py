"""Every method in one table: the CLI, :mod:`defectscope.pipeline` and :mod:`defectscope.training`
look methods up here instead of branching on their names.

An entry says where the detector and its config class live (imported on first use, so listing
methods stays cheap), whether it needs training, whether training also takes labelled defects,
how the shared :class:`~defectscope.options.RunOptions` fields map onto its config fields, and how
a trained model is exported. Adding a method: write its module (a :class:`Detector` subclass and a
:class:`MethodConfig` subclass) and add one :class:`MethodEntry` to :data:`METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from defectscope.errors import ConfigError
from defectscope.memory import check_image_size
from defectscope.methods.base import Detector, MethodConfig

if TYPE_CHECKING:  # options.py sits above the methods (it uses methods.verdict); annotations only
    from defectscope.options import RunOptions

_SHARED = {"backbone": "backbone", "weights": "weights", "image_size": "image_size", "device": "device"}
_ZERO_SHOT = {**_SHARED, "batch_size": "batch_size", "smoothing": "smoothing_sigma", "false_alarm_rate": "false_alarm_rate"}


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(import_module(module), name)


@dataclass(frozen=True)
class MethodEntry:
    """One method.

    Attributes:
        name: the ``--method`` name (also recorded in saved models and ``settings``).
        label: the method's name in prose ("U-Flow").
        detector: ``"module:Class"`` of the :class:`Detector` subclass.
        config: ``"module:Class"`` of its :class:`MethodConfig` subclass.
        needs_training: trained methods run through ``fit``/``predict``; zero-shot ones score a
            batch by itself.
        takes_anomalies: ``fit`` also takes labelled defects as (image, mask) pairs.
        option_fields: RunOptions field -> config field (a RunOptions value of None is not passed,
            so the config's default applies); an option the method has no field for is refused
            (:func:`defectscope.runs.resolve`).
        streams: the detector can score one image at a time against a rolling bank of the images
            judged normal so far (``defectscope watch`` without a model).
        exporter: ``"module:function"`` writing a trained model as ONNX, or None.
        summary: one line for help texts.
    """

    name: str
    label: str
    detector: str
    config: str
    needs_training: bool
    summary: str
    option_fields: Mapping[str, str] = field(default_factory=dict)
    takes_anomalies: bool = False
    streams: bool = False
    exporter: str | None = None

    @property
    def detector_class(self) -> type[Detector]:
        return _load(self.detector)

    @property
    def config_class(self) -> type[MethodConfig]:
        return _load(self.config)

    def make_config(self, options: RunOptions) -> MethodConfig:
        """The method's config from the shared options plus ``options.method_options`` (the
        options were checked against this method by :func:`defectscope.runs.resolve`)."""
        values: dict[str, Any] = {}
        for option, setting in self.option_fields.items():
            value = getattr(options, option)
            if value is not None:
                values[setting] = value
        values.update(options.method_options)
        config = self.config_class.from_options(values)
        check_image_size(getattr(config, "image_size", None))
        return config

    def build(self, options: RunOptions) -> Detector:
        """A new, unfitted detector configured from ``options``."""
        return self.detector_class(self.make_config(options))

    def load(self, folder: str | Path, device: str | None = None) -> Detector:
        """A trained detector saved by ``defectscope fit``, on ``device`` (default: as saved)."""
        if device is None:
            return self.detector_class.load(folder)  # type: ignore[attr-defined]
        return self.detector_class.load(folder, device=device)  # type: ignore[attr-defined]

    def export(self, detector: Detector, out: str | Path) -> Path:
        """Write a trained detector as ONNX to ``out``."""
        if self.exporter is None:
            raise ConfigError(f"method '{self.name}' has no export")
        detector.require_fitted()
        return _load(self.exporter)(detector, out)


METHODS: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry(
            name="musc",
            label="MuSc",
            detector="defectscope.methods.musc:MuSc",
            config="defectscope.methods.musc:MuScConfig",
            needs_training=False,
            summary="zero-shot, default",
            option_fields={**_ZERO_SHOT, "scheduler": "scheduler"},
            streams=True,
        ),
        MethodEntry(
            name="codegraph",
            label="CoDeGraph",
            detector="defectscope.methods.codegraph:CoDeGraph",
            config="defectscope.methods.codegraph:CoDeGraphConfig",
            needs_training=False,
            summary="zero-shot, recurring defects",
            option_fields=_ZERO_SHOT,  # no scheduler: CoDeGraph scores in this process
        ),
        MethodEntry(
            name="uflow",
            label="U-Flow",
            detector="defectscope.methods.uflow.detector:UFlow",
            config="defectscope.methods.uflow.config:UFlowConfig",
            needs_training=True,
            summary="trained on normal images",
            option_fields={**_SHARED, "batch_size": "batch_size", "smoothing": "smoothing_sigma", "epochs": "epochs"},
            exporter="defectscope.methods.uflow.export:export_onnx",
        ),
        MethodEntry(
            name="prn",
            label="PRN",
            detector="defectscope.methods.prn.detector:PRN",
            config="defectscope.methods.prn.config:PRNConfig",
            needs_training=True,
            summary="trained on normal images plus a few labelled defects",
            option_fields={**_SHARED, "false_alarm_rate": "false_alarm_rate", "epochs": "epochs", "smoothing": "smoothing_sigma"},
            takes_anomalies=True,
            exporter="defectscope.methods.prn.export:export_onnx",
        ),
    )
}


def method_names(*, trained: bool | None = None) -> list[str]:
    """Registered method names, optionally only the trained (True) or zero-shot (False) ones."""
    return [name for name, entry in METHODS.items() if trained is None or entry.needs_training == trained]


def get_method(name: str) -> MethodEntry:
    """The entry of ``name``; an unknown name is refused with the list of methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method '{name}'; choose one of {', '.join(METHODS)}") from None
