"""`defectscope watch`: rolling bank, conformal verdicts, stable-file reading, crash safety."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defectscope.data.synthetic import synthetic_images
from defectscope.errors import ConfigError
from defectscope.methods.bank import bank_scores
from defectscope.methods.rolling import RollingBank
from defectscope.options import RunOptions
from defectscope.watch import Journal, build_scorer, stream_threshold, watch_folder
from image_helpers import save_images

pytestmark = pytest.mark.filterwarnings("ignore:mutual scoring of only")
FAST = dict(settle=0.2, give_up=1.0, poll=0.1)
ONE_THREAD = RunOptions(image_size=64, threads=1)


@pytest.fixture(autouse=True)
def restore_threads():
    """watch_folder sets torch's thread count (one image at a time runs best on one thread)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def write_images(folder: Path, count: int, seed: int = 0, defective=()) -> list[Path]:
    images, _ = synthetic_images(count, kind="texture", size=64, seed=seed, defective=defective, defect="spot")
    return save_images(folder, images, f"part{seed:02d}_{{:03d}}.png")


def rows(out: Path, name: str = "verdicts.csv") -> list[dict[str, str]]:
    with open(out / name, newline="") as handle:
        return list(csv.DictReader(handle))


def test_stream_threshold():
    calibration = np.arange(1.0, 20.0)
    assert stream_threshold(calibration, 0.05) == 19.0
    assert stream_threshold(calibration, 0.1) == 19.0  # the per-set cut: rank 18 holds 0.1 only on average
    assert stream_threshold(calibration[:5], 0.05) == float("inf")


def test_journal_drops_a_torn_last_line(tmp_path):
    path = tmp_path / "j.csv"
    journal = Journal(path, ["path", "score"])
    journal.append(["a.png", "1.0"])
    with open(path, "a") as handle:
        handle.write("b.png,0.")
    assert [row["path"] for row in Journal(path, ["path", "score"]).rows()] == ["a.png"]


def test_rolling_bank_tables_match_bank_scoring_after_evictions():
    features = F.normalize(torch.randn(7, 10, 6, generator=torch.Generator().manual_seed(0)), dim=-1)
    bank = RollingBank(4)
    for index in range(6):
        comparison = bank.compare([features[index]])
        if len(bank):
            members = torch.stack([features[int(k)] for k in bank.members()])
            expected = bank_scores(features[index : index + 1], members)[0]
            assert torch.allclose(bank.query_scores(comparison)[0], expected, atol=1e-6)
        bank.add(str(index), [features[index]], comparison)
    assert bank.members() == ["2", "3", "4", "5"]
    members = features[2:6]
    assert torch.allclose(bank.leave_one_out()[0], bank_scores(members, members, self_index=torch.arange(4)), atol=1e-6)
    bank.remove("3")
    assert bank.members() == ["2", "4", "5"]


def test_watch_scores_each_image_once_and_skips_a_corrupt_file(tmp_path):
    inbox = tmp_path / "in"
    paths = write_images(inbox, 16, defective=(11,))
    (inbox / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    lines: list[str] = []
    summary = watch_folder(inbox, tmp_path / "out", ONE_THREAD, false_alarm_rate=0.2, bank_size=12, min_bank=8, exit_after_idle=0.5, log=lines.append, **FAST)
    got = rows(tmp_path / "out")
    assert sorted(row["path"] for row in got) == sorted(str(p) for p in paths)
    assert all(float(row["score"]) > 0 for row in got)
    verdicts = {row["path"]: row["verdict"] for row in got}
    assert verdicts.pop(str(paths[11])) == "anomalous"
    assert list(verdicts.values()).count("normal") >= 10
    assert [row["path"] for row in rows(tmp_path / "out", "skipped.csv")] == [str(inbox / "broken.png")]
    assert any("skipped" in line and "broken.png" in line for line in lines)
    assert summary.written == 16 and summary.skipped == 1
    assert len(list((tmp_path / "out" / "maps").iterdir())) == 16
    assert "defectscope watch" in (tmp_path / "out" / "report.html").read_text()


def test_good_mvtec_category_means_its_train_good(tmp_path):
    # `watch --good CATEGORY` used the plain-folder reader: test/ images (defects included) and
    # the ground-truth mask PNGs went into the good bank.
    from defectscope.data.synthetic import write_mvtec_category

    root = write_mvtec_category(tmp_path / "widget", kind="texture", n_train=4, n_test_good=2, n_test_defect=2, size=64, seed=3)
    train = sorted(str(p) for p in (root / "train" / "good").iterdir())
    scorer = build_scorer(ONE_THREAD, false_alarm_rate=0.2, bank_size=50, good=root, model=None, log=lambda line: None)
    assert sorted(scorer.good) == train
    plain = tmp_path / "plain"
    write_images(plain, 4, seed=4)
    scorer = build_scorer(ONE_THREAD, false_alarm_rate=0.2, bank_size=50, good=plain, model=None, log=lambda line: None)
    assert sorted(scorer.good) == sorted(str(p) for p in plain.iterdir())


def test_watch_good_gives_what_score_good_gives(tmp_path):
    # watch --good re-implemented MuSc's reference mode with its own bank and threshold; it is
    # now the detector's reference mode, so each image gets score --good's score and verdict.
    from defectscope.pipeline import score_folder

    good, inbox = tmp_path / "good", tmp_path / "in"
    write_images(good, 8, seed=5)
    write_images(inbox, 5, seed=6, defective=(2,))
    watch_folder(inbox, tmp_path / "out", ONE_THREAD, false_alarm_rate=0.2, good=good, exit_after_idle=0.5, log=lambda line: None, **FAST)
    scored = score_folder(inbox, tmp_path / "scored", RunOptions(image_size=64, threads=1, good=str(good), false_alarm_rate=0.2))
    watched = {row["path"]: row for row in rows(tmp_path / "out")}
    assert len(watched) == 5
    for path, score, verdict in zip(scored.paths, scored.image_scores, scored.verdicts()):
        assert abs(float(watched[path]["score"]) - score) < 1e-5 and watched[path]["verdict"] == verdict
    # the part-crop decision on the good images is recorded as score --good records it
    recorded = json.loads((tmp_path / "out" / "defectscope-run.json").read_text())["batch_facts"]["part_crop"]
    assert recorded == json.loads((tmp_path / "scored" / "settings.json").read_text())["batch_facts"]["part_crop"]
    assert recorded["cropped"] is False


def test_watch_colour_scale_follows_the_maps_shown_and_the_report_shows_the_input(tmp_path, monkeypatch):
    # The overlays' colour scale came from the bank's leave-one-out maps (on mvtec_bottle
    # 0.05-0.41 while the maps shown reached 0.84 at their 99th percentile: every defect saturated)
    # and the report's image slot repeated the overlay.
    import defectscope.report.html as html
    import defectscope.report.overlay as overlay
    from defectscope.data.io import read_image
    from defectscope.report.overlay import batch_color_range, make_thumbnail

    drawn: list[tuple[np.ndarray, float, float]] = []
    real_overlay = overlay.heatmap_overlay
    monkeypatch.setattr(overlay, "heatmap_overlay", lambda image, amap, **kw: drawn.append((image, amap, kw["vmin"], kw["vmax"])) or real_overlay(image, amap, **kw))
    written: list[tuple[np.ndarray, float, float]] = []  # the maps/ overlays: the last drawn before each save
    real_save = overlay.save_png
    monkeypatch.setattr(overlay, "save_png", lambda path, array: written.append(drawn[-1][1:]) or real_save(path, array))
    reports: list[dict] = []
    real_report = html.write_report
    monkeypatch.setattr(html, "write_report", lambda path, **kw: reports.append(kw) or real_report(path, **kw))
    inbox = tmp_path / "in"
    paths = write_images(inbox, 14, defective=(9, 11, 12, 13))
    watch_folder(inbox, tmp_path / "out", ONE_THREAD, false_alarm_rate=0.2, bank_size=10, min_bank=8, exit_after_idle=0.5, log=lambda line: None, **FAST)
    assert len(written) == 14
    maps = np.stack([amap for amap, _, _ in written])
    final = batch_color_range(maps)
    # the first batch (8 images scored together) shares the rule of score's report over them
    first = batch_color_range(maps[:8])
    assert all(np.allclose((vmin, vmax), first, rtol=1e-5) for _, vmin, vmax in written[:8])
    report = reports[-1]
    assert np.allclose(report["color_range"], final, rtol=1e-5)
    assert report["color_range"][1] >= np.percentile(maps, 99) - 1e-6
    inputs = {str(p): make_thumbnail(read_image(p), width=160) for p in paths}
    for entry in report["entries"]:
        assert np.array_equal(entry.thumbnail, inputs[entry.path])
        assert not np.array_equal(entry.thumbnail, entry.overlay)


def test_a_file_written_slowly_in_two_halves_is_read_once_complete(tmp_path):
    good = tmp_path / "good"
    write_images(good, 6, seed=1)
    inbox = tmp_path / "in"
    inbox.mkdir()
    source = write_images(tmp_path / "src", 1, seed=2, defective=(0,))[0]
    data = source.read_bytes()
    (inbox / "whole.png").write_bytes(data)
    options = dict(bank_size=6, good=good, false_alarm_rate=0.3, exit_after_idle=1.0, settle=0.3, give_up=5.0, poll=0.1, log=lambda line: None)
    thread = threading.Thread(target=watch_folder, args=(inbox, tmp_path / "out", ONE_THREAD), kwargs=options)
    thread.start()
    with open(inbox / "slow.png", "wb") as handle:
        handle.write(data[: len(data) // 2])
        handle.flush()
        time.sleep(1.2)
        handle.write(data[len(data) // 2 :])
    thread.join(timeout=60)
    got = {Path(row["path"]).name: row for row in rows(tmp_path / "out")}
    assert sorted(got) == ["slow.png", "whole.png"]
    assert got["slow.png"]["score"] == got["whole.png"]["score"]
    assert rows(tmp_path / "out", "skipped.csv") == []


def _watch_command(inbox: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-c", "from defectscope.cli import main; main()", "watch", str(inbox), "--out", str(out),
        "--image-size", "64", "--bank-size", "6", "--min-bank", "4", "--settle", "0.1", "--poll", "0.05",
        "--exit-after-idle", "1.5", "--threads", "1",
    ]


def test_kill_9_then_restart_gives_each_image_exactly_once(tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    paths = write_images(inbox, 16, defective=(9,))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    first = subprocess.Popen(_watch_command(inbox, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and first.poll() is None:
        if (out / "verdicts.csv").exists() and len(rows(out)) >= 6:
            break
        time.sleep(0.02)
    assert first.poll() is None, "the first run ended before it could be killed"
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = len(rows(out))
    assert 6 <= killed_at < 16
    second = subprocess.run(_watch_command(inbox, out), env=env, capture_output=True, text=True, timeout=180)
    assert second.returncode == 0, second.stderr
    got = [row["path"] for row in rows(out)]
    assert sorted(got) == sorted(str(p) for p in paths)


@pytest.mark.slow
def test_watch_with_a_trained_uflow_model(tmp_path):
    from defectscope.data.synthetic import write_mvtec_category
    from defectscope.training import fit_model

    category = write_mvtec_category(tmp_path / "widget", kind="texture", n_train=6, n_test_good=2, n_test_defect=2, size=64, seed=2)
    options = RunOptions(image_size=64, threads=1, method_options={"epochs": 1, "min_epoch_samples": 4, "batch_size": 4})
    model = fit_model("uflow", category, tmp_path / "model", options)
    summary = watch_folder(category / "test", tmp_path / "out", RunOptions(threads=1), model=model, exit_after_idle=0.3, log=lambda line: None, **FAST)
    got = rows(tmp_path / "out")
    assert summary.written == 4 and len(got) == 4
    assert all(row["verdict"] in ("normal", "anomalous") and row["score"] for row in got)


class _BandedDetector:
    """A stand-in trained model whose verdict has a review band: score 0.9 anomalous, 0.5 review, 0.1 normal."""

    def predict(self, images, paths):
        from defectscope.methods.base import Result

        score = {"bad": 0.9, "doubt": 0.5}.get(Path(paths[0]).stem.split("_")[0], 0.1)
        maps = np.full((1, 8, 8), score, dtype=np.float32)
        return Result(paths=list(paths), image_scores=np.array([score]), anomaly_maps=maps, is_anomalous=np.array([score > 0.7]),
                      needs_review=np.array([0.3 < score <= 0.7]), threshold=0.7, review_threshold=0.3, threshold_rule="test")


def test_watch_rows_log_and_report_carry_review_verdicts(tmp_path):
    from defectscope.watch import ModelScorer, Watcher

    images, _ = synthetic_images(6, kind="texture", size=32, seed=1)
    inputs = tmp_path / "in"
    for index, (image, kind) in enumerate(zip(images, ["bad", "doubt", "doubt", "ok", "ok", "ok"])):
        save_images(inputs, [image], f"{kind}_{index}.png")
    said: list[str] = []
    watcher = Watcher(inputs, tmp_path / "out", ModelScorer(_BandedDetector()), settings={"scorer": "model", "model": "m"}, log=said.append, **FAST)
    summary = watcher.run(exit_after_idle=0.3)
    got = {Path(row["path"]).stem: row["verdict"] for row in rows(tmp_path / "out")}
    assert summary.written == 6
    assert got == {"bad_0": "anomalous", "doubt_1": "review", "doubt_2": "review", "ok_3": "normal", "ok_4": "normal", "ok_5": "normal"}
    assert sum(line.startswith("review ") for line in said) == 2
    report = (tmp_path / "out" / "report.html").read_text()
    lead = re.sub(r"<[^>]+>", "", re.search(r'<p class="lead" id="verdicts">(.*?)</p>', report).group(1))
    assert lead == "1 of 6 parts anomalous, 2 to review, 3 normal"
    assert report.count('class="verdict review"') == 2 and report.count("<rect class=\"bar review\"") >= 1
    grid = report[report.index('id="images"'):]
    order = [grid.index(f"{stem}.png") for stem in ("bad_0", "doubt_1", "doubt_2")]
    assert order[0] < min(order[1:]) and max(order[1:]) < min(grid.index(f"ok_{i}.png") for i in (3, 4, 5))


def test_watch_good_takes_codegraph_in_its_reference_mode(tmp_path):
    # The rolling bank is MuSc's; against known-good images any zero-shot method can watch.
    good, inbox = tmp_path / "good", tmp_path / "in"
    write_images(good, 6, seed=5)
    write_images(inbox, 3, seed=6)
    options = RunOptions(image_size=64, threads=1, method="codegraph")
    watch_folder(inbox, tmp_path / "out", options, false_alarm_rate=0.2, good=good, exit_after_idle=0.5, log=lambda line: None, **FAST)
    assert len(rows(tmp_path / "out")) == 3
    with pytest.raises(ConfigError, match="rolling bank"):
        watch_folder(inbox, tmp_path / "out2", options, exit_after_idle=0.5, log=lambda line: None, **FAST)


def _mixed_aspect_stream(count: int = 9) -> list[np.ndarray]:
    """Textures at 64 x 64, every third one 64 x 128 (the first among them): at image_size=64
    the square ones go in at 64 x 64, the wide ones at 32 x 96 (their own aspect)."""
    rng = np.random.default_rng(7)
    return [(rng.random((64, 128 if k % 3 == 0 else 64, 3)) * 255).astype(np.uint8) for k in range(count)]


def test_rolling_bank_scores_a_stream_of_mixed_aspects_at_the_first_batchs_input_shape():
    # Each image was resized to its own aspect, so a wide image after a square first batch (or the
    # other way round) gave another feature grid and the bank crashed with a tensor shape error.
    from PIL import Image

    images = _mixed_aspect_stream()
    scorer = build_scorer(ONE_THREAD, false_alarm_rate=0.2, bank_size=10, min_bank=4, log=lambda line: None)
    got = [row for k, image in enumerate(images) for row in scorer.score(f"i{k}", image, 0.0)]
    height, width = scorer.shape
    assert scorer.shape == scorer.musc.input_shape(images[:4]) == (64, 64)  # the first batch's median aspect
    assert [row.key for row in got] == [f"i{k}" for k in range(9)] and all(np.isfinite(row.score) for row in got)
    # the same as a stream whose images were resized to that shape beforehand
    resized = [np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)) for image in images]
    same = build_scorer(ONE_THREAD, false_alarm_rate=0.2, bank_size=10, min_bank=4, log=lambda line: None)
    expected = [row for k, image in enumerate(resized) for row in same.score(f"i{k}", image, 0.0)]
    for a, b in zip(got, expected):
        assert a.score == pytest.approx(b.score, abs=1e-6) and a.anomalous == b.anomalous
        assert np.allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)


def test_rolling_bank_rebuilt_after_a_restart_keeps_one_input_shape():
    images = _mixed_aspect_stream()
    scorer = build_scorer(ONE_THREAD, false_alarm_rate=0.2, bank_size=10, min_bank=4, log=lambda line: None)
    normal = [images[0], images[3], images[6], images[1]]  # mostly wide: the wide input
    scorer.restore([(f"i{k}", image) for k, image in enumerate(normal)], any_rows=True)
    assert scorer.started and scorer.shape == (32, 96)
    rows = [row for k, image in enumerate(images[7:] + images[:1]) for row in scorer.score(f"j{k}", image, 0.0)]
    assert len(rows) == 3 and all(np.isfinite(row.score) for row in rows)


def test_rolling_bank_of_one_image_size_scores_as_before(monkeypatch):
    # before the input shape was fixed each image went in at its own shape: for a stream of one
    # size that is the same shape, so the scores must not move
    from defectscope.methods.rolling import ZeroShotScorer

    images, _ = synthetic_images(8, kind="texture", size=64, seed=9, defective=(6,), defect="spot")
    images = [np.concatenate([image, image[:, ::-1]], axis=1) for image in images]  # 64 x 128: not the square input
    new = build_scorer(ONE_THREAD, false_alarm_rate=0.2, bank_size=10, min_bank=4, log=lambda line: None)
    got = [row for k, image in enumerate(images) for row in new.score(f"i{k}", image, 0.0)]
    assert new.shape == new.musc.input_shape(images[:1]) != (64, 64)

    def own_shape(self, image):  # the earlier per-image features
        sets, self.grid, _ = self.musc.feature_sets([image], native_grids=self.musc.config.native_grids)
        return [s[0] for s in sets]

    monkeypatch.setattr(ZeroShotScorer, "features", own_shape)
    old = build_scorer(ONE_THREAD, false_alarm_rate=0.2, bank_size=10, min_bank=4, log=lambda line: None)
    expected = [row for k, image in enumerate(images) for row in old.score(f"i{k}", image, 0.0)]
    assert [row.score for row in got] == [row.score for row in expected]
    assert all(np.array_equal(a.anomaly_map, b.anomaly_map) for a, b in zip(got, expected))
    assert [row.anomalous for row in got] == [row.anomalous for row in expected]
