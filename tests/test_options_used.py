"""Every option of every `defectscope` command is used by each method it reaches, or refused.

For each command and each method (or scorer) the command runs, a baseline run is compared with
runs that each give one more option (or change one): the option counts as used when the run's
settings or results differ from the baseline's, and as refused when the run stops with exit code 2
and one printed sentence (a ConfigError) that names the option or its value. Anything else (the
run succeeds and nothing changed: the option was silently ignored) fails the test. Options that
steer the command itself rather than the run's method or verdict (where outputs go, the server's
network settings, ...) are listed in CONTROL with the reason and the test that covers them; a new
option that is in neither table fails ``test_every_option_is_tried_or_explained``.

Tiny synthetic data at 32-64 px keeps this quick; the trained methods train one short epoch.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from defectscope.cli import app
from defectscope.data.synthetic import synthetic_images, write_mvtec_category
from image_helpers import save_images  # noqa: E402

runner = CliRunner()

SIZE = {"uflow": "64", "prn": "32"}  # U-Flow's region test needs latent maps of at least 3 x 3 cells
PARAM = {"musc": "upper=0.9", "codegraph": "upper=0.9", "uflow": "seed=5", "prn": "seed=5"}
UFLOW_FAST = ["-p", "min_epoch_samples=4", "-p", "batch_size=4", "--epochs", "1"]
PRN_FAST = ["-p", "samples_per_epoch=4", "-p", "top_k=10", "--epochs", "1"]
FAST_WATCH = ["--settle", "0", "--give-up", "0.5", "--poll", "0.05", "--exit-after-idle", "0.3"]

# The value tried for each option (a list of arguments); "{good}" and similar are filled in.
TRIED: dict[str, dict[str, list[str]]] = {
    "score": {
        "--method": ["--method", "{other_method}"], "--backbone": ["--backbone", "efficientnet-lite1"],
        "--weights": ["--weights", "{empty}"], "--image-size": ["--image-size", "96"], "--batch-size": ["--batch-size", "2"],
        "--threads": ["--threads", "1"], "--skip-unreadable": ["--skip-unreadable"], "--smoothing": ["--smoothing", "0"],
        "--param": ["--param", "{param}"], "--scheduler": ["--scheduler", "nowhere"],
        "--false-alarm-rate": ["--false-alarm-rate", "0.3"], "--review-budget": ["--review-budget", "0"],
        "--good": ["--good", "{good}"], "--device": ["--device", "cuda:7"],
    },
    "fit": {
        "--anomalies": ["--anomalies", "{category}"], "--backbone": ["--backbone", "efficientnet-lite1"],
        "--weights": ["--weights", "{empty}"], "--image-size": ["--image-size", "96"], "--batch-size": ["--batch-size", "2"],
        "--epochs": ["--epochs", "2"], "--param": ["--param", "{param}"],
        "--device": ["--device", "cuda:7"],
    },
    "predict": {
        "--threads": ["--threads", "1"], "--skip-unreadable": ["--skip-unreadable"], "--false-alarm-rate": ["--false-alarm-rate", "0.3"],
        "--review-budget": ["--review-budget", "0"], "--good": ["--good", "{good}"], "--device": ["--device", "cuda:7"],
    },
    "watch": {
        "--good": ["--good", "{good2}"], "--model": ["--model", "{other_model}"], "--false-alarm-rate": ["--false-alarm-rate", "0.3"],
        "--bank-size": ["--bank-size", "4"], "--min-bank": ["--min-bank", "2"], "--settle": ["--settle", "0.01"],
        "--give-up": ["--give-up", "0.6"], "--poll": ["--poll", "0.06"], "--backbone": ["--backbone", "efficientnet-lite1"],
        "--weights": ["--weights", "{empty}"], "--image-size": ["--image-size", "96"], "--threads": ["--threads", "1"],
        "--smoothing": ["--smoothing", "0"], "--param": ["--param", "{param}"], "--device": ["--device", "cuda:7"],
    },
    "serve": {
        "--model": ["--model", "{other_model}"], "--good": ["--good", "{good}"], "--method": ["--method", "{other_method}"],
        "--false-alarm-rate": ["--false-alarm-rate", "0.3"], "--backbone": ["--backbone", "efficientnet-lite1"],
        "--weights": ["--weights", "{empty}"], "--image-size": ["--image-size", "96"], "--batch-size": ["--batch-size", "2"],
        "--threads": ["--threads", "1"], "--smoothing": ["--smoothing", "0"], "--param": ["--param", "{param}"],
        "--device": ["--device", "cuda:7"],
    },
}  # fmt: skip
TRIED["evaluate"] = {
    **{k: v for k, v in TRIED["score"].items() if k != "--good"},
    "--good": ["--good", "{good}"], "--seed": ["--seed", "3"], "--kshot": ["--kshot", "2"], "--epochs": ["--epochs", "2"],
    "--smoothing": ["--smoothing", "2"],  # not 0: PRN's default is 0, MuSc's and U-Flow's 4
}  # fmt: skip

SERVER = "the HTTP server's own setting, no setting of the method or the verdict (tests/test_serve.py)"
CONTROL: dict[str, dict[str, str]] = {
    "score": {"--out": "where the outputs go", "--overwrite": "checked in test_overwrite_is_used"},
    "evaluate": {"--out": "where the outputs go", "--overwrite": "checked in test_overwrite_is_used",
                 "--category": "chooses the input (categories under ROOT); checked in test_category_is_used"},
    "fit": {"--out": "where the model goes", "--method": "required (uflow or prn); both are run below",
            "--overwrite": "checked in test_overwrite_is_used", "--resume": "continues a checkpoint (tests/test_training.py)",
            "--threads": "torch's CPU threads: the training's speed, not the saved model"},
    "predict": {"--out": "where the outputs go", "--overwrite": "checked in test_overwrite_is_used"},
    "watch": {"--out": "where the journals go", "--exit-after-idle": "ends the run (every watch run here uses it)"},
    "serve": {"--out": "where the journal goes", "--host": SERVER, "--port": SERVER, "--token": SERVER, "--no-auth": SERVER,
              "--queue-size": SERVER, "--max-batch": SERVER, "--batch-window": SERVER, "--max-bytes": SERVER,
              "--max-pixels": SERVER, "--keep-images": SERVER},
    "export": {"--out": "the file written", "--format": "only onnx; another is refused (tests/test_training.py)"},
    "review": {"--export": "review's own mode", "--category": "which category to review", "--host": SERVER, "--port": SERVER,
               "--no-browser": "review's own display", "--overwrite": "review's own export folder"},
    "demo": {"--out": "where the outputs go", "--count": "the demo's sample size", "--overwrite": "as for score",
             "--threads": "as for score", "--device": "as for score"},
    "backbones": {},
    "version": {},
}  # fmt: skip


def _options_of(command: str) -> set[str]:
    click_command = typer.main.get_command(app).commands[command]
    return {max(p.opts, key=len) for p in click_command.params if p.param_type_name == "option" and p.name != "help"}


def test_every_option_is_tried_or_explained() -> None:
    commands = typer.main.get_command(app).commands
    assert set(commands) == set(CONTROL), "a new command: list its options in TRIED or CONTROL"
    for command in commands:
        declared = _options_of(command)
        covered = set(TRIED.get(command, {})) | set(CONTROL[command])
        assert declared == covered, f"{command}: options not tried nor explained {sorted(declared - covered)}; stale {sorted(covered - declared)}"
        assert not set(TRIED.get(command, {})) & set(CONTROL[command])


# ----------------------------------------------------------------------------------------------
# fixtures: tiny data, two trained models


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("options")
    images, _ = synthetic_images(5, kind="texture", size=32, seed=2, defective=(3,), defect="spot")
    save_images(root / "folder", images)
    good, _ = synthetic_images(40, kind="texture", size=32, seed=2)
    save_images(root / "good", good[:20])
    save_images(root / "good2", good[20:])
    save_images(root / "good_small", good[:6])
    cats = root / "cats"
    category = write_mvtec_category(cats / "widget", kind="texture", n_train=4, n_test_good=2, n_test_defect=4, size=32, seed=3, defect="spot")
    gadget = write_mvtec_category(cats / "gadget", kind="texture", n_train=4, n_test_good=2, n_test_defect=4, size=32, seed=4, defect="spot")
    (root / "empty").mkdir()
    paths = {"folder": root / "folder", "good": root / "good", "good2": root / "good2", "category": category, "gadget": gadget,
             "cats": cats, "empty": root / "empty", "root": root, "good_small": root / "good_small"}
    for method, fast in (("uflow", UFLOW_FAST), ("prn", PRN_FAST)):
        extra = ["--anomalies", str(gadget)] if method == "prn" else []
        model = root / f"{method}_model"
        result = runner.invoke(app, ["fit", str(gadget), "--out", str(model), "-m", method, "--image-size", SIZE[method], *fast, *extra])
        assert result.exit_code == 0, result.output
        paths[f"{method}_model"] = model
    return paths


def _strip(value):
    """Settings without what differs from run to run (times, creation stamps, output paths)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("seconds", "created", "out")}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _fingerprint(out: Path) -> dict[str, object]:
    """What a run wrote that depends on its settings: every JSON file (settings, model configs,
    metrics, the watch's marker) and the score and verdict columns of every CSV."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        name = str(path.relative_to(out))
        if path.suffix == ".json":
            found[name] = _strip(json.loads(path.read_text()))
        elif path.suffix == ".csv":
            with open(path, newline="") as handle:
                found[name] = [(row.get("path"), row.get("score"), row.get("verdict")) for row in csv.DictReader(handle)]
    return found


def _run(args: list[str], out: Path, monkeypatch) -> tuple[str, object]:
    """("ran", fingerprint) or ("refused", the printed sentence)."""
    import torch

    monkeypatch.setattr("defectscope.serve.run_server", lambda *a, **k: None)  # serve: build, record, do not listen
    threads = torch.get_num_threads()
    try:
        result = runner.invoke(app, args)
    finally:
        torch.set_num_threads(threads)  # --threads must not leak into the next run (float sums differ)
    if result.exit_code == 2 and "error:" in result.output:
        assert "Traceback" not in result.output
        return "refused", " ".join(result.output.split())
    assert result.exit_code == 0, f"{' '.join(args)}\n{result.output}\n{result.exception!r}"
    return "ran", _fingerprint(out)


def _fill(values: list[str], data: dict[str, Path], other_method: str, other_model: str = "", param: str = "upper=0.9") -> list[str]:
    names = {**{k: str(v) for k, v in data.items()}, "other_method": other_method, "other_model": other_model, "param": param}
    return [value.format(**names) for value in values]


# (command, run) -> the baseline arguments; OUT is replaced by the output folder.
RUNS: dict[tuple[str, str], list[str]] = {
    ("score", "musc"): ["score", "{folder}", "--out", "OUT", "--image-size", "32"],
    ("score", "codegraph"): ["score", "{folder}", "--out", "OUT", "--image-size", "32", "-m", "codegraph"],
    ("evaluate", "musc"): ["evaluate", "{category}", "--out", "OUT", "--image-size", "32"],
    ("evaluate", "codegraph"): ["evaluate", "{category}", "--out", "OUT", "--image-size", "32", "-m", "codegraph"],
    ("evaluate", "uflow"): ["evaluate", "{category}", "--out", "OUT", "--image-size", "64", "-m", "uflow", *UFLOW_FAST],
    ("evaluate", "prn"): ["evaluate", "{category}", "--out", "OUT", "--image-size", "32", "-m", "prn", "--kshot", "1", *PRN_FAST],
    ("fit", "uflow"): ["fit", "{gadget}", "--out", "OUT", "--image-size", "64", "-m", "uflow", *UFLOW_FAST],
    ("fit", "prn"): ["fit", "{gadget}", "--out", "OUT", "--image-size", "32", "-m", "prn", "--anomalies", "{gadget}", *PRN_FAST],
    ("predict", "uflow"): ["predict", "{uflow_model}", "{folder}", "--out", "OUT"],
    ("predict", "prn"): ["predict", "{prn_model}", "{folder}", "--out", "OUT"],
    ("watch", "rolling bank"): ["watch", "{folder}", "--out", "OUT", "--image-size", "32", "--min-bank", "3", "--bank-size", "10", *FAST_WATCH],
    ("watch", "good"): ["watch", "{folder}", "--out", "OUT", "--image-size", "32", "--good", "{good_small}", "--false-alarm-rate", "0.25", *FAST_WATCH],
    ("watch", "uflow model"): ["watch", "{folder}", "--out", "OUT", "--model", "{uflow_model}", *FAST_WATCH],
    ("watch", "prn model"): ["watch", "{folder}", "--out", "OUT", "--model", "{prn_model}", *FAST_WATCH],
    ("serve", "musc"): ["serve", "--out", "OUT", "--image-size", "32", "--good", "{good_small}", "--false-alarm-rate", "0.25"],
    ("serve", "uflow model"): ["serve", "--out", "OUT", "--model", "{uflow_model}"],
    ("serve", "prn model"): ["serve", "--out", "OUT", "--model", "{prn_model}"],
}  # fmt: skip
OTHER_METHOD = {"musc": "codegraph", "codegraph": "musc", "uflow": "prn", "prn": "uflow"}


def _rebase(base: list[str], tmp_path: Path) -> list[str]:
    return [value.replace(str(tmp_path / "base"), str(tmp_path / "again")) for value in base]


def _variant(base: list[str], flag: str, tried: list[str]) -> list[str]:
    """``base`` with ``flag`` set to ``tried`` (replacing the baseline's value where it has one)."""
    args = list(base)
    aliases = {"--method": "-m", "--param": "-p"}
    if flag != "--param":
        for name in (flag, aliases.get(flag)):
            while name in args:
                at = args.index(name)
                del args[at : at + (1 if len(tried) == 1 else 2)]
    return args + tried


@pytest.mark.slow
@pytest.mark.parametrize("command, run", list(RUNS), ids=[f"{c}-{r}".replace(" ", "_") for c, r in RUNS])
def test_each_option_is_used_or_refused(command, run, data, tmp_path, monkeypatch) -> None:
    method = run.split()[0] if run.split()[0] in PARAM else "musc"
    other, param = OTHER_METHOD[method], PARAM[method]
    other_model = str(data["prn_model"] if run.startswith("uflow") else data["uflow_model"])
    base = [value.replace("OUT", str(tmp_path / "base")) for value in _fill(RUNS[command, run], data, other, other_model, param)]
    kind, baseline = _run(base, tmp_path / "base", monkeypatch)
    assert kind == "ran", baseline
    outcomes = {}
    for number, (flag, tried) in enumerate(TRIED[command].items()):
        out = tmp_path / f"v{number}"
        tried = _fill(tried, data, other, other_model, param)
        variant = _variant(base, flag, tried)
        if flag == "--method" and (command, other) in RUNS:  # the other method's run (its own fast settings)
            variant = _fill(RUNS[command, other], data, other, other_model, PARAM[other])
            variant = [value.replace("OUT", str(tmp_path / "base")) for value in variant]
        args = [value.replace(str(tmp_path / "base"), str(out)) for value in variant]
        kind, seen = _run(args, out, monkeypatch)
        if kind == "refused":
            named = [flag] + tried[1:]
            assert any(name in seen for name in named), f"{command} ({run}) {flag}: refused without naming it: {seen}"
        else:
            assert seen != baseline, f"{command} ({run}): {' '.join(tried)} was silently ignored (same settings and results)"
        outcomes[flag] = kind if kind == "ran" else f"refused: {seen[:140]}"
    kind, again = _run(_rebase(base, tmp_path), tmp_path / "again", monkeypatch)
    assert again == baseline, f"{command} ({run}): the baseline run is not repeatable, so a change cannot show an option was used"
    print(f"\n{command} ({run}):")
    for flag, kind in outcomes.items():
        print(f"  {flag:20s} {kind}")


@pytest.mark.slow
def test_overwrite_is_used(data, tmp_path) -> None:
    """--overwrite: without it a second run into the same folder is refused, with it it runs."""
    out = tmp_path / "out"
    for command in (["score", str(data["folder"])], ["evaluate", str(data["category"])]):
        args = [*command, "--out", str(out), "--image-size", "32"]
        assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
        again = runner.invoke(app, args)
        assert again.exit_code == 2 and "--overwrite" in again.output
        assert runner.invoke(app, args + ["--overwrite"]).exit_code == 0
    model = tmp_path / "model"
    fit = ["fit", str(data["gadget"]), "--out", str(model), "-m", "uflow", "--image-size", "64", *UFLOW_FAST]
    assert runner.invoke(app, fit).exit_code == 0
    assert runner.invoke(app, fit).exit_code == 2
    assert runner.invoke(app, fit + ["--overwrite"]).exit_code == 0
    predict = ["predict", str(model), str(data["folder"]), "--out", str(tmp_path / "p")]
    assert runner.invoke(app, predict).exit_code == 0
    assert runner.invoke(app, predict).exit_code == 2
    assert runner.invoke(app, predict + ["--overwrite"]).exit_code == 0


@pytest.mark.slow
def test_category_is_used(data, tmp_path) -> None:
    """--category chooses categories under a root of several."""
    out = tmp_path / "out"
    result = runner.invoke(app, ["evaluate", str(data["cats"]), "--out", str(out), "--image-size", "32", "--category", "gadget"])
    assert result.exit_code == 0, result.output
    assert list(json.loads((out / "metrics.json").read_text())) == ["gadget"]
