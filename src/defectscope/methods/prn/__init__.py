"""PRN: prototypical residual network for supervised few-shot defect segmentation.

Modules: ``config`` (settings), ``detector`` (prediction and verdict), ``training`` (fold plan and
head training), ``persistence`` (models and checkpoints on disk), ``features`` (the backbone's
scales), ``model`` (the network), ``generate`` (anomaly generation), ``protocol`` (k-shot split),
``export`` (ONNX).
"""

from defectscope.methods.prn.config import PRNConfig
from defectscope.methods.prn.detector import PRN
from defectscope.methods.prn.features import multiscale_features
from defectscope.methods.prn.export import export_onnx
from defectscope.methods.prn.generate import (
    AnomalyGenerator,
    estimate_foreground,
    paste_real_defect,
    perlin_noise,
    pseudo_defect,
)
from defectscope.methods.prn.protocol import kshot_split

__all__ = [
    "PRN",
    "PRNConfig",
    "AnomalyGenerator",
    "estimate_foreground",
    "export_onnx",
    "kshot_split",
    "multiscale_features",
    "paste_real_defect",
    "perlin_noise",
    "pseudo_defect",
]
