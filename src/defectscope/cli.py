"""The `defectscope` command: a thin layer that parses options and calls the run layer.

Options that were not typed are passed as None; :func:`defectscope.runs.resolve` checks what was
typed against the command and the method and applies the defaults. Shared option declarations
and printers: :mod:`defectscope.cli_shared`; the long-running commands (watch, serve, review):
:mod:`defectscope.cli_live`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from defectscope import __version__
from defectscope.methods.config import DEFAULT_KSHOT
from defectscope.cli_shared import (
    BackboneOption,
    BatchSizeOption,
    DeviceOption,
    EpochsOption,
    FalseAlarmOption,
    GoodOption,
    ImageSizeOption,
    MethodOption,
    OverwriteOption,
    ParamOption,
    ReviewBudgetOption,
    SchedulerOption,
    SkipOption,
    SmoothingOption,
    ThreadsOption,
    WeightsOption,
    app,
    console,
    parse_params,
    print_metrics,
    print_verdicts,
    progress_display,
    run_options,
    user_errors,
)

_parse_params = parse_params  # earlier names, used by tests
_print_metrics = print_metrics

@app.command()
def score(
    folder: Path = typer.Argument(..., help="Folder of images to inspect (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: scores.csv, maps/, report.html."),
    method: Optional[str] = MethodOption,
    backbone: Optional[str] = BackboneOption,
    weights: Optional[Path] = WeightsOption,
    image_size: Optional[int] = ImageSizeOption,
    batch_size: Optional[int] = BatchSizeOption,
    threads: Optional[int] = ThreadsOption,
    overwrite: bool = OverwriteOption,
    skip_unreadable: bool = SkipOption,
    smoothing: Optional[float] = SmoothingOption,
    param: Optional[list[str]] = ParamOption,
    scheduler: Optional[str] = SchedulerOption,
    false_alarm_rate: Optional[float] = FalseAlarmOption,
    review_budget: Optional[float] = ReviewBudgetOption,
    good: Optional[Path] = GoodOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Score an unlabeled batch of images zero-shot; the most anomalous come first."""
    from defectscope.pipeline import score_folder

    options = run_options(method=method, backbone=backbone, weights=weights, image_size=image_size, batch_size=batch_size, threads=threads, skip_unreadable=skip_unreadable,
                          overwrite=overwrite, smoothing=smoothing, param=param, scheduler=scheduler, false_alarm_rate=false_alarm_rate, good=good, review_budget=review_budget, device=device)
    with user_errors(), progress_display() as progress:
        result = score_folder(folder, out, options, progress=progress)
    print_verdicts(result)
    order = result.image_scores.argsort()[::-1][:5]
    console.print(f"scored {len(result.paths)} images; most anomalous:")
    for index in order:
        console.print(f"  {result.image_scores[index]:.4f}  {result.paths[index]}", highlight=False)
    console.print(f"wrote {out}/scores.csv, {out}/maps/, {out}/report.html")


@app.command()
def evaluate(
    root: Path = typer.Argument(..., help="An MVTec AD category, a root of categories, or a magnetic-tile root."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: metrics.json, metrics.md, per-category outputs."),
    method: Optional[str] = MethodOption,
    backbone: Optional[str] = BackboneOption,
    weights: Optional[Path] = WeightsOption,
    image_size: Optional[int] = ImageSizeOption,
    batch_size: Optional[int] = BatchSizeOption,
    threads: Optional[int] = ThreadsOption,
    overwrite: bool = OverwriteOption,
    skip_unreadable: bool = SkipOption,
    smoothing: Optional[float] = SmoothingOption,
    category: Optional[list[str]] = typer.Option(None, "--category", "-c", help="Only these categories (repeatable)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the documented train/test splits (magnetic tile, PRN k-shot; default 0)."),
    kshot: Optional[int] = typer.Option(None, "--kshot", help=f"PRN: labelled defects per defect type moved from test to training (default {DEFAULT_KSHOT})."),
    epochs: Optional[int] = EpochsOption,
    param: Optional[list[str]] = ParamOption,
    scheduler: Optional[str] = SchedulerOption,
    false_alarm_rate: Optional[float] = FalseAlarmOption,
    review_budget: Optional[float] = ReviewBudgetOption,
    good: Optional[Path] = GoodOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Score each category's test set and measure image and pixel metrics.

    Zero-shot methods score the test set by itself; uflow trains on train/good first; prn also
    takes --kshot labelled defects per type from the test set (seeded, never scored)."""
    from defectscope.pipeline import evaluate_dataset

    options = run_options(method=method, backbone=backbone, weights=weights, image_size=image_size, batch_size=batch_size, threads=threads, skip_unreadable=skip_unreadable,
                          overwrite=overwrite, smoothing=smoothing, kshot=kshot, epochs=epochs, param=param, scheduler=scheduler, false_alarm_rate=false_alarm_rate, good=good,
                          review_budget=review_budget, device=device)
    with user_errors(), progress_display() as progress:
        metrics = evaluate_dataset(root, out, options, categories=category, seed=seed, progress=progress)
    print_metrics(metrics)
    console.print(f"wrote {out}/metrics.json, {out}/metrics.md and per-category outputs")


@app.command()
def fit(
    train_dir: Path = typer.Argument(..., help="Normal images: an MVTec category (uses train/good) or a folder of good parts."),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write (safetensors + JSON)."),
    method: str = typer.Option(..., "--method", "-m", help="uflow or prn."),
    anomalies: Optional[Path] = typer.Option(None, "--anomalies", help="PRN: defective images with masks (MVTec category, or <name>_mask.png beside each image)."),
    backbone: Optional[str] = BackboneOption,
    weights: Optional[Path] = WeightsOption,
    image_size: Optional[int] = ImageSizeOption,
    batch_size: Optional[int] = BatchSizeOption,
    threads: Optional[int] = ThreadsOption,
    epochs: Optional[int] = EpochsOption,
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted training from its last epoch checkpoint."),
    overwrite: bool = OverwriteOption,
    param: Optional[list[str]] = ParamOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Train U-Flow (normal images) or PRN (normal images + labelled defects) and save the model."""
    from defectscope.training import fit_model

    options = run_options(method=method, backbone=backbone, weights=weights, image_size=image_size, batch_size=batch_size, threads=threads, overwrite=overwrite,
                          epochs=epochs, param=param, device=device)
    stopped = "interrupted: no model was written; add --resume to the same command to continue from the last finished epoch"
    with user_errors(stopped), progress_display() as progress:
        fit_model(method, train_dir, out, options, anomalies_dir=anomalies, resume=resume, progress=progress)
    console.print(f"saved {method} model to {out}")


@app.command()
def predict(
    model: Path = typer.Argument(..., help="A model folder written by `defectscope fit`."),
    folder: Path = typer.Argument(..., help="Folder of images to inspect (recursive)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: scores.csv, maps/, masks/ (U-Flow), report.html."),
    threads: Optional[int] = ThreadsOption,
    overwrite: bool = OverwriteOption,
    skip_unreadable: bool = SkipOption,
    false_alarm_rate: Optional[float] = FalseAlarmOption,
    review_budget: Optional[float] = ReviewBudgetOption,
    good: Optional[Path] = GoodOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Score images with a trained model."""
    from defectscope.training import predict_folder

    options = run_options(threads=threads, overwrite=overwrite, skip_unreadable=skip_unreadable, false_alarm_rate=false_alarm_rate, good=good, review_budget=review_budget, device=device)
    with user_errors(), progress_display() as progress:
        result = predict_folder(model, folder, out, options, progress)
    print_verdicts(result)
    console.print(f"scored {len(result.paths)} images; wrote {out}/scores.csv, {out}/maps/, {out}/report.html")


@app.command()
def export(
    model: Path = typer.Argument(..., help="A model folder written by `defectscope fit`."),
    out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
) -> None:
    """Export a trained model (image -> anomaly map) to ONNX."""
    from defectscope.training import export_model

    with user_errors():
        export_model(model, out, fmt)
    console.print(f"wrote {out}")


@app.command()
def demo(
    out: Path = typer.Option(Path("defectscope-demo"), "--out", "-o", help="Output folder."),
    count: int = typer.Option(60, "--count", help="How many solar-cell images to inspect."),
    overwrite: bool = OverwriteOption,
    threads: Optional[int] = ThreadsOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Inspect a sample of real solar-cell images shipped in the `elpv-dataset` package (offline)."""
    from defectscope.sample import run_demo

    with user_errors(), progress_display() as progress:
        metrics = run_demo(out, count=count, overwrite=overwrite, threads=threads, progress=progress, device=device)
    print_metrics(metrics)
    console.print(f"open {out}/elpv/report.html to see the most anomalous cells first")


@app.command()
def backbones() -> None:
    """List the available feature extractors."""
    from defectscope.backbones import available_backbones

    for name, description in available_backbones().items():
        typer.echo(f"{name:24s} {description}")


@app.command()
def version() -> None:
    """Print the defectscope version."""
    typer.echo(__version__)


from defectscope import cli_live  # noqa: E402,F401  (registers watch, serve and review on app)

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - entry point for `python -m defectscope`
    sys.exit(app())
