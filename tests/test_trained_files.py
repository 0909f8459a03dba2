"""The scaffolding U-Flow and PRN share: the held-out splitter (methods/holdout.py) and the one
checkpoint format (methods/modelfile.py), on tiny fake backbones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from defectscope.errors import ModelFileError
from defectscope.methods.holdout import MIN_POOL, cross_fit_folds, held_out_indices
from defectscope.methods.modelfile import load_model, save_model
from defectscope.methods.prn import PRN
from defectscope.methods.uflow import UFlow
from test_prn import FakeBackbone as PRNBackbone, texture, tiny_config
from test_uflow import _backbone, _config, _images


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_held_out_rule_and_the_two_orders_each_method_had() -> None:
    assert held_out_indices(MIN_POOL - 1, 0.5, 0) == [] and held_out_indices(50, 0.0, 0) == []
    assert len(held_out_indices(10, 0.01, 0)) == 2 and len(held_out_indices(95, 0.1, 0)) == 10
    for seed in (0, 3):
        # PRN's order before the two methods shared this code
        expected = sorted(int(i) for i in np.random.default_rng([seed, 7]).permutation(40)[:4])
        assert held_out_indices(40, 0.1, seed) == expected
        # U-Flow's
        torch_order = torch.randperm(40, generator=torch.Generator().manual_seed(seed + 7))[:4].sort().values.tolist()
        assert held_out_indices(40, 0.1, seed, "torch") == torch_order
        assert held_out_indices(40, 0.1, seed) != held_out_indices(40, 0.1, seed + 1)
    folds = cross_fit_folds(25, 3, 0)
    assert sorted(i for fold in folds for i in fold) == list(range(25)) and [len(f) for f in folds] == [9, 8, 8]


def test_a_uflow_checkpoint_is_a_loadable_model_and_resumes(tmp_path: Path) -> None:
    images = _images(8)
    partial = UFlow(_config(epochs=2), backbone=_backbone()).fit(images, checkpoint_dir=tmp_path / "ckpt")
    header = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert header["method"] == "uflow" and header["config"]["checkpoint"]["epochs_done"] == 2
    tensors, _ = load_model(tmp_path / "ckpt", "uflow")
    assert not any(name.startswith("optimizer.") for name in tensors)
    loaded = UFlow.load(tmp_path / "ckpt", backbone=_backbone())
    probe = _images(2, seed=4)
    assert np.array_equal(loaded.predict(probe).anomaly_maps, partial.predict(probe).anomaly_maps)
    partial.save(tmp_path / "model")
    with pytest.raises(ModelFileError, match="is a saved U-Flow model, not a training checkpoint"):
        UFlow(_config(epochs=3), backbone=_backbone()).fit(images, checkpoint_dir=tmp_path / "model", resume=True)


def test_a_prn_checkpoint_loads_as_an_uncalibrated_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    normals = [texture(rng) for _ in range(6)]
    trained = PRN(tiny_config(epochs=1, samples_per_epoch=8), backbone=PRNBackbone()).fit(normals, checkpoint_dir=tmp_path / "ckpt")
    loaded = PRN.load(tmp_path / "ckpt", backbone=PRNBackbone())
    assert len(loaded.heads) == 1 and loaded.held_out_scores is None
    assert np.array_equal(loaded.predict(normals[:2]).anomaly_maps, trained.predict(normals[:2]).anomaly_maps)


def test_checkpoints_of_the_older_formats_are_refused_in_one_sentence(tmp_path: Path) -> None:
    save_model(tmp_path / "prn-old", "prn-checkpoint", {"head.w": torch.zeros(1)}, {"prn": {}, "epochs_done": 1})
    save_model(tmp_path / "uflow-old", "uflow", {"flow.w": torch.zeros(1)}, {"uflow": {}, "training": {}})
    rng = np.random.default_rng(0)
    with pytest.raises(ModelFileError, match=r"'.*prn-old' is a training checkpoint of an older defectscope.*delete it"):
        PRN(tiny_config(epochs=1, samples_per_epoch=8), backbone=PRNBackbone()).fit(
            [texture(rng) for _ in range(4)], checkpoint_dir=tmp_path / "prn-old", resume=True)
    with pytest.raises(ModelFileError, match=r"'.*uflow-old' is a training checkpoint of an older defectscope.*delete it"):
        UFlow.load(tmp_path / "uflow-old")
    with pytest.raises(ModelFileError, match="older defectscope"):
        UFlow(_config(epochs=1), backbone=_backbone()).fit(_images(4), checkpoint_dir=tmp_path / "uflow-old", resume=True)


def test_prn_models_saved_with_the_old_weights_name_still_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    normals = [texture(rng) for _ in range(4)]
    trained = PRN(tiny_config(epochs=1, samples_per_epoch=8), backbone=PRNBackbone()).fit(normals)
    trained.save(tmp_path / "model")
    path = tmp_path / "model" / "config.json"
    header = json.loads(path.read_text())
    settings = header["config"]["prn"]
    settings["backbone_weights"] = settings.pop("weights")
    path.write_text(json.dumps(header))
    loaded = PRN.load(tmp_path / "model", backbone=PRNBackbone())
    assert loaded.config == trained.config and loaded.config.weights is None
    assert "weights" in loaded.settings() and "backbone_weights" not in loaded.settings()
