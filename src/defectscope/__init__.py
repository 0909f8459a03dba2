"""defectscope: industrial anomaly classification and segmentation.

Which parts in a batch of images are defective, and where: zero-shot (MuSc, CoDeGraph: no
training, the batch or a folder of good parts is the reference) or trained on good parts
(U-Flow, PRN). docs/PYTHON.md shows the main tasks as short examples.

Tasks (each the run behind the CLI command of the same name; options as keyword arguments):

    score(folder, out, **options)        score a folder of images, write scores, maps, report
    evaluate(root, out, **options)       measure a method on labelled data (MVTec AD layout)
    fit(train, out, method=...)          train U-Flow or PRN on good images, save the model
    predict(model, folder, out)          score a folder with a saved model
    load_model(model)                    a saved model as a fitted detector

Detectors (``Detector(config).predict(images) -> Result``, images as (H, W, 3) uint8 arrays):

    MuSc, MuScConfig                     zero-shot mutual scoring
    CoDeGraph, CoDeGraphConfig           MuSc that also finds defects recurring across a batch
    UFlow, UFlowConfig                   trained normalizing flow, a contrario masks
    PRN, PRNConfig                       trained on good images and a few labelled defects
    Result                               scores, anomaly maps and verdicts of a batch
    RunOptions                           the options shared by the task functions

The names are imported on first use, so ``import defectscope`` stays fast.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "score": "defectscope.api",
    "evaluate": "defectscope.api",
    "fit": "defectscope.api",
    "predict": "defectscope.api",
    "load_model": "defectscope.api",
    "MuSc": "defectscope.methods.musc",
    "MuScConfig": "defectscope.methods.musc",
    "CoDeGraph": "defectscope.methods.codegraph",
    "CoDeGraphConfig": "defectscope.methods.codegraph",
    "UFlow": "defectscope.methods.uflow",
    "UFlowConfig": "defectscope.methods.uflow",
    "PRN": "defectscope.methods.prn",
    "PRNConfig": "defectscope.methods.prn",
    "Result": "defectscope.methods.base",
    "RunOptions": "defectscope.options",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> object:
    """Import a public name on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'defectscope' has no attribute '{name}'")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
