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
from defectscope.report.atomic import DEFAULT_MARKER, json_text, write_marker


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


def _strict(text: str):
    def refuse(constant: str):
        raise ValueError(f"not standard JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_json_files_hold_no_infinity_or_nan(tmp_path: Path) -> None:
    """A batch fact can be inf (no finite gate ratio) and a metric nan (undefined); the files
    others read are standard JSON: those values are null, everything else unchanged."""
    payload = {"ratio": float("inf"), "auroc": float("nan"), "nested": [1.5, float("-inf"), {"a": (2, float("nan"))}], "path": Path("x")}
    assert _strict(json_text(payload)) == {"ratio": None, "auroc": None, "nested": [1.5, None, {"a": [2, None]}], "path": "x"}
    with pytest.raises(ValueError):
        _strict(json.dumps(payload, default=str))  # what plain json.dumps writes
    marker = write_marker(tmp_path, data={"settings": {"gate": float("inf")}})
    assert _strict(marker.read_text())["settings"] == {"gate": None}


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


def _lead(text: str) -> str:
    """The plain-words decision line of a report, tags removed."""
    match = re.search(r'<p class="lead" id="verdicts">(.*?)</p>', text)
    assert match, "the report has no decision line"
    return re.sub(r"<[^>]+>", "", match.group(1))


def test_report_leads_with_verdict_count_and_badges(tmp_path: Path) -> None:
    entries = _entries()
    for entry, verdict in zip(entries, ("anomalous", "normal", "anomalous")):
        entry.verdict = verdict
    text = write_report(tmp_path / "r.html", title="t", entries=entries, settings={"threshold_rule": "rule <x>"},
                        skipped=[]).read_text()
    assert _lead(text) == "2 of 3 parts anomalous, 1 normal" and "rule &lt;x&gt;" in text
    entries[1].verdict = "review"
    three = write_report(tmp_path / "t.html", title="t", entries=entries, settings={"review_threshold": 0.5}, skipped=[]).read_text()
    assert _lead(three) == "2 of 3 parts anomalous, 1 to review, 0 normal" and three.count('class="verdict review"') == 1
    # A run with a review band says how many went to review even when none did.
    entries[1].verdict = "normal"
    band = write_report(tmp_path / "b.html", title="t", entries=entries, settings={"review_threshold": 0.5}, skipped=[]).read_text()
    assert _lead(band) == "2 of 3 parts anomalous, 0 to review, 1 normal"
    assert text.count('class="verdict anomalous"') == 2 and text.count('class="verdict normal"') == 1
    plain = write_report(tmp_path / "p.html", title="t", entries=_entries(), settings={}, skipped=[]).read_text()
    assert "parts anomalous" not in plain and "no verdict" in plain


def _judged_entries() -> list[ReportEntry]:
    """Six parts whose ranking score disagrees with the verdict: the top score is normal."""
    rng = np.random.default_rng(1)
    rows = [  # path, ranking score, verdict score, verdict
        ("a.png", 0.95, 1.10, "normal"), ("b.png", 0.40, 1.60, "anomalous"), ("c.png", 0.60, 1.90, "anomalous"),
        ("d.png", 0.70, 1.30, "review"), ("e.png", 0.20, 1.00, "normal"), ("f.png", 0.10, 1.35, "review"),
    ]
    ranks = {path: rank for rank, (path, *_) in enumerate(sorted(rows, key=lambda r: -r[1]), start=1)}
    return [
        ReportEntry(path=path, score=score, rank=ranks[path], thumbnail=rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
                    overlay=rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), verdict=verdict, verdict_score=value)
        for path, score, value, verdict in rows
    ]


JUDGED_SETTINGS = {"threshold": 1.5, "review_threshold": 1.2, "threshold_applies_to": "verdict_score",
                   "threshold_rule": "label-free, false-alarm budget 0.05: <technical>", "false_alarm_rate": 0.05,
                   "review_budget": 0.2, "good": None, "method": "musc", "backbone": "effnet"}


def test_report_puts_the_decision_and_histogram_before_the_parts_and_settings_last(tmp_path: Path) -> None:
    text = write_report(tmp_path / "r.html", title="t", entries=_judged_entries(), settings=JUDGED_SETTINGS,
                        skipped=[("x.png", "unreadable")], metrics={"c": {"image_auroc": 0.9}}).read_text()
    assert _lead(text) == "2 of 6 parts anomalous, 2 to review, 2 normal"
    positions = [text.index(marker) for marker in ('id="verdicts"', 'class="rule"', "how the threshold was set", "<svg",
                                                   'id="images"', 'id="metrics"', 'id="skipped"', 'id="settings"')]
    assert positions == sorted(positions)
    # The plain sentence, then the technical rule behind a disclosure, then the settings collapsed.
    rule = re.search(r'<p class="rule">(.*?)</p>', text).group(1)
    assert "above 1.5" in rule and "5 %" in rule and "this batch alone" in rule and "between 1.2 and 1.5" in rule
    assert "<technical>" not in text and "&lt;technical&gt;" in text[text.index("<details"):text.index("<svg")]
    assert re.search(r'id="settings"><h2>Settings</h2><details><summary>', text)
    assert "could not be read" in text[:text.index('id="images"')]
    assert "<script" not in text


def _svg_numbers(svg: str, pattern: str) -> list[float]:
    return [float(value) for value in re.findall(pattern, svg)]


def test_histogram_draws_the_threshold_and_the_review_band_where_the_verdicts_change(tmp_path: Path) -> None:
    text = write_report(tmp_path / "r.html", title="t", entries=_judged_entries(), settings=JUDGED_SETTINGS, skipped=[]).read_text()
    svg = text[text.index("<svg"):text.index("</svg>")]
    (threshold,) = _svg_numbers(svg, r'<line class="threshold" x1="([\d.]+)"')
    (edge,) = _svg_numbers(svg, r'<line class="review-edge" x1="([\d.]+)"')
    assert "anomalous above 1.5" in svg and "review above 1.2" in svg
    bars = {kind: _svg_numbers(svg, rf'<rect class="bar {kind}" x="([\d.]+)"') for kind in ("anomalous", "review", "normal")}
    assert len(bars["anomalous"]) == 2 and len(bars["review"]) == 2 and len(bars["normal"]) == 2
    assert edge < threshold
    assert all(x >= threshold - 1 for x in bars["anomalous"])
    assert all(edge - 1 <= x <= threshold for x in bars["review"])
    assert all(x < edge for x in bars["normal"])
    # Each bar sits at its verdict score on the axis that the tick labels state.
    ticks = re.findall(r'<text x="([\d.]+)" y="\d+" text-anchor="middle">([\d.]+)</text>', svg)
    (x0, v0), (x1, v1) = [(float(x), float(v)) for x, v in (ticks[0], ticks[-1])]
    assert threshold == pytest.approx(x0 + (1.5 - v0) / (v1 - v0) * (x1 - x0), abs=1.0)


def test_cards_are_ordered_so_that_order_and_verdict_agree(tmp_path: Path) -> None:
    text = write_report(tmp_path / "r.html", title="t", entries=_judged_entries(), settings=JUDGED_SETTINGS, skipped=[]).read_text()
    grid = text[text.index('id="images"'):]
    cards = re.findall(r'<figure class="card (\w+)" data-verdict="\w+">.*?verdict score ([\d.]+).*?<span title="([^"]+)">', grid)
    assert [path for *_, path in cards] == ["c.png", "b.png", "f.png", "d.png", "a.png", "e.png"]
    assert [verdict for verdict, *_ in cards] == ["anomalous"] * 2 + ["review"] * 2 + ["normal"] * 2
    assert [float(value) for _, value, _ in cards] == [1.9, 1.6, 1.35, 1.3, 1.1, 1.0]
    # The ranking score is still there, second: a normal part can rank first without confusion.
    card_a = grid[grid.index('title="a.png"') - 700:grid.index('title="a.png"')]
    assert "ranking score 0.95, rank 1 of 6" in card_a


def test_a_verdict_that_is_no_cut_on_a_number_draws_no_threshold_and_says_what_decided(tmp_path: Path) -> None:
    entries = _judged_entries()
    for entry in entries:
        entry.verdict_score = float("nan")
        entry.verdict = "anomalous" if entry.score > 0.5 else "normal"
    settings = {"threshold": 0.01, "threshold_applies_to": "nfa", "threshold_rule": "a contrario: NFA <= 0.01",
                "false_alarm_rate": 0.05, "method": "uflow", "review_threshold": None}
    text = write_report(tmp_path / "r.html", title="t", entries=entries, settings=settings, skipped=[]).read_text()
    assert _lead(text) == "3 of 6 parts anomalous, 3 normal"
    rule = re.search(r'<p class="rule">(.*?)</p>', text).group(1)
    assert "region" in rule and "not a cut on one score" in rule
    svg = text[text.index("<svg"):text.index("</svg>")]
    assert 'class="threshold"' not in svg and 'class="review-edge"' not in svg
    assert len(re.findall(r'<rect class="bar ', svg)) >= 2 and "nan" not in svg.lower()
    grid = text[text.index('id="images"'):]
    assert "verdict score" not in grid and "score 0.95" in grid
    order = [grid.index(f'title="{name}"') for name in ("a.png", "d.png", "c.png", "b.png", "e.png", "f.png")]
    assert order == sorted(order)


def test_threshold_sentence_follows_the_settings() -> None:
    from defectscope.report.html import threshold_sentence

    assert threshold_sentence({}) == ""
    good = threshold_sentence({"threshold": 2.0, "good": "/data/good", "false_alarm_rate": 0.1})
    assert "known-good images in /data/good" in good and "10 %" in good and "review" not in good
    trained = threshold_sentence({"threshold": 0.7, "good": None, "method": "prn", "false_alarm_rate": 0.05})
    assert "training images" in trained and "this batch" not in trained
    free = threshold_sentence({"threshold": 3.0, "good": None, "method": "musc", "false_alarm_rate": 0.05,
                               "review_threshold": 2.5, "review_budget": 0.2})
    assert "this batch alone" in free and "between 2.5 and 3" in free and "at most 20 % of the batch" in free
    assert "assumes" not in good


def test_threshold_sentence_states_the_guard_band_assumption() -> None:
    """Too few good images: the plain sentence says the cut lies above the highest good score and on what assumption."""
    import numpy as np

    from defectscope.methods.verdict import conformal_threshold
    from defectscope.report.html import threshold_sentence

    cut = conformal_threshold(np.random.default_rng(5).gumbel(0.6, 0.02, size=24), 0.05)
    sentence = threshold_sentence({"threshold": cut.value, "review_threshold": cut.review_from, "threshold_rule": cut.rule,
                                   "good": "/data/good", "false_alarm_rate": 0.05})
    assert "above their highest score" in sentence and "assumes good parts do not score much higher" in sentence
    assert "go to review" in sentence
    plenty = conformal_threshold(np.random.default_rng(5).gumbel(0.6, 0.02, size=60), 0.05)
    assert "assumes" not in threshold_sentence({"threshold": plenty.value, "threshold_rule": plenty.rule, "good": "/g",
                                                "false_alarm_rate": 0.05})


def test_batch_outputs_write_jpeg_overlays_png_masks_and_verdict_scores_on_cards(tmp_path: Path) -> None:
    from review_helpers import make_run

    out, paths = make_run(tmp_path, verdict_scores=np.array([1.00, 1.20, 1.50, 0.90, 1.30, 1.10]), threshold=1.25)
    rows = _read_csv(out / "scores.csv")
    assert all(row["map"].endswith(".jpg") for row in rows)
    for row in rows:
        with Image.open(out / row["map"]) as overlay:
            assert overlay.format == "JPEG" and overlay.size == (48, 48)
        with Image.open(out / "masks" / (Path(row["map"]).stem + ".png")) as mask:
            assert mask.format == "PNG"
    text = (out / "report.html").read_text()
    assert _lead(text) == "2 of 6 parts anomalous, 4 normal"
    grid = text[text.index('id="images"'):]
    shown = [float(v) for v in re.findall(r"verdict score ([\d.]+)", grid)]
    assert shown == [1.5, 1.3, 1.2, 1.1, 1.0, 0.9]
    assert len(re.findall(r'<line class="threshold"', text)) == 1


def test_scores_csv_verdict_columns_come_before_label(tmp_path: Path) -> None:
    out = write_scores_csv(tmp_path / "s.csv", ["a", "b"], np.array([0.1, 0.9]), labels=["good", "bad"],
                           verdicts=["normal", "anomalous"], verdict_scores=[1.5, float("nan")], extra_columns={"map": ["ma", "mb"]})
    rows = _read_csv(out)
    assert list(rows[0]) == ["path", "score", "rank", "verdict", "verdict_score", "label", "map"]
    assert [(r["path"], r["verdict"], r["verdict_score"]) for r in rows] == [("b", "anomalous", ""), ("a", "normal", "1.5")]


def test_files_written_without_sync_are_made_durable_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from defectscope.report import atomic

    written = [atomic_write_bytes(tmp_path / "a" / f"{i}.bin", bytes([i]) * 10, sync=False) for i in range(3)]
    assert [p.read_bytes() for p in written] == [bytes([i]) * 10 for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["0.bin", "1.bin", "2.bin"]
    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(atomic, "_syncfs", lambda folder: False)
    atomic.sync_files(written)
    assert {Path(p).name for p in synced} >= {"0.bin", "1.bin", "2.bin", "a"}
    synced.clear()
    monkeypatch.setattr(atomic, "_syncfs", lambda folder: True)
    atomic.sync_files(written)
    assert synced == []
