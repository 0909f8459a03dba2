"""Trained methods end to end through the library API the CLI uses: fit, predict, export, evaluate."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from defectscope.cli import app
from defectscope.data import mvtec_category
from defectscope.data.synthetic import write_mvtec_category
from defectscope.methods.prn import kshot_split
from defectscope.errors import ConfigError, DefectscopeError
from defectscope.pipeline import RunOptions, evaluate_dataset
from defectscope.training import export_model, fit_model, predict_folder

UFLOW_FAST = {"epochs": 1, "min_epoch_samples": 4, "batch_size": 4}
PRN_FAST = {"epochs": 1, "samples_per_epoch": 4, "batch_size": 2, "top_k": 10}


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    root = tmp_path_factory.mktemp("data") / "widget"
    return write_mvtec_category(root, kind="texture", n_train=6, n_test_good=3, n_test_defect=4, size=64, seed=2)


def test_uflow_fit_predict_export(category, tmp_path):
    model = fit_model("uflow", category, tmp_path / "model", RunOptions(image_size=96, method_options=UFLOW_FAST))
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    assert not list(tmp_path.glob(".model.checkpoint"))
    result = predict_folder(model, category / "test", tmp_path / "pred", RunOptions())
    assert result.masks is not None and result.masks.shape == result.anomaly_maps.shape
    rows = list(csv.DictReader((tmp_path / "pred" / "scores.csv").open()))
    assert len(rows) == 7
    assert len(list((tmp_path / "pred" / "masks").glob("*.png"))) == 7
    onnx_file = export_model(model, tmp_path / "uflow.onnx")
    # the exported file (embedded backbone included) gives the saved model's maps
    onnxruntime = pytest.importorskip("onnxruntime")
    from defectscope.data import read_image
    from defectscope.training import load_detector

    detector = load_detector(model)
    images = [read_image(p) for p in sorted((category / "test" / "good").glob("*.png"))[:2]]
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    onnx_maps = session.run(["anomaly_map"], {"image": detector.backbone.preprocess(images).numpy()})[0]
    torch_maps = detector.predict(images).anomaly_maps
    assert onnx_maps.shape == torch_maps.shape == (2, 96, 96)
    assert np.max(np.abs(onnx_maps - torch_maps)) <= 1e-4


def test_prn_needs_anomalies_and_trains_with_them(category, tmp_path):
    options = RunOptions(image_size=64, method_options=PRN_FAST)
    with pytest.raises(ConfigError, match="--anomalies"):
        fit_model("prn", category, tmp_path / "m0", options)
    model = fit_model("prn", category, tmp_path / "model", options, anomalies_dir=category)
    header = json.loads((model / "config.json").read_text())
    assert header["method"] == "prn"
    result = predict_folder(model, category / "test", tmp_path / "pred", RunOptions())
    assert result.image_scores.shape == (7,)


def test_evaluate_trained_methods_keep_training_defects_out_of_test(category, tmp_path):
    metrics = evaluate_dataset(category, tmp_path / "ev", RunOptions(method="prn", image_size=64, kshot=1, method_options=PRN_FAST))
    assert metrics["widget"]["pixel_auroc"] is not None
    rows = list(csv.DictReader((tmp_path / "ev" / "widget" / "scores.csv").open()))
    train_defects, test = kshot_split(mvtec_category(category).test, k=1, seed=0)
    assert train_defects and len(rows) == len(test) == 7 - len(train_defects)
    scored = {row["path"] for row in rows}
    assert not scored & {str(s.path) for s in train_defects}


def test_cli_fit_refuses_unknown_method_and_predict_other_file(category, tmp_path):
    runner = CliRunner()
    out = runner.invoke(app, ["fit", str(category), "--method", "musc", "--out", str(tmp_path / "m")])
    assert out.exit_code == 2 and "not trained" in out.output
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "config.json").write_text("{}")
    with pytest.raises(DefectscopeError, match="not a defectscope model"):
        predict_folder(tmp_path / "fake", category / "test", tmp_path / "p", RunOptions())


def test_trained_evaluate_skips_unreadable_test_images_and_checks_memory_for_them(tmp_path, monkeypatch):
    # Trained `evaluate` read the test set without --skip-unreadable, checked memory for the
    # training set only and reported no skipped files.
    import dataclasses
    import shutil

    import defectscope.training as training

    root = write_mvtec_category(tmp_path / "widget", kind="texture", n_train=6, n_test_good=3, n_test_defect=2, size=64, seed=2)
    broken = root / "test" / "good" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    options = RunOptions(method="uflow", image_size=64, threads=1, method_options=UFLOW_FAST)
    with pytest.raises(DefectscopeError, match="broken.png"):
        evaluate_dataset(root, tmp_path / "stop", options)
    checked: list[list[str]] = []
    real_guard = training.guard_run
    monkeypatch.setattr(training, "guard_run", lambda detector, paths, **kw: checked.append(sorted(map(str, paths))) or real_guard(detector, paths, **kw))
    metrics = evaluate_dataset(root, tmp_path / "ev", dataclasses.replace(options, skip_unreadable=True))
    assert metrics["widget"]["image_auroc"] is not None
    test_paths = sorted(str(s.path) for s in mvtec_category(root).test)
    assert test_paths in checked
    skipped = list(csv.DictReader((tmp_path / "ev" / "widget" / "skipped.csv").open()))
    assert [row["path"] for row in skipped] == [str(broken)]
    rows = list(csv.DictReader((tmp_path / "ev" / "widget" / "scores.csv").open()))
    assert len(rows) == 6 and sum(r["status"].startswith("skipped") for r in rows) == 1
    shutil.rmtree(tmp_path / "ev")
