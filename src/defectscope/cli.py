"""The `defectscope` command: a thin layer that parses options, calls the library and prints."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from defectscope import __version__
from defectscope.errors import DefectscopeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Industrial visual inspection: which parts are defective, and where.",
)
console = Console(stderr=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so that a stopped run cleans up after
    itself (staging folders removed, a watch's report written) instead of dying mid-write."""


def _terminate(signum, frame) -> None:
    raise Terminated()


@app.callback()
def _setup() -> None:
    """Industrial visual inspection: which parts are defective, and where."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)

MethodOption = typer.Option("musc", "--method", "-m", help="musc (zero-shot, default), codegraph (zero-shot, recurring defects); evaluate also takes uflow and prn (trained).")
BackboneOption = typer.Option(None, "--backbone", "-b", help="Feature extractor (see `defectscope backbones`); default: the embedded EfficientNet-Lite.")
WeightsOption = typer.Option(None, "--weights", help="Local folder with backbone weights (DINOv2/CLIP), for offline use.")
ImageSizeOption = typer.Option(None, "--image-size", help="Square input size in pixels (default: the backbone's).")
BatchSizeOption = typer.Option(8, "--batch-size", help="Images per backbone forward pass.")
ThreadsOption = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's choice).")
OverwriteOption = typer.Option(False, "--overwrite", help="Replace an existing output folder from an earlier defectscope run.")
SkipOption = typer.Option(False, "--skip-unreadable", help="Skip unreadable images (listed in every output) instead of stopping.")
ParamOption = typer.Option(None, "--param", "-p", help="Any method setting as KEY=VALUE (repeatable), e.g. upper=0.2, degrees=1,3, burnout_threshold=25; see the method's config class.")
SchedulerOption = typer.Option(None, "--scheduler", help="Run MuSc's work on Dask: 'dask' (a local cluster) or a scheduler address tcp://HOST:PORT.")
SmoothingOption = typer.Option(None, "--smoothing", help="Gaussian blur of the anomaly maps, sigma in input pixels (default 4; 0 = off).")
FalseAlarmOption = typer.Option(0.05, "--false-alarm-rate", help="Share of normal images the verdict may flag as anomalous.")
ReviewBudgetOption = typer.Option(0.2, "--review-budget", help="Largest share of the batch the verdict may send to review (the scores cannot tell); 0 = never review.")
DeviceOption = typer.Option("auto", "--device", help="Where to compute: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps; an absent device is refused before any work.")
GoodOption = typer.Option(None, "--good", help="Folder of known-good images (an MVTec category: its train/good): the verdict is calibrated on them (MuSc/CoDeGraph also score against them). evaluate over a root of categories: pass the root itself to use each category's own train/good.")


@contextlib.contextmanager
def _progress() -> Iterator:
    """A rich progress display; yields a ``progress(stage, done, total)`` callback."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, int] = {}

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def _fail(error: Exception) -> None:
    console.print(f"[bold red]error:[/] {error}", highlight=False)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def _user_errors(interrupted: str = "interrupted: no output was written") -> Iterator[None]:
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
            _fail(error)
        except KeyboardInterrupt as stop:
            console.print(interrupted, highlight=False)
            raise typer.Exit(code=143 if isinstance(stop, Terminated) else 130)


def _parse_params(params: Optional[list[str]]) -> dict[str, str]:
    """KEY=VALUE pairs as raw text; the method's config converts each to its declared type."""
    parsed = {}
    for item in params or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got '{item}'", param_hint="--param")
        parsed[key.strip().replace("-", "_")] = value.strip()
    return parsed


def _with_scheduler(params: Optional[list[str]], scheduler: Optional[str]) -> Optional[list[str]]:
    """--scheduler is MuSc's ``scheduler`` setting."""
    return [*(params or []), f"scheduler={scheduler}"] if scheduler else params


def _options(method, backbone, weights, image_size, batch_size, threads, skip_unreadable, overwrite, smoothing, kshot=10, epochs=None, params=None, false_alarm_rate=0.05, good=None, review_budget=0.2, device="auto"):
    from defectscope.options import RunOptions

    method_options: dict = _parse_params(params)
    if smoothing is not None:
        method_options["smoothing_sigma"] = smoothing
    if epochs is not None:
        method_options["epochs"] = epochs
    with _user_errors():
        return RunOptions(
            kshot=kshot,
            method=method,
            backbone=backbone,
            weights=str(weights) if weights else None,
            image_size=image_size,
            batch_size=batch_size,
            threads=threads,
            skip_unreadable=skip_unreadable,
            overwrite=overwrite,
            method_options=method_options,
            false_alarm_rate=false_alarm_rate,
            good=good,
            review_budget=review_budget,
            device=device,
        )


def _print_metrics(metrics: dict) -> None:
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


def _print_verdicts(result) -> None:
    words = result.verdicts()
    if words is not None:
        review = f", {words.count('review')} to review" if result.review_threshold is not None else ""
        console.print(f"{words.count('anomalous')} of {len(words)} parts anomalous{review} ({result.threshold_rule})", highlight=False)


@app.command()
def score(
    folder: Path = typer.Argument(..., help="Folder of images to inspect (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: scores.csv, maps/, report.html."),
    method: str = MethodOption,
    backbone: Optional[str] = BackboneOption,
    weights: Optional[Path] = WeightsOption,
    image_size: Optional[int] = ImageSizeOption,
    batch_size: int = BatchSizeOption,
    threads: Optional[int] = ThreadsOption,
    overwrite: bool = OverwriteOption,
    skip_unreadable: bool = SkipOption,
    smoothing: Optional[float] = SmoothingOption,
    param: Optional[list[str]] = ParamOption,
    scheduler: Optional[str] = SchedulerOption,
    false_alarm_rate: float = FalseAlarmOption,
    review_budget: float = ReviewBudgetOption,
    good: Optional[Path] = GoodOption,
    device: str = DeviceOption,
) -> None:
    """Score an unlabeled batch of images zero-shot; the most anomalous come first."""
    from defectscope.pipeline import score_folder

    options = _options(method, backbone, weights, image_size, batch_size, threads, skip_unreadable, overwrite, smoothing, params=_with_scheduler(param, scheduler),
                       false_alarm_rate=false_alarm_rate, good=good, review_budget=review_budget, device=device)
    with _user_errors(), _progress() as progress:
        result = score_folder(folder, out, options, progress=progress)
    _print_verdicts(result)
    order = result.image_scores.argsort()[::-1][:5]
    console.print(f"scored {len(result.paths)} images; most anomalous:")
    for index in order:
        console.print(f"  {result.image_scores[index]:.4f}  {result.paths[index]}", highlight=False)
    console.print(f"wrote {out}/scores.csv, {out}/maps/, {out}/report.html")


@app.command()
def evaluate(
    root: Path = typer.Argument(..., help="An MVTec AD category, a root of categories, or a magnetic-tile root."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: metrics.json, metrics.md, per-category outputs."),
    method: str = MethodOption,
    backbone: Optional[str] = BackboneOption,
    weights: Optional[Path] = WeightsOption,
    image_size: Optional[int] = ImageSizeOption,
    batch_size: int = BatchSizeOption,
    threads: Optional[int] = ThreadsOption,
    overwrite: bool = OverwriteOption,
    skip_unreadable: bool = SkipOption,
    smoothing: Optional[float] = SmoothingOption,
    category: Optional[list[str]] = typer.Option(None, "--category", "-c", help="Only these categories (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the documented train/test splits (magnetic tile, PRN k-shot)."),
    kshot: int = typer.Option(10, "--kshot", help="PRN: labelled defects per defect type moved from test to training."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="U-Flow/PRN: training epochs (default: the method's)."),
    param: Optional[list[str]] = ParamOption,
    scheduler: Optional[str] = SchedulerOption,
    false_alarm_rate: float = FalseAlarmOption,
    review_budget: float = ReviewBudgetOption,
    good: Optional[Path] = GoodOption,
    device: str = DeviceOption,
) -> None:
    """Score each category's test set and measure image and pixel metrics.

    Zero-shot methods score the test set by itself; uflow trains on train/good first; prn also
    takes --kshot labelled defects per type from the test set (seeded, never scored)."""
    from defectscope.pipeline import evaluate_dataset

    options = _options(method, backbone, weights, image_size, batch_size, threads, skip_unreadable, overwrite, smoothing, kshot, epochs, params=_with_scheduler(param, scheduler),
                       false_alarm_rate=false_alarm_rate, good=good, review_budget=review_budget, device=device)
    with _user_errors(), _progress() as progress:
        metrics = evaluate_dataset(root, out, options, categories=category, seed=seed, progress=progress)
    _print_metrics(metrics)
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
    batch_size: int = BatchSizeOption,
    threads: Optional[int] = ThreadsOption,
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Training epochs (default: the method's)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted training from its last epoch checkpoint."),
    overwrite: bool = OverwriteOption,
    param: Optional[list[str]] = ParamOption,
    device: str = DeviceOption,
) -> None:
    """Train U-Flow (normal images) or PRN (normal images + labelled defects) and save the model."""
    from defectscope.training import fit_model

    options = _options(method, backbone, weights, image_size, batch_size, threads, False, overwrite, None, epochs=epochs, params=param, device=device)
    stopped = "interrupted: no model was written; add --resume to the same command to continue from the last finished epoch"
    with _user_errors(stopped), _progress() as progress:
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
    false_alarm_rate: float = FalseAlarmOption,
    review_budget: float = ReviewBudgetOption,
    good: Optional[Path] = GoodOption,
    device: str = DeviceOption,
) -> None:
    """Score images with a trained model."""
    from defectscope.options import RunOptions
    from defectscope.training import predict_folder

    with _user_errors(), _progress() as progress:
        options = RunOptions(threads=threads, overwrite=overwrite, skip_unreadable=skip_unreadable, false_alarm_rate=false_alarm_rate, good=good, review_budget=review_budget, device=device)
        result = predict_folder(model, folder, out, options, progress)
    _print_verdicts(result)
    console.print(f"scored {len(result.paths)} images; wrote {out}/scores.csv, {out}/maps/, {out}/report.html")


@app.command()
def export(
    model: Path = typer.Argument(..., help="A model folder written by `defectscope fit`."),
    out: Path = typer.Option(..., "--out", "-o", help="The .onnx file to write."),
    fmt: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
) -> None:
    """Export a trained model (image -> anomaly map) to ONNX."""
    from defectscope.training import export_model

    with _user_errors():
        export_model(model, out, fmt)
    console.print(f"wrote {out}")


@app.command()
def review(
    out: Path = typer.Argument(..., help="Output folder of a score, evaluate, predict or watch run."),
    export_dir: Optional[Path] = typer.Option(None, "--export", help="Write the decisions as training data to this folder (an MVTec-style category: train/good, test/defective + masks) instead of serving."),
    category: Optional[str] = typer.Option(None, "--category", "-c", help="Evaluate output with several categories: the one to review."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(0, "--port", help="Port to listen on (default: a free one)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the URL without opening a browser."),
    overwrite: bool = OverwriteOption,
) -> None:
    """Confirm or correct the verdicts in the browser (decisions go to OUT/review.csv), or --export them."""
    from defectscope.review import export_review, load_run

    with _user_errors():
        run = load_run(out, category)
        if export_dir is not None:
            report = export_review(run, export_dir, overwrite=overwrite)
            written = report["written"]
            console.print(f"wrote {export_dir}: {written['good']} good, {written['defective']} defective with masks, {written['defective-without-mask']} defective without masks; see {export_dir}/summary.md")
            return
        from defectscope.review.server import serve

        if host not in ("127.0.0.1", "localhost", "::1"):
            warnings.warn(f"--host {host}: anyone who can reach this address and has the URL can see the images and record decisions")
        serve(run, host=host, port=port, open_browser=not no_browser, announce=lambda url: console.print(f"reviewing {len(run.parts)} parts of {run.folder}; open {url}  (Ctrl-C to stop)", highlight=False, soft_wrap=True))
        console.print(f"stopped; the decisions are in {run.folder / 'review.csv'}", highlight=False)


@app.command()
def demo(
    out: Path = typer.Option(Path("defectscope-demo"), "--out", "-o", help="Output folder."),
    count: int = typer.Option(60, "--count", help="How many solar-cell images to inspect."),
    overwrite: bool = OverwriteOption,
    threads: Optional[int] = ThreadsOption,
    device: str = DeviceOption,
) -> None:
    """Inspect a sample of real solar-cell images shipped in the `elpv-dataset` package (offline)."""
    from defectscope.sample import run_demo

    with _user_errors(), _progress() as progress:
        metrics = run_demo(out, count=count, overwrite=overwrite, threads=threads, progress=progress, device=device)
    _print_metrics(metrics)
    console.print(f"open {out}/elpv/report.html to see the most anomalous cells first")


@app.command()
def watch(
    in_dir: Path = typer.Argument(..., help="Folder where new images arrive (watched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: verdicts.csv, maps/, report.html, skipped.csv; a restart resumes it."),
    good: Optional[Path] = typer.Option(None, "--good", help="Score against this folder of good parts instead of the rolling bank."),
    model: Optional[Path] = typer.Option(None, "--model", help="Score with a trained U-Flow or PRN model folder."),
    false_alarm_rate: float = typer.Option(0.05, "--false-alarm-rate", help="Zero-shot verdicts: conformal false-alarm rate on the bank's leave-one-out scores."),
    bank_size: int = typer.Option(100, "--bank-size", help="Rolling bank: the last N images judged normal (or the size of the --good sample)."),
    min_bank: int = typer.Option(20, "--min-bank", help="Rolling bank: images that wait and are scored together before the first verdict."),
    settle: float = typer.Option(1.0, "--settle", help="Seconds a file's size must stay unchanged before it is read."),
    give_up: float = typer.Option(10.0, "--give-up", help="Seconds an unchanged file may fail to decode before it is logged and skipped."),
    poll: float = typer.Option(0.5, "--poll", help="Seconds between looks at the folder."),
    exit_after_idle: Optional[float] = typer.Option(None, "--exit-after-idle", help="Stop after this many seconds without new images (default: run until Ctrl-C)."),
    backbone: Optional[str] = BackboneOption,
    weights: Optional[Path] = WeightsOption,
    image_size: Optional[int] = ImageSizeOption,
    threads: Optional[int] = ThreadsOption,
    smoothing: Optional[float] = SmoothingOption,
    param: Optional[list[str]] = ParamOption,
    device: str = DeviceOption,
) -> None:
    """Inspect each new image of a folder as it arrives; one row per image in verdicts.csv."""
    from defectscope.watch import watch_folder

    options = _options("musc", backbone, weights, image_size, 8, threads, False, False, smoothing, params=param, device=device)
    with _user_errors():
        summary = watch_folder(
            in_dir, out, options, alpha=false_alarm_rate, bank_size=bank_size, min_bank=min_bank, good=good, model=model,
            settle=settle, give_up=give_up, poll=poll, exit_after_idle=exit_after_idle, log=lambda line: console.print(line, highlight=False),
        )
    console.print(f"wrote {summary.written} rows to {out}/verdicts.csv ({summary.skipped} files skipped)")


@app.command()
def serve(
    out: Path = typer.Option(..., "--out", "-o", help="Journal folder: verdicts.csv (one row per decision), settings.json; a restart appends to it."),
    model: Optional[Path] = typer.Option(None, "--model", help="A trained U-Flow or PRN model folder (`defectscope fit`)."),
    good: Optional[Path] = typer.Option(None, "--good", help="Known-good images: alone, MuSc/CoDeGraph score each image against them; with --model, the verdict is calibrated on them."),
    method: str = typer.Option("musc", "--method", "-m", help="With --good alone: musc or codegraph."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: a free one, printed)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="DEFECTSCOPE_TOKEN", help="The bearer token clients must send (default: a random one, printed); also read from DEFECTSCOPE_TOKEN."),
    no_auth: bool = typer.Option(False, "--no-auth", help="Serve without a token (anyone who can reach the port can inspect)."),
    queue_size: int = typer.Option(32, "--queue-size", help="Requests that may wait for the detector; more get 503 with Retry-After."),
    max_batch: int = typer.Option(8, "--max-batch", help="Most images scored together in one batch."),
    batch_window: float = typer.Option(10.0, "--batch-window", help="Milliseconds the first image of a batch waits for others."),
    max_bytes: int = typer.Option(32 * 1024 * 1024, "--max-bytes", help="Largest request body in bytes (larger: 413 before the body is read)."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", help="Largest image in pixels (width x height; larger: 413 before decoding)."),
    keep_images: bool = typer.Option(False, "--keep-images", help="Save each image as sent (OUT/inputs/) and its overlay (OUT/maps/), so `defectscope review OUT` shows them."),
    false_alarm_rate: float = FalseAlarmOption,
    backbone: Optional[str] = BackboneOption,
    weights: Optional[Path] = WeightsOption,
    image_size: Optional[int] = ImageSizeOption,
    batch_size: int = BatchSizeOption,
    threads: Optional[int] = ThreadsOption,
    smoothing: Optional[float] = SmoothingOption,
    param: Optional[list[str]] = ParamOption,
    device: str = DeviceOption,
) -> None:
    """Serve inspections over HTTP: POST an image to /v1/inspect, get its score, verdict and defect regions."""
    import secrets

    from defectscope.options import apply_threads
    from defectscope.serve import Limits, Service, build_inspector, run_server

    if no_auth and token:
        _fail(DefectscopeError("give either --token or --no-auth, not both"))
    options = _options(method, backbone, weights, image_size, batch_size, threads, False, False, smoothing, params=param, false_alarm_rate=false_alarm_rate, device=device)
    with _user_errors("interrupted"):
        limits = Limits(max_bytes=max_bytes, max_pixels=max_pixels, queue_size=queue_size, max_batch=max_batch, batch_window=batch_window / 1000.0)
        apply_threads(threads)
        if model is not None and (backbone or weights or image_size or param or smoothing is not None):
            raise DefectscopeError("--backbone, --weights, --image-size, --smoothing and --param describe a zero-shot method; a --model keeps its own settings")
        with _progress() as progress:
            inspector = build_inspector(out, options, model=model, good=good, keep_images=keep_images, progress=progress)
        generated = token is None and not no_auth
        secret = None if no_auth else (token or secrets.token_urlsafe(24))
        if no_auth and host not in ("127.0.0.1", "localhost", "::1"):
            warnings.warn(f"--host {host} with --no-auth: anyone who can reach this address can use the service")
        from defectscope.device import describe_device, resolve_device

        service = Service(inspector, limits, secret, device=describe_device(resolve_device(device)))
        source = f"model {model}" if model is not None else f"{inspector.detector.method} against {inspector.description['good_images']} good images in {good}"

        def announce(url: str) -> None:
            console.print(f"serving {source} on {url}/v1/inspect; journal {inspector.journal.path} (Ctrl-C to stop)", highlight=False, soft_wrap=True)
            if generated:
                console.print(f"token: {secret}  (send 'Authorization: Bearer {secret}')", highlight=False, soft_wrap=True)

        try:
            run_server(service, host=host, port=port, announce=announce)
        except KeyboardInterrupt:
            pass  # uvicorn raises the Ctrl-C / SIGTERM it stopped on again once the requests in flight are answered
    console.print(f"stopped; {inspector.journal.rows} decisions in {inspector.journal.path}", highlight=False)


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


def main() -> None:  # pragma: no cover - entry point for `python -m defectscope`
    sys.exit(app())
