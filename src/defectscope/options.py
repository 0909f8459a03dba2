"""The options a user gives a run (score, evaluate, fit, predict, watch, serve), and the thread setting.

Every field defaults to None ("not given"): :func:`defectscope.runs.resolve` checks the given
ones against the command and the chosen method (refusing, in one sentence, one that would be
ignored) and applies the defaults in one place (:data:`defectscope.runs.spec.DEFAULTS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from defectscope.device import resolve_device
from defectscope.errors import ConfigError
from defectscope.memory import check_image_size
from defectscope.methods.verdict import check_false_alarm_rate, check_review_budget


@dataclass(frozen=True)
class RunOptions:
    """What the user asked for; None (or False, or empty) means "not given".

    ``method`` (default musc), ``backbone``, ``weights``, ``image_size``, ``batch_size``,
    ``smoothing`` (map blur sigma), ``scheduler`` (MuSc on Dask), ``epochs`` (trained methods) and
    ``method_options`` (``--param KEY=VALUE``; values may be the CLI's strings, see
    :class:`defectscope.methods.base.MethodConfig`) are settings of the method; how each maps onto
    a method's config is in :mod:`defectscope.methods.registry`, and a method without it refuses it.
    ``kshot``: for ``evaluate --method prn``, labelled defects per defect type moved from the test
    set to training (seeded protocol). ``false_alarm_rate``: the share of normal images a verdict
    may flag; ``good``: a folder of known-good images to calibrate the verdict on (and, for
    MuSc/CoDeGraph, to score against); ``review_budget``: the largest share of a batch the verdict
    may send to review. ``device``: where every method computes (``auto``, ``cpu``, ``cuda``,
    ``cuda:N``, ``mps``): a device this machine lacks is refused here, before any work."""

    method: str | None = None
    backbone: str | None = None
    weights: str | None = None
    image_size: int | None = None
    batch_size: int | None = None
    threads: int | None = None
    skip_unreadable: bool = False
    overwrite: bool = False
    kshot: int | None = None
    method_options: Mapping[str, Any] = field(default_factory=dict)
    false_alarm_rate: float | None = None
    good: str | Path | None = None
    review_budget: float | None = None
    device: str | None = None
    smoothing: float | None = None
    scheduler: str | None = None
    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.device is not None:
            resolve_device(self.device)
        check_image_size(self.image_size)
        if self.false_alarm_rate is not None:
            check_false_alarm_rate(self.false_alarm_rate)
        if self.review_budget is not None:
            check_review_budget(self.review_budget)

    def given(self) -> dict[str, Any]:
        """The options the user gave: {field: value} for every field not left at "not given"."""
        from dataclasses import fields

        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if not (value is None or value is False or (isinstance(value, Mapping) and not value))}


def apply_threads(threads: int | None) -> None:
    """Set the number of CPU threads torch uses (None keeps torch's default)."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
