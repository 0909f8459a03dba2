"""Outputs a quality engineer can act on: heat-map overlays, score/metric tables, an HTML report.

Everything is written atomically (temp name, then rename), and a run's output folder is staged
so that an interrupted run leaves no half-written results (see :mod:`defectscope.report.atomic`).
"""

from defectscope.report.atomic import (
    OutputFolder,
    atomic_write_bytes,
    atomic_write_text,
    prepare_output_dir,
    staged_output,
)
from defectscope.report.html import ReportEntry, render_report, write_report
from defectscope.report.overlay import (
    batch_color_range,
    colorize,
    heatmap_overlay,
    make_thumbnail,
    resize_map,
    resize_mask,
    save_jpeg,
    save_png,
)
from defectscope.report.tables import format_metric, metrics_markdown, score_order, write_scores_csv

__all__ = [
    "OutputFolder",
    "ReportEntry",
    "atomic_write_bytes",
    "atomic_write_text",
    "batch_color_range",
    "colorize",
    "format_metric",
    "heatmap_overlay",
    "make_thumbnail",
    "metrics_markdown",
    "prepare_output_dir",
    "render_report",
    "resize_map",
    "resize_mask",
    "save_jpeg",
    "save_png",
    "score_order",
    "staged_output",
    "write_report",
    "write_scores_csv",
]
