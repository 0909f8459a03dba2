"""What every `defectscope` command shares: the option declarations, the progress display, the
one-sentence error handling, the RunOptions built from what was typed, and the printers.

An option that was not typed reaches the run layer as None ("not given"): the defaults live in
:data:`defectscope.runs.spec.DEFAULTS`, and an option the method would ignore is refused there.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from defectscope.errors import DefectscopeError
from defectscope.methods.config import DEFAULT_FALSE_ALARM_RATE, DEFAULT_REVIEW_BUDGET

console = Console(stderr=True)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Industrial visual inspection: which parts are defective, and where.",
)
"""The `defectscope` command; :mod:`defectscope.cli` and :mod:`defectscope.cli_live` add its commands."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that a stopped run cleans up after
    itself (staging folders removed, a watch's report written) instead of dying mid-write."""


def terminate(signum, frame) -> None:
    raise Terminated()


@app.callback()
def _setup() -> None:
    """Industrial visual inspection: which parts are defective, and where."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, terminate)


MethodOption = typer.Option(None, "--method", "-m", help="musc (zero-shot, default), codegraph (zero-shot, recurring defects); evaluate also takes uflow and prn (trained).")
BackboneOption = typer.Option(None, "--backbone", "-b", help="Feature extractor (see `defectscope backbones`); default: the embedded EfficientNet-Lite.")
WeightsOption = typer.Option(None, "--weights", help="Local folder with backbone weights (DINOv2/CLIP), for offline use.")
ImageSizeOption = typer.Option(None, "--image-size", help="Square input size in pixels (default: the backbone's).")
BatchSizeOption = typer.Option(None, "--batch-size", help="Images per backbone forward pass (default 8).")
ThreadsOption = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's choice).")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace an existing output folder from an earlier defectscope run.")
SkipOption = typer.Option(False, "--skip-unreadable", help="Skip unreadable images (listed in every output) instead of stopping.")
ParamOption = typer.Option(None, "--param", "-p", help="Any method setting as KEY=VALUE (repeatable), e.g. upper=0.2, degrees=1,3, burnout_threshold=25; see the method's config class.")
SchedulerOption = typer.Option(None, "--scheduler", help="Run MuSc's work on Dask: 'dask' (a local cluster) or a scheduler address tcp://HOST:PORT.")
SmoothingOption = typer.Option(None, "--smoothing", help="Gaussian blur of the anomaly maps, sigma in input pixels (default 4; PRN: map pixels, default 0; 0 = off).")
EpochsOption = typer.Option(None, "--epochs", help="U-Flow/PRN: training epochs (default: the method's).")
FalseAlarmOption = typer.Option(None, "--false-alarm-rate", help=f"Share of normal images the verdict may flag as anomalous (default {DEFAULT_FALSE_ALARM_RATE:g}).")
ReviewBudgetOption = typer.Option(None, "--review-budget", help=f"Largest share of the batch the verdict may send to review (the scores cannot tell); 0 = never review (default {DEFAULT_REVIEW_BUDGET:g}).")
DeviceOption = typer.Option(None, "--device", help="Where to compute: auto (default: a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps; an absent device is refused before any work.")
GoodOption = typer.Option(None, "--good", help="Folder of known-good images (an MVTec category: its train/good): the verdict is calibrated on them (MuSc/CoDeGraph also score against them). evaluate over a root of categories: pass the root itself to use each category's own train/good.")


@contextlib.contextmanager
def progress_display() -> Iterator:
    """A rich progress display; yields a ``progress(stage, done, total)`` callback."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {error}", highlight=False)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def user_errors(interrupted: str = "interrupted: no output was written") -> Iterator[None]:
    """Turn library errors into one printed sentence and exit code 2 (no traceback); Ctrl-C
    and SIGTERM (the staged output already removed) print ``interrupted`` and exit 130 / 143."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # Pillow warns of a possible decompression bomb above 89 M pixels; the image reader refuses
        # anything above its own lower cap in one sentence, so the warning only repeats it.
        warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
        warnings.showwarning = lambda message, *args, **kwargs: console.print(f"[yellow]warning:[/] {message}", highlight=False)
        try:
            yield
        except DefectscopeError as error:
            fail(error)
        except KeyboardInterrupt as stop:
            console.print(interrupted, highlight=False)
            raise typer.Exit(code=143 if isinstance(stop, Terminated) else 130)


def parse_params(params: Optional[list[str]]) -> dict[str, str]:
    """KEY=VALUE pairs as raw text; the method's config converts each to its declared type."""
    parsed = {}
    for item in params or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got '{item}'", param_hint="--param")
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


def run_options(*, param: Optional[list[str]] = None, weights: Optional[Path] = None, **typed: Any):
    """The RunOptions of what was typed (None: not given); checked against the method later."""
    from defectscope.options import RunOptions

    with user_errors():
        return RunOptions(method_options=parse_params(param), weights=None if weights is None else str(weights), **typed)


def print_metrics(metrics: dict) -> None:
    from rich import box

    from defectscope.report.tables import TERMINAL_METRICS, format_metric, metric_columns, short_name

    columns = [column for column in metric_columns(metrics) if column in TERMINAL_METRICS]
    table = Table(title="metrics (%)", box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False)
    table.add_column("category", min_width=min(16, max(len(str(name)) for name in metrics)), overflow="fold")
    for column in columns:
        header = short_name(column)
        longest = max(len(word) for word in header.split())
        table.add_column(header, justify="right", min_width=longest, max_width=max(longest, 5))
    for name, values in metrics.items():
        table.add_row(name, *(format_metric(values.get(c)) for c in columns))
    Console().print(table)


def print_verdicts(result) -> None:
    words = result.verdicts()
    if words is not None:
        review = f", {words.count('review')} to review" if result.review_threshold is not None else ""
        console.print(f"{words.count('anomalous')} of {len(words)} parts anomalous{review} ({result.threshold_rule})", highlight=False)
