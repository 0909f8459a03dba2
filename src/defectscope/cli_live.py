"""The long-running `defectscope` commands: watch (a folder as images arrive), serve (HTTP) and
review (decisions in the browser). Registered on the one :data:`defectscope.cli_shared.app`."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer

from defectscope.cli_shared import (
    BackboneOption,
    BatchSizeOption,
    DeviceOption,
    FalseAlarmOption,
    ImageSizeOption,
    OverwriteOption,
    ParamOption,
    SmoothingOption,
    ThreadsOption,
    WeightsOption,
    app,
    console,
    fail,
    progress_display,
    run_options,
    user_errors,
)
from defectscope.errors import DefectscopeError
from defectscope.methods.config import DEFAULT_FALSE_ALARM_RATE


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

    with user_errors():
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
def watch(
    in_dir: Path = typer.Argument(..., help="Folder where new images arrive (watched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: verdicts.csv, maps/, report.html, skipped.csv; a restart resumes it."),
    good: Optional[Path] = typer.Option(None, "--good", help="Score against this folder of good parts (an MVTec category: its train/good) instead of the rolling bank."),
    model: Optional[Path] = typer.Option(None, "--model", help="Score with a trained U-Flow or PRN model folder."),
    false_alarm_rate: Optional[float] = typer.Option(None, "--false-alarm-rate", help=f"Zero-shot verdicts: conformal false-alarm rate on the bank's leave-one-out scores (default {DEFAULT_FALSE_ALARM_RATE:g})."),
    bank_size: Optional[int] = typer.Option(None, "--bank-size", help="Rolling bank: the last N images judged normal (or the size of the --good sample; default 100)."),
    min_bank: Optional[int] = typer.Option(None, "--min-bank", help="Rolling bank: images that wait and are scored together before the first verdict (default 20)."),
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
    device: Optional[str] = DeviceOption,
) -> None:
    """Inspect each new image of a folder as it arrives; one row per image in verdicts.csv."""
    from defectscope.watch import watch_folder

    options = run_options(backbone=backbone, weights=weights, image_size=image_size, threads=threads, smoothing=smoothing, param=param, device=device, false_alarm_rate=false_alarm_rate, good=good)
    with user_errors():
        summary = watch_folder(
            in_dir, out, options, bank_size=bank_size, min_bank=min_bank, model=model,
            settle=settle, give_up=give_up, poll=poll, exit_after_idle=exit_after_idle, log=lambda line: console.print(line, highlight=False),
        )
    console.print(f"wrote {summary.written} rows to {out}/verdicts.csv ({summary.skipped} files skipped)")



@app.command()
def serve(
    out: Path = typer.Option(..., "--out", "-o", help="Journal folder: verdicts.csv (one row per decision), settings.json; a restart appends to it."),
    model: Optional[Path] = typer.Option(None, "--model", help="A trained U-Flow or PRN model folder (`defectscope fit`)."),
    good: Optional[Path] = typer.Option(None, "--good", help="Known-good images: alone, MuSc/CoDeGraph score each image against them; with --model, the verdict is calibrated on them."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help="With --good alone: musc (default) or codegraph."),
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
    false_alarm_rate: Optional[float] = FalseAlarmOption,
    backbone: Optional[str] = BackboneOption,
    weights: Optional[Path] = WeightsOption,
    image_size: Optional[int] = ImageSizeOption,
    batch_size: Optional[int] = BatchSizeOption,
    threads: Optional[int] = ThreadsOption,
    smoothing: Optional[float] = SmoothingOption,
    param: Optional[list[str]] = ParamOption,
    device: Optional[str] = DeviceOption,
) -> None:
    """Serve inspections over HTTP: POST an image to /v1/inspect, get its score, verdict and defect regions."""
    import secrets

    from defectscope.options import apply_threads
    from defectscope.runs.spec import resolve_run
    from defectscope.serve import Limits, Service, build_inspector, run_server

    if no_auth and token:
        fail(DefectscopeError("give either --token or --no-auth, not both"))
    options = run_options(method=method, backbone=backbone, weights=weights, image_size=image_size, batch_size=batch_size, threads=threads, smoothing=smoothing,
                          param=param, false_alarm_rate=false_alarm_rate, device=device)
    with user_errors("interrupted"):
        limits = Limits(max_bytes=max_bytes, max_pixels=max_pixels, queue_size=queue_size, max_batch=max_batch, batch_window=batch_window / 1000.0)
        spec = resolve_run("serve", options, model=model, good=good)
        apply_threads(spec.threads)
        with progress_display() as progress:
            inspector = build_inspector(out, spec, model=model, good=good, keep_images=keep_images, progress=progress)
        generated = token is None and not no_auth
        secret = None if no_auth else (token or secrets.token_urlsafe(24))
        if no_auth and host not in ("127.0.0.1", "localhost", "::1"):
            warnings.warn(f"--host {host} with --no-auth: anyone who can reach this address can use the service")
        from defectscope.device import describe_device, resolve_device

        service = Service(inspector, limits, secret, device=describe_device(resolve_device(spec.device)))
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
