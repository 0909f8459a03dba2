"""U-Flow: a U-shaped normalizing flow on multi-scale features with an a contrario threshold.

Modules: ``config`` (settings), ``detector`` (features, prediction, verdict), ``training`` (the
flow's training and held-out calibration), ``persistence`` (models and checkpoints on disk),
``flow``, ``nfa``, ``extent``, ``synthetic`` and ``export`` (ONNX).
"""

from defectscope.methods.uflow.config import METHOD, UFlowConfig
from defectscope.methods.uflow.detector import UFlow
from defectscope.methods.uflow.flow import UFlowNet, anomaly_map, flow_loss
from defectscope.segmentation_iou import iou_auto, iou_oracle, iou_oracle_threshold
from defectscope.methods.uflow.nfa import block_log_nfa_map, detect, region_log_nfa_map

__all__ = [
    "METHOD",
    "UFlow",
    "UFlowConfig",
    "UFlowNet",
    "anomaly_map",
    "block_log_nfa_map",
    "detect",
    "flow_loss",
    "iou_auto",
    "iou_oracle",
    "iou_oracle_threshold",
    "region_log_nfa_map",
]
