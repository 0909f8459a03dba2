"""Options shared by every run (score, evaluate, fit, predict) and the thread setting.

Both :mod:`defectscope.pipeline` and :mod:`defectscope.training` take a :class:`RunOptions`;
they live here so that neither module imports the other for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from defectscope.device import resolve_device
from defectscope.errors import ConfigError
from defectscope.memory import check_image_size
from defectscope.methods.verdict import DEFAULT_FALSE_ALARM_RATE, DEFAULT_REVIEW_BUDGET, check_false_alarm_rate, check_review_budget


@dataclass(frozen=True)
class RunOptions:
    """Options shared by ``score``, ``evaluate`` and ``fit``; ``method_options`` go to the method
    config (values may be the CLI's strings, see :class:`defectscope.methods.base.MethodConfig`).

    How ``backbone``, ``weights``, ``image_size`` and ``batch_size`` map onto each method's
    settings is in :mod:`defectscope.methods.registry`. ``kshot``: for ``evaluate --method prn``,
    labelled defects per defect type moved from the test set to training (seeded protocol,
    :func:`defectscope.methods.prn.kshot_split`). ``false_alarm_rate``: the share of normal
    images a verdict may flag; ``good``: a folder of known-good images to calibrate the verdict
    on (and, for MuSc/CoDeGraph, to score against); ``review_budget``: the largest share of a
    batch the verdict may send to review (see :func:`defectscope.methods.verdict.cap_review`).
    ``device``: where every method computes (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``;
    :mod:`defectscope.device`): a device this machine lacks is refused here, before any work."""

    method: str = "musc"
    backbone: str | None = None
    weights: str | None = None
    image_size: int | None = None
    batch_size: int = 8
    threads: int | None = None
    skip_unreadable: bool = False
    overwrite: bool = False
    kshot: int = 10
    method_options: Mapping[str, Any] = field(default_factory=dict)
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE
    good: str | Path | None = None
    review_budget: float = DEFAULT_REVIEW_BUDGET
    device: str = "auto"

    def __post_init__(self) -> None:
        resolve_device(self.device)
        check_image_size(self.image_size)
        check_false_alarm_rate(self.false_alarm_rate)
        check_review_budget(self.review_budget)


def apply_threads(threads: int | None) -> None:
    """Set the number of CPU threads torch uses (None keeps torch's default)."""
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
