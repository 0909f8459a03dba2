"""SIGTERM (a service manager, `kill`, a CI timeout) stops a run as cleanly as Ctrl-C."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from defectscope.data.synthetic import synthetic_images
from image_helpers import save_images

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _start(*args: str) -> subprocess.Popen:
    """`defectscope ARGS` in a child process (this checkout's sources)."""
    command = [sys.executable, "-c", "from defectscope.cli import main; main()", *args]
    return subprocess.Popen(command, env={**os.environ, "PYTHONPATH": SRC}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _terminate(run: subprocess.Popen) -> str:
    """Send SIGTERM, wait for the child to end; its stderr."""
    run.send_signal(signal.SIGTERM)
    return run.communicate(timeout=60)[1]


def _wait_for(condition, process: subprocess.Popen, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None and not condition():
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be stopped"
    assert condition(), "the run never reached the point where it is stopped"


def test_sigterm_during_a_batch_run_leaves_no_output_and_no_staging_folder(tmp_path):
    images, _ = synthetic_images(48, kind="texture", size=96, seed=0, defect="spot")
    inbox = tmp_path / "in"
    save_images(inbox, images, "part_{:03d}.png")
    out = tmp_path / "out"
    run = _start("score", str(inbox), "--out", str(out), "--threads", "1", "--image-size", "96")
    _wait_for(lambda: any(p.name.startswith(".out.partial-") for p in tmp_path.iterdir()), run)
    time.sleep(0.2)
    stderr = _terminate(run)
    assert run.returncode == 143, stderr
    assert "interrupted" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_sigterm_stops_a_watch_keeping_its_rows_and_report(tmp_path):
    images, _ = synthetic_images(40, kind="texture", size=64, seed=1, defect="spot")
    inbox, out = tmp_path / "in", tmp_path / "out"
    paths = save_images(inbox, images, "part_{:03d}.png")

    def scored() -> int:
        if not (out / "verdicts.csv").exists():
            return 0
        with open(out / "verdicts.csv", newline="") as handle:
            return len(list(csv.DictReader(handle)))

    run = _start("watch", str(inbox), "--out", str(out), "--image-size", "64", "--bank-size", "6",
                 "--min-bank", "4", "--settle", "0.1", "--poll", "0.05", "--threads", "1")
    _wait_for(lambda: scored() >= 6, run)
    stderr = _terminate(run)
    assert run.returncode == 0, stderr
    assert "stopped" in stderr and "rows" in stderr
    kept = scored()
    assert 6 <= kept <= len(paths)
    assert "defectscope watch" in (out / "report.html").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sigterm_during_fit_keeps_the_checkpoint_and_says_how_to_resume(tmp_path):
    images, _ = synthetic_images(24, kind="texture", size=64, seed=2, defect="spot")
    good = tmp_path / "good"
    save_images(good, images, "good_{:03d}.png")
    model = tmp_path / "model"
    run = _start("fit", str(good), "--out", str(model), "--method", "uflow", "--image-size", "64",
                 "--epochs", "200", "--threads", "1")
    checkpoint = tmp_path / ".model.checkpoint"
    _wait_for(lambda: checkpoint.is_dir() and any(checkpoint.iterdir()), run)
    stderr = _terminate(run)
    assert run.returncode == 143, stderr
    assert "--resume" in stderr
    assert not model.exists() and checkpoint.is_dir()
