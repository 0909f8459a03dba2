"""The run layer: every command (score, evaluate, fit, predict, watch, serve) goes through it.

- :mod:`~defectscope.runs.spec`: the user's options resolved once against the command and the
  method (an option that would be ignored is refused in one sentence; defaults applied once).
- :mod:`~defectscope.runs.inputs`: the one input source (plain folder, good set, dataset
  category) and the one skip policy.
- :mod:`~defectscope.runs.sequence`: the one sequence (memory guard, calibration on good images,
  read, predict, verdict, settings).

The command functions in :mod:`defectscope.pipeline` (score, evaluate), :mod:`defectscope.training`
(fit, predict, trained evaluate) and :mod:`defectscope.watch` call these; the CLI only parses.
"""

from defectscope.runs.inputs import Batch, folder_images, good_images, read_samples
from defectscope.runs.sequence import calibrate_on_good, run_batch
from defectscope.runs.spec import DEFAULTS, RunSpec, resolve

__all__ = ["DEFAULTS", "Batch", "RunSpec", "calibrate_on_good", "folder_images", "good_images", "read_samples", "resolve", "run_batch"]
