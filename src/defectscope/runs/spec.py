"""Options resolved once against the command and the chosen method: the :class:`RunSpec`.

An option the user gave (see :meth:`RunOptions.given`) is either used by the run or refused here,
in one sentence, before any work: a setting the method does not have (``--batch-size`` for a
method without one), PRN's ``--kshot`` for another method, ``--false-alarm-rate`` for a verdict
that does not use it, a method setting next to a ``--model`` (which keeps its own). The defaults
of the options that were not given are applied here, in one place (:data:`DEFAULTS`), and
:meth:`RunSpec.run_settings` lists, for ``settings.json``, only the run options that were used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from defectscope.errors import ConfigError
from defectscope.methods.registry import get_method, method_names
from defectscope.methods.config import DEFAULT_FALSE_ALARM_RATE, DEFAULT_KSHOT, DEFAULT_REVIEW_BUDGET
from defectscope.options import RunOptions

if TYPE_CHECKING:
    from defectscope.methods.registry import MethodEntry

DEFAULTS: dict[str, Any] = {
    "method": "musc",
    "batch_size": 8,
    "kshot": DEFAULT_KSHOT,
    "false_alarm_rate": DEFAULT_FALSE_ALARM_RATE,
    "review_budget": DEFAULT_REVIEW_BUDGET,
    "device": "auto",
}
"""The value of each option that was not given (the others have no default: the method's applies)."""

FLAGS = {
    "method": "--method", "backbone": "--backbone", "weights": "--weights", "image_size": "--image-size",
    "batch_size": "--batch-size", "threads": "--threads", "skip_unreadable": "--skip-unreadable",
    "overwrite": "--overwrite", "kshot": "--kshot", "method_options": "--param",
    "false_alarm_rate": "--false-alarm-rate", "good": "--good", "review_budget": "--review-budget",
    "device": "--device", "smoothing": "--smoothing", "scheduler": "--scheduler", "epochs": "--epochs",
}  # fmt: skip

METHOD_SETTINGS = ("backbone", "weights", "image_size", "batch_size", "smoothing", "scheduler", "epochs", "method_options")
"""Options that are settings of the method (mapped by the registry's ``option_fields``)."""

_VERDICT = ("false_alarm_rate", "good", "review_budget")
COMMANDS: dict[str, frozenset[str]] = {
    "score": frozenset({"method", "threads", "skip_unreadable", "overwrite", "device", *METHOD_SETTINGS, *_VERDICT}),
    "evaluate": frozenset({"method", "threads", "skip_unreadable", "overwrite", "device", "kshot", *METHOD_SETTINGS, *_VERDICT}),
    "fit": frozenset({"method", "threads", "overwrite", "device", "false_alarm_rate", *METHOD_SETTINGS}),
    "predict": frozenset({"threads", "skip_unreadable", "overwrite", "device", *_VERDICT}),
    "watch": frozenset({"method", "threads", "device", "false_alarm_rate", "good", *METHOD_SETTINGS}),
    "serve": frozenset({"method", "threads", "device", "false_alarm_rate", "good", *METHOD_SETTINGS}),
}
"""The options each command takes at all (the Python API passes any RunOptions field)."""


@dataclass(frozen=True)
class RunSpec:
    """A run's options after :func:`resolve`: every given option is used, defaults applied.

    ``options``: the RunOptions with defaults filled in (its fields are also readable on the spec
    itself, ``spec.false_alarm_rate``); ``given``: the names of the options the user gave;
    ``entry``: the method (for a ``--model`` run, the model's); ``model``: a saved model runs."""

    command: str
    options: RunOptions
    given: frozenset[str]
    entry: MethodEntry
    model: bool = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.options, name)

    def with_good(self, good: Any) -> RunSpec:
        """The same run calibrated on ``good`` (evaluate over a root: each category's own)."""
        return dataclasses.replace(self, options=dataclasses.replace(self.options, good=good), given=self.given | {"good"})

    @property
    def uses_false_alarm_rate(self) -> bool:
        """Whether the verdict depends on the false-alarm rate: a conformal cut on good images,
        or a method whose own verdict takes it."""
        return self.options.good is not None or "false_alarm_rate" in self.entry.option_fields or self.command == "watch" and not self.model

    def run_settings(self) -> dict[str, Any]:
        """The run options that shaped the result, for ``settings.json`` (the method's own settings
        come from the detector): only those this run used."""
        from defectscope.device import device_name

        settings: dict[str, Any] = {}
        if self.uses_false_alarm_rate:
            settings["false_alarm_rate"] = self.options.false_alarm_rate
        if "review_budget" in COMMANDS[self.command]:
            settings["review_budget"] = self.options.review_budget
        settings["good"] = None if self.options.good is None else str(self.options.good)
        settings["device"] = device_name(self.options.device)
        if self.options.threads is not None:
            settings["threads"] = self.options.threads
        if self.options.skip_unreadable:
            settings["skip_unreadable"] = True
        return settings


def _refuse(option: str, why: str) -> ConfigError:
    return ConfigError(f"{FLAGS.get(option, option)} {why}")


def resolve(command: str, options: RunOptions | RunSpec | None = None, *, model_method: str | None = None) -> RunSpec:
    """Check ``options`` against ``command`` and the method (``options.method``, or for a run of
    a saved model ``model_method``, the method that made it) and apply the defaults. A spec
    (already resolved) is returned as it is."""
    if isinstance(options, RunSpec):
        return options
    options = RunOptions() if options is None else options
    given = options.given()
    takes = COMMANDS[command]
    for option in given:
        if option not in takes:
            raise _refuse(option, f"is not an option of `{command}`")
    model = model_method is not None
    if model and "method" in given:
        raise _refuse("method", f"chooses a zero-shot method; a --model is scored by the method that made it ({model_method})")
    entry = get_method(model_method if model else options.method or DEFAULTS["method"])
    _check_method(command, entry, model, options.good is not None)
    for option in given:
        if option in METHOD_SETTINGS:
            if model:
                raise _refuse(option, f"is a setting of the method; a --model keeps the settings {entry.label} was trained with")
            if option != "method_options" and option not in entry.option_fields:
                raise _refuse(option, f"is not a setting of {entry.label} (its settings: --param KEY=VALUE with the fields of {entry.config.rpartition(':')[2]})")
            if entry.option_fields.get(option) in options.method_options:
                raise _refuse(option, f"and --param {entry.option_fields[option]}=... set the same setting of {entry.label}; give one of them")
    if "kshot" in given and not (command == "evaluate" and entry.takes_anomalies):
        takers = ", ".join(name for name in method_names(trained=True) if get_method(name).takes_anomalies)
        raise _refuse("kshot", f"moves labelled defects into training for --method {takers}; {entry.label} takes none")
    filled = dataclasses.replace(options, **{k: v for k, v in DEFAULTS.items() if getattr(options, k) is None})
    spec = RunSpec(command, filled, frozenset(given), entry, model)
    if "false_alarm_rate" in given and not spec.uses_false_alarm_rate:
        raise _refuse("false_alarm_rate", f"sets a conformal cut that {entry.label}'s own verdict does not use; it applies to {entry.label} only with --good DIR")
    return spec


def _check_method(command: str, entry: MethodEntry, model: bool, good: bool = False) -> None:
    """Refuse a method the command cannot run (watch: a rolling bank needs a streaming method;
    with ``--good`` any zero-shot method scores each image in its reference mode)."""
    if command in ("score", "serve") and entry.needs_training and not model:
        raise ConfigError(
            f"method '{entry.name}' needs training: use `defectscope fit --method {entry.name}` "
            f"then `defectscope predict`, or `defectscope evaluate --method {entry.name}`"
        )
    if command == "fit" and not entry.needs_training:
        raise ConfigError(f"method '{entry.name}' is not trained; choose one of {', '.join(method_names(trained=True))}")
    if command == "watch" and not model and not good and not entry.streams:
        streaming = ", ".join(name for name in method_names() if get_method(name).streams)
        raise ConfigError(f"watch scores each new image against a rolling bank, which {entry.label} has not; use --method {streaming} or a --model")


def resolve_run(command: str, options: RunOptions | RunSpec | None, *, model: Any = None, good: Any = None) -> RunSpec:
    """:func:`resolve` for a command that runs either a saved ``model`` (its method read from the
    model folder) or a zero-shot method; ``good`` joins the options."""
    if isinstance(options, RunSpec):
        return options
    options = dataclasses.replace(options or RunOptions(), good=good) if good is not None else (options or RunOptions())
    if model is None:
        return resolve(command, options)
    from defectscope.methods.modelfile import read_model_config

    method = read_model_config(model).get("method")
    if method not in method_names(trained=True):
        raise ConfigError(f"model '{model}' was made by method '{method}', which `{command}` cannot load")
    return resolve(command, options, model_method=method)
