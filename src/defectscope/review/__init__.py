"""Reviewing a finished run in the browser: confirm or correct each verdict, then export the
decisions as training data (``defectscope review OUT [--export DIR]``).

Modules: :mod:`folder` reads the run, :mod:`decisions` keeps ``review.csv``, :mod:`summary`
counts overturned verdicts and suggests a threshold, :mod:`export` writes the training folders,
:mod:`server` is the web application (Starlette + uvicorn, imported only when serving).
"""

from defectscope.review.decisions import DECISIONS, DecisionStore
from defectscope.review.export import export_review
from defectscope.review.folder import Part, ReviewRun, load_run
from defectscope.review.summary import review_summary, suggest_threshold

__all__ = ["DECISIONS", "DecisionStore", "Part", "ReviewRun", "export_review", "load_run", "review_summary", "suggest_threshold"]
