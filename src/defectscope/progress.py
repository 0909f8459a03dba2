"""The one progress type every method and run reports through.

A progress callback is called as ``progress(stage, done, total)`` while long work runs: ``stage``
is a short lower-case name ("features", "scoring", "epoch", "train", "prototypes", "predict"),
``done`` of ``total`` units of that stage are finished (``done`` grows to ``total``). Runs over
several categories prefix the stage with the category name ("bottle: features"). Callbacks must
be cheap; they are called from the computing thread.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; see the module docstring."""


def prefixed(progress: Progress | None, prefix: str) -> Progress | None:
    """The same callback with ``"{prefix}: "`` before every stage name (None stays None)."""
    if progress is None:
        return None
    return lambda stage, done, total: progress(f"{prefix}: {stage}", done, total)
