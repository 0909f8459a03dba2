"""The detector contract, checked the same way for every registered method on tiny synthetic data."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
from typer.testing import CliRunner

from defectscope.cli import app
from defectscope.data.synthetic import synthetic_images
from defectscope.errors import ConfigError, NotFittedError
from defectscope.methods.base import Detector, MethodConfig, Result, to_text
from defectscope.methods.registry import METHODS, get_method, method_names
from defectscope.options import RunOptions
from image_helpers import save_images

SIZE = 64
TINY = {
    "musc": {},
    "codegraph": {},
    "uflow": {"epochs": "1", "min_epoch_samples": "4", "batch_size": "4", "blocks_per_scale": "1"},
    "prn": {"epochs": "1", "samples_per_epoch": "4", "batch_size": "2", "top_k": "10"},
}


@pytest.fixture(scope="module")
def data() -> tuple[list[np.ndarray], list[np.ndarray]]:
    return synthetic_images(6, size=SIZE, defective=(4, 5), seed=3)


def _options(name: str) -> RunOptions:
    return RunOptions(method=name, image_size=SIZE, method_options=TINY[name])


def test_registry_lists_every_method_with_its_classes() -> None:
    assert set(method_names()) == {"musc", "codegraph", "uflow", "prn"}
    assert method_names(trained=True) == ["uflow", "prn"] and method_names(trained=False) == ["musc", "codegraph"]
    for name, entry in METHODS.items():
        assert issubclass(entry.detector_class, Detector) and entry.detector_class.method == name
        assert issubclass(entry.config_class, MethodConfig)
    with pytest.raises(ConfigError, match="unknown method 'magic'; choose one of musc"):
        get_method("magic")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_config_field_round_trips_through_its_string_form(name: str) -> None:
    config_class = get_method(name).config_class
    default = config_class()
    for item in fields(config_class):
        value = getattr(default, item.name)
        rebuilt = config_class.from_options({item.name: to_text(value)})
        assert getattr(rebuilt, item.name) == value, item.name


@pytest.mark.parametrize("name", sorted(METHODS))
def test_detector_contract(name: str, data, tmp_path) -> None:
    images, masks = data
    entry = get_method(name)
    config = entry.make_config(_options(name))
    detector = entry.detector_class(config)
    assert detector.config is config and config.image_size == SIZE
    if entry.needs_training:
        assert not detector.is_fitted
        with pytest.raises(NotFittedError, match="not trained"):
            detector.predict(images)
        with pytest.raises(NotFittedError):
            detector.save(tmp_path / "model")
        with pytest.raises(NotFittedError):
            entry.export(detector, tmp_path / "model.onnx")
    else:
        assert detector.is_fitted
    train = images[:4]
    kwargs = {"anomalies": [(images[5], masks[5])]} if entry.takes_anomalies else {}
    assert detector.fit(train, **kwargs) is detector and detector.is_fitted
    events: list[tuple] = []
    result = detector.predict(images, progress=lambda *event: events.append(event))
    assert isinstance(result, Result)
    assert result.paths == [f"image_{i}" for i in range(6)]
    assert result.image_scores.shape == (6,) and result.image_scores.dtype == np.float64
    assert result.anomaly_maps.shape[0] == 6 and result.anomaly_maps.ndim == 3
    assert result.masks is None or result.masks.shape == result.anomaly_maps.shape
    assert events and all(isinstance(s, str) and 0 <= d <= t for s, d, t in events)
    assert {"method", "version"} <= set(result.settings) and result.settings["method"] == name
    assert {f.name for f in fields(config)} <= set(result.settings)
    assert result.is_anomalous is not None and result.is_anomalous.dtype == bool and result.is_anomalous.shape == (6,)
    assert isinstance(result.threshold, float) and np.isfinite(result.threshold)
    statistic = result.decision_scores()
    assert statistic.shape == (6,) and statistic.dtype == np.float64
    if np.isfinite(statistic).all():
        assert np.array_equal(result.is_anomalous, statistic > result.threshold)
    assert isinstance(result.threshold_rule, str) and result.threshold_rule.strip()
    named = detector.predict(images[:3], [f"part{i}.png" for i in range(3)])
    assert named.paths == ["part0.png", "part1.png", "part2.png"]
    with pytest.raises(ConfigError, match="got 1 paths for 3 images"):
        detector.predict(images[:3], ["only-one.png"])


def test_strings_convert_to_declared_types_from_python() -> None:
    musc = get_method("musc").config_class.from_options(
        {"degrees": "3", "rscin_ks": "1,2", "native_grids": "false", "lower": "0.1", "upper": "0.25", "weights": "none", "layers": "stride8,16"}
    )
    assert musc.degrees == (3,) and musc.rscin_ks == (1, 2) and musc.native_grids is False
    assert musc.upper == 0.25 and musc.weights is None and musc.layers == ("stride8", 16)
    uflow = get_method("uflow").config_class.from_options({"layers": "stride8", "input_sizes": "none"})
    assert uflow.layers == ("stride8",)
    prn = get_method("prn").config_class.from_options({"shares": "0.6,0.2,0.2", "samples_per_epoch": "none"})
    assert prn.shares == (0.6, 0.2, 0.2) and prn.samples_per_epoch is None


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("degrees", "1,x", "a comma-separated list of integers"),
        ("native_grids", "maybe", "true or false"),
        ("upper", "high", "a number"),
        ("batch_size", "2.5", "an integer"),
    ],
)
def test_bad_values_are_refused_in_one_sentence(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        get_method("musc").config_class.from_options({key: value})
    message = str(error.value)
    assert f"{key}='{value}'" in message and expected in message and "\n" not in message


def _folder(tmp_path):
    folder = tmp_path / "parts"
    save_images(folder, synthetic_images(4, size=SIZE, seed=5)[0], "p{}.png")
    return folder


@pytest.mark.parametrize(
    "param, expected",
    [
        ("degrees=1,x", "MuScConfig setting degrees='1,x' is invalid: expected a comma-separated list of integers"),
        ("native_grids=perhaps", "MuScConfig setting native_grids='perhaps' is invalid: expected true or false"),
        ("upper=lots", "MuScConfig setting upper='lots' is invalid: expected a number"),
        ("uper=0.5", "unknown MuScConfig setting(s) uper"),
    ],
)
def test_cli_refuses_bad_params_with_exit_code_2(param: str, expected: str, tmp_path) -> None:
    out = CliRunner().invoke(app, ["score", str(_folder(tmp_path)), "--out", str(tmp_path / "o"), "--param", param])
    assert out.exit_code == 2 and expected in " ".join(out.output.split()) and "Traceback" not in out.output
    assert not (tmp_path / "o").exists()


def test_cli_takes_a_single_degree_a_bool_and_a_float(tmp_path) -> None:
    from defectscope.cli import _parse_params
    from defectscope.pipeline import build_detector

    params = ["degrees=3", "native-grids=false", "upper=0.8"]
    args = ["score", str(_folder(tmp_path)), "--out", str(tmp_path / "o"), "--image-size", str(SIZE)]
    out = CliRunner().invoke(app, args + [item for param in params for item in ("-p", param)])
    assert out.exit_code == 0, out.output
    assert len((tmp_path / "o" / "scores.csv").read_text().splitlines()) == 5
    config = build_detector(RunOptions(method_options=_parse_params(params))).config
    assert (config.degrees, config.native_grids, config.upper) == ((3,), False, 0.8)


def test_runs_do_not_branch_on_method_names_and_training_does_not_import_pipeline() -> None:
    import inspect
    import re

    import defectscope.cli as cli
    import defectscope.pipeline as pipeline
    import defectscope.training as training

    assert not re.search(r"^\s*(from|import) defectscope\.pipeline", inspect.getsource(training), re.M)
    for module in (cli, pipeline, training):
        assert not re.search(r"method\s*(==|!=|in \()", inspect.getsource(module)), module.__name__


@pytest.mark.parametrize("name", sorted(METHODS))
def test_calibrate_on_good_images_sets_a_conformal_verdict(name: str, data) -> None:
    images, masks = data
    entry = get_method(name)
    detector = entry.detector_class(entry.make_config(_options(name)))
    kwargs = {"anomalies": [(images[5], masks[5])]} if entry.takes_anomalies else {}
    detector.fit(images[:4], **kwargs)
    with pytest.raises(ConfigError, match="needs at least 19 good images"):
        detector.calibrate(images[:4], 0.05)
    assert detector.calibrate(images[:4], 0.25) is detector
    result = detector.predict(images)
    assert result.threshold_rule.startswith("conformal on 4 good images")
    assert np.array_equal(result.decision_scores(), result.image_scores)
    assert np.array_equal(result.is_anomalous, result.image_scores > result.threshold)


def test_cli_verdict_options_reach_the_run_and_bad_values_are_refused(tmp_path) -> None:
    import json

    folder = _folder(tmp_path)
    base = ["score", str(folder), "--image-size", str(SIZE)]
    bad = CliRunner().invoke(app, base + ["--out", str(tmp_path / "o1"), "--false-alarm-rate", "1.5"])
    assert bad.exit_code == 2 and "--false-alarm-rate=1.5 is invalid: expected a number in (0, 1)" in " ".join(bad.output.split())
    few = CliRunner().invoke(app, base + ["--out", str(tmp_path / "o2"), "--good", str(folder)])
    assert few.exit_code == 2 and "needs at least 19 good images" in " ".join(few.output.split())
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    ok = CliRunner().invoke(app, base + ["--out", str(tmp_path / "o3"), "--good", str(folder), "--false-alarm-rate", "0.25"])
    assert ok.exit_code == 0, ok.output
    assert "parts anomalous" in ok.output
    settings = json.loads((tmp_path / "o3" / "settings.json").read_text())
    assert settings["false_alarm_rate"] == 0.25 and settings["good"] == str(folder)
    assert settings["threshold_rule"].startswith("conformal on 4 good images") and settings["reference_images"] == 4
