"""``--good DIR``: calibrate a detector's verdict on known-good images (the code lives in the
run layer, :func:`defectscope.runs.sequence.calibrate_on_good`; this name stays for callers)."""

from defectscope.runs.sequence import calibrate_on_good

__all__ = ["calibrate_on_good"]
