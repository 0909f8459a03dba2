"""Feature extractors behind one registry: see :func:`get_backbone` and :func:`available_backbones`."""

from defectscope.backbones.base import Backbone, Features
from defectscope.backbones.efficientnet import EfficientNetLiteBackbone
from defectscope.backbones.hf import HFBackbone
from defectscope.backbones.registry import DEFAULT_BACKBONE, available_backbones, get_backbone

__all__ = [
    "DEFAULT_BACKBONE",
    "Backbone",
    "EfficientNetLiteBackbone",
    "Features",
    "HFBackbone",
    "available_backbones",
    "get_backbone",
]
