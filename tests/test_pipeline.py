"""End to end on synthetic data: score a folder, evaluate a category, CLI behaviour."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from defectscope.cli import app
from defectscope.data.synthetic import synthetic_images, write_mvtec_category
from defectscope.errors import ConfigError, DefectscopeError
from defectscope.methods.musc import MuSc, MuScConfig
from defectscope.pipeline import RunOptions, evaluate_dataset, score_folder
from image_helpers import save_images, write_large_png

FAST = {"image_size": 64}


def _write_folder(folder: Path, count: int = 12, defective: tuple[int, ...] = (5,), seed: int = 3) -> list[Path]:
    images, _ = synthetic_images(count, kind="texture", size=96, defective=defective, seed=seed, defect="spot")
    return save_images(folder, images)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_musc_ranks_the_planted_defect_first():
    images, masks = synthetic_images(16, kind="texture", size=96, defective=(7,), seed=11, defect="blotch")
    result = MuSc(MuScConfig(image_size=96)).predict(images)
    assert int(np.argmax(result.image_scores)) == 7
    assert np.isfinite(result.anomaly_maps).all()
    peak = np.unravel_index(np.argmax(result.anomaly_maps[7]), result.anomaly_maps[7].shape)
    assert masks[7][peak]


def test_musc_small_batch_warns_and_single_image_is_refused():
    images, _ = synthetic_images(3, kind="object", size=64, seed=1)
    with pytest.warns(UserWarning, match="more reliable"):
        result = MuSc(MuScConfig(**FAST)).predict(images)
    assert np.isfinite(result.image_scores).all() and np.isfinite(result.anomaly_maps).all()
    with pytest.raises(ConfigError, match="at least 2 images"):
        MuSc(MuScConfig(**FAST)).predict(images[:1])


def test_score_folder_writes_outputs_and_leaves_inputs_alone(tmp_path):
    folder = tmp_path / "parts"
    _write_folder(folder)
    before = _digest(folder)
    out = tmp_path / "out"
    result = score_folder(folder, out, RunOptions(image_size=64))
    assert _digest(folder) == before
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [int(r["rank"]) for r in rows] == list(range(1, 13))
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert rows[0]["path"].endswith("part_05.png")
    assert len(list((out / "maps").glob("*.jpg"))) == 12
    html = (out / "report.html").read_text()
    assert "part_05.png" in html and "musc" in html
    assert result.settings["method"] == "musc"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert list(rows[0]) == ["path", "score", "rank", "verdict", "verdict_score", "map", "status"]
    verdicts = {r["path"]: r["verdict"] for r in rows}
    assert set(verdicts.values()) <= {"anomalous", "review", "normal"}
    assert [verdicts[p] for p in result.paths] == result.verdicts()
    settings = json.loads((out / "settings.json").read_text())
    assert settings["threshold"] == result.threshold and settings["threshold_rule"] == result.threshold_rule
    # the several-looks gate's decision on this batch is on record beside the settings
    facts = settings["batch_facts"]
    assert facts["several_looks"] == result.extras["several_looks"] and facts["interval"] == result.extras["interval"]
    assert 0.0 < facts["embedding_agreement"] <= 1.0
    flagged, review = int(result.is_anomalous.sum()), int(result.needs_review.sum())
    assert review <= 0.2 * 12  # the default review budget
    assert f"{flagged} of 12 parts anomalous" in html and html.count('class="verdict ') == 12


@pytest.mark.filterwarnings("ignore:mutual scoring of only")
def test_a_banked_batch_records_the_groups_decision_in_settings(tmp_path):
    """On the reference bank settings.json's batch_facts carry the groups statistic and the decision."""
    folder = tmp_path / "parts"
    _write_folder(folder)
    result = score_folder(folder, tmp_path / "out", RunOptions(image_size=64, method_options={"max_references": 4}))
    facts = json.loads((tmp_path / "out" / "settings.json").read_text())["batch_facts"]
    assert facts["group_separation"] == pytest.approx(result.extras["group_separation"]) and facts["group_separation"] >= 0.0
    assert 0.0 <= facts["minor_group"] <= 0.5 and isinstance(facts["several_looks"], bool)
    threshold = MuScConfig().looks_groups
    expected = facts["embedding_agreement"] < MuScConfig().looks_gate and facts["group_separation"] >= threshold
    assert facts["several_looks"] == expected


def test_existing_output_is_not_overwritten_without_flag(tmp_path):
    folder = tmp_path / "parts"
    _write_folder(folder, count=6)
    out = tmp_path / "out"
    score_folder(folder, out, RunOptions(image_size=64))
    first = _digest(out)
    with pytest.raises(DefectscopeError, match="overwrite"):
        score_folder(folder, out, RunOptions(image_size=64))
    assert _digest(out) == first
    score_folder(folder, out, RunOptions(image_size=64, overwrite=True))


def test_unreadable_image_stops_run_or_is_skipped_and_listed(tmp_path):
    folder = tmp_path / "parts"
    _write_folder(folder, count=6)
    broken = folder / "broken.png"
    broken.write_bytes((folder / "part_00.png").read_bytes()[:60])
    before = _digest(folder)
    with pytest.raises(DefectscopeError, match="broken.png"):
        score_folder(folder, tmp_path / "out", RunOptions(image_size=64))
    assert not (tmp_path / "out").exists()
    score_folder(folder, tmp_path / "out", RunOptions(image_size=64, skip_unreadable=True))
    assert _digest(folder) == before
    rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
    skipped = [r for r in rows if r["status"].startswith("skipped")]
    assert len(skipped) == 1 and skipped[0]["path"].endswith("broken.png")
    assert skipped[0]["verdict"] == "" and skipped[0]["map"] == ""
    assert "broken.png" in (tmp_path / "out" / "report.html").read_text()
    assert "broken.png" in (tmp_path / "out" / "skipped.csv").read_text()


def test_evaluate_writes_metrics_json_and_table(tmp_path):
    root = write_mvtec_category(tmp_path / "widget", kind="object", n_train=2, n_test_good=8, n_test_defect=4, size=96, seed=5)
    metrics = evaluate_dataset(root, tmp_path / "eval", RunOptions(image_size=64))
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved == metrics
    values = saved["widget"]
    assert set(values) >= {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"}
    assert values["pixel_auroc"] > 0.8 and values["pixel_aupro"] > 0.5
    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert "widget" in table and "mean" in table
    assert "verdict_false_alarm_rate" in table and "verdict_recall" in table
    rows = list(csv.DictReader((tmp_path / "eval" / "widget" / "scores.csv").open()))
    assert list(rows[0])[:6] == ["path", "score", "rank", "verdict", "verdict_score", "label"]
    # the image metrics and verdict rates are those of the scores and verdicts written
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = [r["label"] != "good" for r in rows]
    scores = [float(r["score"]) for r in rows]
    assert values["image_auroc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-9)
    assert values["image_ap"] == pytest.approx(average_precision_score(truth, scores), abs=1e-9)
    flagged_good = [r["verdict"] == "anomalous" for r in rows if r["label"] == "good"]
    flagged_bad = [r["verdict"] == "anomalous" for r in rows if r["label"] != "good"]
    assert values["verdict_false_alarm_rate"] == pytest.approx(sum(flagged_good) / len(flagged_good))
    assert values["verdict_recall"] == pytest.approx(sum(flagged_bad) / len(flagged_bad))
    assert (tmp_path / "eval" / "widget" / "report.html").is_file()


def test_evaluate_category_without_ground_truth_and_all_normal(tmp_path):
    root = tmp_path / "plain_cat"
    (root / "train" / "good").mkdir(parents=True)
    _write_folder(root / "test" / "good", count=6, defective=())
    metrics = evaluate_dataset(root, tmp_path / "eval", RunOptions(image_size=64))["plain_cat"]
    assert metrics["image_auroc"] is None
    assert metrics["pixel_auroc"] is None and metrics["pixel_aupro"] is None


runner = CliRunner()


def test_cli_score_and_clear_error(tmp_path):
    folder = tmp_path / "parts"
    _write_folder(folder, count=6)
    ok = runner.invoke(app, ["score", str(folder), "--out", str(tmp_path / "o"), "--image-size", "64", "--threads", "2"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "o" / "report.html").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = runner.invoke(app, ["score", str(empty), "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2
    assert "no images found" in bad.output and "Traceback" not in bad.output


def test_cli_refuses_or_skips_oversized_images_in_one_sentence(tmp_path):
    # Before the header check a 20000 x 20000 PNG ended `score` with a Pillow traceback, with or
    # without --skip-unreadable, and a 12000 x 12000 one was decoded.
    folder = tmp_path / "parts"
    _write_folder(folder, count=6)
    write_large_png(folder / "huge.png", 20000, 20000, header_only=True)
    write_large_png(folder / "large.png", 12000, 12000)
    bad = runner.invoke(app, ["score", str(folder), "--out", str(tmp_path / "o"), "--image-size", "64"])
    assert bad.exit_code == 2, bad.output
    assert "Traceback" not in bad.output and "DOS" not in bad.output
    said = " ".join(bad.output.split())
    assert said.startswith("error: cannot read image") and said.count("error") == 1
    assert "huge.png" in said.replace(" ", "") and "400,000,000 pixels" in said
    ok = runner.invoke(app, ["score", str(folder), "--out", str(tmp_path / "o"), "--image-size", "64", "--skip-unreadable"])
    assert ok.exit_code == 0, ok.output
    assert "Traceback" not in ok.output and "exceeds limit" not in ok.output
    skipped = (tmp_path / "o" / "skipped.csv").read_text()
    assert "huge.png" in skipped and "large.png" in skipped and "12000 x 12000 pixels" in skipped
    rows = list(csv.DictReader((tmp_path / "o" / "scores.csv").open()))
    assert sum(r["status"].startswith("skipped") for r in rows) == 2 and len(rows) == 8


def test_cli_param_reaches_the_method_and_unknown_keys_are_refused(tmp_path):
    folder = tmp_path / "parts"
    _write_folder(folder, count=6)
    ok = runner.invoke(app, ["score", str(folder), "--out", str(tmp_path / "o"), "--image-size", "64", "--param", "upper=0.8", "-p", "degrees=1,3"])
    assert ok.exit_code == 0, ok.output
    from defectscope.cli import _parse_params
    from defectscope.methods.musc import MuScConfig

    raw = _parse_params(["upper=0.9", "degrees=1,3", "native-grids=false", "backbone=x"])
    assert raw == {"upper": "0.9", "degrees": "1,3", "native_grids": "false", "backbone": "x"}
    config = MuScConfig.from_options(raw)
    assert (config.upper, config.degrees, config.native_grids, config.backbone) == (0.9, (1, 3), False, "x")
    bad = runner.invoke(app, ["score", str(folder), "--out", str(tmp_path / "o2"), "--param", "uper=0.5"])
    assert bad.exit_code == 2 and "unknown MuScConfig setting(s) uper" in bad.output


def test_evaluate_with_good_images_scores_against_them(tmp_path):
    root = write_mvtec_category(tmp_path / "widget", kind="texture", n_train=4, n_test_good=4, n_test_defect=3, size=96, seed=6)
    options = RunOptions(image_size=64, good=root, false_alarm_rate=0.25)
    metrics = evaluate_dataset(root, tmp_path / "eval", options)["widget"]
    settings = json.loads((tmp_path / "eval" / "widget" / "settings.json").read_text())
    assert settings["reference_images"] == 4 and settings["good"] == str(root) and settings["false_alarm_rate"] == 0.25
    assert settings["threshold_rule"].startswith("conformal on 4 good images")
    assert settings["threshold_applies_to"] == "verdict_score"
    rows = list(csv.DictReader((tmp_path / "eval" / "widget" / "scores.csv").open()))
    assert all(r["verdict_score"] == r["score"] for r in rows)
    assert all(r["verdict"] == ("anomalous" if float(r["verdict_score"]) > settings["threshold"] else "normal") for r in rows)
    assert metrics["verdict_recall"] is not None and metrics["verdict_false_alarm_rate"] is not None


def test_metrics_table_fits_an_80_column_terminal_with_every_header_whole(monkeypatch, capsys):
    from defectscope.cli import _print_metrics
    from defectscope.report.tables import METRIC_ORDER, TERMINAL_METRICS, short_name

    monkeypatch.setenv("COLUMNS", "80")
    row = {name: 0.5 for name in (*METRIC_ORDER, "verdict_missed")}
    _print_metrics({"pa_fvn01_tl": row, "mvtec_bottle": row})
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 80
    words = printed.split()
    for name in TERMINAL_METRICS:
        assert all(word in words for word in short_name(name).split()), name
    assert "pa_fvn01_tl" in words and "mvtec_bottle" in words


def test_evaluate_several_categories_with_good_root_uses_each_ones_train_good(tmp_path):
    root = tmp_path / "data"
    write_mvtec_category(root / "widget", kind="texture", n_train=4, n_test_good=4, n_test_defect=2, size=96, seed=6)
    write_mvtec_category(root / "gadget", kind="texture", n_train=5, n_test_good=4, n_test_defect=2, size=96, seed=7)
    options = RunOptions(image_size=64, good=root, false_alarm_rate=0.25)
    evaluate_dataset(root, tmp_path / "eval", options)
    for name, train in (("widget", 4), ("gadget", 5)):
        settings = json.loads((tmp_path / "eval" / name / "settings.json").read_text())
        assert settings["good"] == str(root / name) and settings["reference_images"] == train


def test_evaluate_several_categories_refuses_one_good_folder_for_all(tmp_path):
    root = tmp_path / "data"
    write_mvtec_category(root / "widget", kind="texture", n_train=4, n_test_good=4, n_test_defect=2, size=96, seed=6)
    write_mvtec_category(root / "gadget", kind="texture", n_train=4, n_test_good=4, n_test_defect=2, size=96, seed=7)
    with pytest.raises(ConfigError, match="has 2 categories .*--category NAME"):
        evaluate_dataset(root, tmp_path / "eval", RunOptions(image_size=64, good=root / "widget"))
    assert not (tmp_path / "eval").exists()
