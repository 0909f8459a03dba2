"""Tests for defectscope.report: atomic outputs, overlays, tables and the HTML report."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectscope.errors import DefectscopeError
from defectscope.report import (
    ReportEntry,
    atomic_write_bytes,
    atomic_write_text,
    batch_color_range,
    heatmap_overlay,
    make_thumbnail,
    metrics_markdown,
    prepare_output_dir,
    resize_map,
    save_png,
    staged_output,
    write_report,
    write_scores_csv,
)
from defectscope.report.atomic import DEFAULT_MARKER


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# ---- tables -------------------------------------------------------------------------------


def test_scores_csv_sorted_ranked_ties_by_path(tmp_path: Path) -> None:
    paths = ["c.png", "b.png", "a.png", "d.png"]
    scores = np.array([0.5, 0.9, 0.5, 0.1])
    out = write_scores_csv(tmp_path / "scores.csv", paths, scores, labels=["good", "crack", None, "good"],
                           extra_columns={"category": ["x", "y", "z", "w"]})
    rows = _read_csv(out)
    assert list(rows[0]) == ["path", "score", "rank", "label", "category"]
    assert [r["path"] for r in rows] == ["b.png", "a.png", "c.png", "d.png"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    assert [r["label"] for r in rows] == ["crack", "", "good", "good"]
    assert [r["category"] for r in rows] == ["y", "z", "x", "w"]
    assert float(rows[0]["score"]) == 0.9


def test_scores_csv_rejects_mismatch_and_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_scores_csv(tmp_path / "s.csv", ["a", "b"], [1.0])
    with pytest.raises(ValueError, match="b.png"):
        write_scores_csv(tmp_path / "s.csv", ["a.png", "b.png"], [1.0, float("nan")])
    assert not (tmp_path / "s.csv").exists()


def test_metrics_markdown_mean_row_and_na() -> None:
    metrics = {
        "bottle": {"pixel_auroc": 0.9, "image_auroc": 1.0, "pixel_iou_auto": 0.5},
        "ca|ble": {"image_auroc": 0.8, "pixel_auroc": None},
    }
    table = metrics_markdown(metrics)
    lines = table.strip().splitlines()
    assert lines[0] == "| category | image_auroc | pixel_auroc | pixel_iou_auto |"
    assert len(lines) == 5
    assert lines[2] == "| bottle | 100.0 | 90.0 | 50.0 |"
    assert lines[3] == "| ca\\|ble | 80.0 | n/a | n/a |"
    assert lines[4] == "| **mean** | 90.0 | 90.0 | 50.0 |"


def test_metrics_markdown_all_undefined_column() -> None:
    table = metrics_markdown({"a": {"image_auroc": 0.75, "pixel_aupro": None}})
    assert table.strip().splitlines()[-1] == "| **mean** | 75.0 | n/a |"


# ---- atomic writes and output folders ------------------------------------------------------


def test_atomic_write_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]
    assert target.stat().st_mode & 0o777 != 0o600 or os.name != "posix"


def test_atomic_write_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_staged_output_commits_on_success(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_output(out, overwrite=False) as staging:
        assert staging.name.startswith(".run.partial-")
        assert not out.exists()
        (staging / "scores.csv").write_text("x")
    assert (out / "scores.csv").read_text() == "x"
    assert json.loads((out / DEFAULT_MARKER).read_text())["tool"] == "defectscope"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_staged_output_exception_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError):
        with staged_output(out, overwrite=False) as staging:
            (staging / "half.png").write_bytes(b"\x89PNG")
            raise RuntimeError("crash mid-run")
    assert list(tmp_path.iterdir()) == []


def test_staged_output_exception_keeps_previous_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_output(out) as staging:
        (staging / "a.txt").write_text("old run")
    with pytest.raises(KeyboardInterrupt):
        with staged_output(out, overwrite=True) as staging:
            (staging / "a.txt").write_text("new run")
            raise KeyboardInterrupt
    assert (out / "a.txt").read_text() == "old run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_staged_output_refuses_non_empty_without_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_output(out) as staging:
        (staging / "old.txt").write_text("previous")
    with pytest.raises(DefectscopeError, match="overwrite"):
        with staged_output(out, overwrite=False):
            pytest.fail("body must not run")
    assert (out / "old.txt").exists()
    with staged_output(out, overwrite=True) as staging:
        (staging / "new.txt").write_text("fresh")
    assert sorted(p.name for p in out.iterdir()) == [DEFAULT_MARKER, "new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_staged_output_uses_existing_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with staged_output(out) as staging:
        (staging / "a.txt").write_text("a")
    assert (out / "a.txt").exists()


def test_overwrite_never_deletes_foreign_folder(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "part.png").write_bytes(b"not ours")
    with pytest.raises(DefectscopeError, match="did not write"):
        with staged_output(images, overwrite=True):
            pass
    with pytest.raises(DefectscopeError):
        prepare_output_dir(images, overwrite=True)
    assert (images / "part.png").read_bytes() == b"not ours"


def test_prepare_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    folder = prepare_output_dir(out, overwrite=False)
    assert folder.marker.exists() and not folder.replaced
    (out / "x.txt").write_text("x")
    with pytest.raises(DefectscopeError):
        prepare_output_dir(out, overwrite=False)
    folder = prepare_output_dir(out, overwrite=True)
    assert folder.replaced and [p.name for p in out.iterdir()] == [DEFAULT_MARKER]
    file_path = tmp_path / "file"
    file_path.write_text("")
    with pytest.raises(DefectscopeError, match="not a folder"):
        prepare_output_dir(file_path, overwrite=True)


# ---- overlays ----------------------------------------------------------------------------


def test_resize_map_shapes_and_values() -> None:
    anomaly_map = np.arange(16, dtype=np.float64).reshape(4, 4)
    resized = resize_map(anomaly_map, (8, 12))
    assert resized.shape == (8, 12) and resized.dtype == np.float32
    assert resized.min() >= 0 and resized.max() <= 15
    stack = resize_map(np.stack([anomaly_map, anomaly_map * 2]), (3, 5))
    assert stack.shape == (2, 3, 5)
    np.testing.assert_allclose(resize_map(np.full((5, 5), 2.5), (7, 3)), 2.5)


def test_resize_map_matches_torch_bilinear() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    anomaly_map = rng.random((2, 16, 16)).astype(np.float32)
    for size in [(64, 48), (16, 16), (7, 9)]:
        expected = torch.nn.functional.interpolate(
            torch.from_numpy(anomaly_map)[None], size=size, mode="bilinear", align_corners=False
        )[0].numpy()
        np.testing.assert_allclose(resize_map(anomaly_map, size), expected, atol=1e-5)


def test_heatmap_overlay_hot_spot_changes_colour() -> None:
    image = np.full((64, 96, 3), 128, dtype=np.uint8)
    anomaly_map = np.zeros((16, 16), dtype=np.float32)
    anomaly_map[2:6, 10:14] = 1.0
    overlay = heatmap_overlay(image, anomaly_map, vmin=0.0, vmax=1.0)
    assert overlay.shape == (64, 96, 3) and overlay.dtype == np.uint8
    hot = overlay[14:18, 70:74].astype(int).mean(axis=(0, 1))
    cold = overlay[48:60, 6:18].astype(int).mean(axis=(0, 1))
    assert np.abs(hot - cold).sum() > 60
    assert hot[0] > hot[2] + 40 and cold[2] > cold[0]
    gray = heatmap_overlay(image[:, :, 0], anomaly_map, vmin=0.0, vmax=1.0, alpha=0.0)
    np.testing.assert_array_equal(gray, image)


def test_heatmap_overlay_shared_scale_and_mask_contour() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    weak = np.full((8, 8), 0.1, dtype=np.float32)
    strong = np.full((8, 8), 0.9, dtype=np.float32)
    weak_overlay = heatmap_overlay(image, weak, vmin=0.0, vmax=1.0, alpha=1.0)
    strong_overlay = heatmap_overlay(image, strong, vmin=0.0, vmax=1.0, alpha=1.0)
    assert not np.array_equal(weak_overlay, strong_overlay)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    with_mask = heatmap_overlay(image, weak, vmin=0.0, vmax=1.0, mask=mask, contour_rgb=(0, 255, 0))
    assert (with_mask == (0, 255, 0)).all(axis=2).sum() > 0
    assert (with_mask[0, 0] != (0, 255, 0)).any() and (with_mask[16, 16] != (0, 255, 0)).any()


def test_batch_color_range_and_save_png(tmp_path: Path) -> None:
    maps = np.stack([np.zeros((8, 8)), np.ones((8, 8))]).astype(np.float32)
    vmin, vmax = batch_color_range(maps, 0.0, 100.0)
    assert (vmin, vmax) == (0.0, 1.0)
    constant_min, constant_max = batch_color_range(np.zeros((2, 4, 4)))
    assert constant_max > constant_min
    image = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    save_png(tmp_path / "o.png", image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), image)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_make_thumbnail_keeps_aspect_never_enlarges() -> None:
    image = np.zeros((300, 600, 3), dtype=np.uint8)
    assert make_thumbnail(image, 160).shape == (80, 160, 3)
    assert make_thumbnail(image[:50, :100], 160).shape == (50, 100, 3)
    assert make_thumbnail(np.ones((320, 320), dtype=bool), 160).dtype == bool


# ---- HTML report --------------------------------------------------------------------------


def _entries() -> list[ReportEntry]:
    rng = np.random.default_rng(0)
    names = ["dir/a<b>&.png", 'dir/q"uote.png', "dir/plain.png"]
    scores = [0.2, 0.9, 0.5]
    entries = []
    for rank, index in enumerate(np.argsort(scores)[::-1], start=1):
        image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), dtype=bool) if index == 1 else None
        entries.append(ReportEntry(path=names[index], score=scores[index], rank=rank, thumbnail=image,
                                   overlay=image, mask=mask, label="crack" if index == 1 else None))
    return entries


def test_html_report_self_contained_and_escaped(tmp_path: Path) -> None:
    out = write_report(
        tmp_path / "report.html",
        title="Run <1>",
        entries=_entries(),
        settings={"method": "musc", "backbone": "effnet", "image_size": 256, "layers": [1, 2],
                  "url": "https://example.com/x"},
        skipped=[("bad<file>.png", "truncated image"), {"path": "cmyk.tif", "reason": "unreadable"}],
        summary={"images": 3, "flagged": 1},
        metrics={"bottle": {"image_auroc": 0.987, "pixel_auroc": None}},
        communities=[{"id": 0, "members": ["dir/a<b>&.png"], "image_png": None}],
        color_range=(0.0, 1.0),
    )
    text = out.read_text(encoding="utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)
    assert "<link" not in text and "<script" not in text
    assert "a<b>&.png" not in text and "a&lt;b&gt;&amp;.png" in text
    assert 'q"uote' not in text and "q&quot;uote.png" in text
    assert "Run &lt;1&gt;" in text
    assert "bad&lt;file&gt;.png" in text and "truncated image" in text and "cmyk.tif" in text
    assert "Skipped files (2)" in text
    assert "98.7" in text and "n/a" in text and "Community 0" in text
    jpegs = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', text)
    pngs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(jpegs) == 6 and len(pngs) == 2
    thumb = Image.open(io.BytesIO(base64.b64decode(jpegs[0])))
    assert thumb.size == (160, 120)
    grid = text[text.index('id="images"'):]
    order = [grid.index(name) for name in ("q&quot;uote.png", "plain.png", "a&lt;b&gt;&amp;.png")]
    assert order == sorted(order)


def test_html_report_empty_skipped_shows_none(tmp_path: Path) -> None:
    text = write_report(tmp_path / "r.html", title="t", entries=[], settings={}, skipped=[]).read_text()
    assert "Skipped files (0)" in text
    assert re.search(r'id="skipped">.*?<p class="none">none</p>', text)


def test_report_leads_with_verdict_count_and_badges(tmp_path: Path) -> None:
    entries = _entries()
    for entry, verdict in zip(entries, ("anomalous", "normal", "anomalous")):
        entry.verdict = verdict
    text = write_report(tmp_path / "r.html", title="t", entries=entries, settings={"threshold_rule": "rule <x>"},
                        skipped=[]).read_text()
    assert "2 of 3 parts anomalous" in text and "rule &lt;x&gt;" in text
    assert "to review" not in text
    entries[1].verdict = "review"
    three = write_report(tmp_path / "t.html", title="t", entries=entries, settings={"review_threshold": 0.5}, skipped=[]).read_text()
    assert "2 of 3 parts anomalous, 1 to review" in three and three.count('class="verdict review"') == 1
    assert text.index("parts anomalous") < text.index('id="settings"')
    assert text.count('class="verdict anomalous"') == 2 and text.count('class="verdict normal"') == 1
    plain = write_report(tmp_path / "p.html", title="t", entries=_entries(), settings={}, skipped=[]).read_text()
    assert "parts anomalous" not in plain


def test_scores_csv_verdict_columns_come_before_label(tmp_path: Path) -> None:
    out = write_scores_csv(tmp_path / "s.csv", ["a", "b"], np.array([0.1, 0.9]), labels=["good", "bad"],
                           verdicts=["normal", "anomalous"], verdict_scores=[1.5, float("nan")], extra_columns={"map": ["ma", "mb"]})
    rows = _read_csv(out)
    assert list(rows[0]) == ["path", "score", "rank", "verdict", "verdict_score", "label", "map"]
    assert [(r["path"], r["verdict"], r["verdict_score"]) for r in rows] == [("b", "anomalous", ""), ("a", "normal", "1.5")]
