"""bench/prn_benchmark.py's same-image comparison: MuSc on exactly PRN's k-shot test images, and
the two pixel protocols (maps at image size vs masks at map size)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from defectscope.data import mvtec_category
from defectscope.data.layouts import Category
from defectscope.data.synthetic import write_mvtec_category
from defectscope.methods.prn import kshot_split
from defectscope.options import RunOptions
from defectscope.pipeline import evaluate_category as evaluate_zero_shot

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from prn_benchmark import PROTOCOLS, musc_on_test, pixel_figures  # noqa: E402


def test_pixel_protocols_differ_only_in_where_the_sizes_meet():
    mask = np.zeros((8, 12), dtype=bool)
    mask[2:6, 4:8] = True  # a 4 x 4 square on a 2:3 image
    exact = np.zeros((4, 6), dtype=np.float32)
    exact[1:3, 2:4] = 1.0  # the same square on a half-size map
    normal = np.zeros((8, 12), dtype=bool)
    for protocol in PROTOCOLS:
        figures = pixel_figures([exact, np.zeros((4, 6), np.float32)], [mask, normal], protocol)
        assert figures["pixel_ap"] == pytest.approx(1.0)
    # a map one pixel off: at map size the shifted square still half overlaps, at image size the
    # bilinear upsampling spreads it; the two protocols must then give different figures
    shifted = np.roll(exact, 1, axis=1)
    image = pixel_figures([shifted], [mask], "image")["pixel_ap"]
    at_map = pixel_figures([shifted], [mask], "map")["pixel_ap"]
    assert image < 1.0 and at_map < 1.0 and image != pytest.approx(at_map)
    with pytest.raises(ValueError, match="protocol"):
        pixel_figures([exact], [mask], "native")
    with pytest.raises(ValueError, match="2 maps for 1 masks"):
        pixel_figures([exact, exact], [mask], "map")


def test_musc_is_scored_on_exactly_the_k_shot_test_images(tmp_path, one_thread):
    root = write_mvtec_category(tmp_path / "widget", kind="texture", n_train=2, n_test_good=4, n_test_defect=6, size=96, seed=3)
    category = mvtec_category(root)
    moved, test = kshot_split(category.test, k=1, seed=0)
    assert moved and len(test) == len(category.test) - len(moved)
    options = RunOptions(method="musc", image_size=64)
    measured = musc_on_test(category, test, options)
    assert measured["test"] == len(test)
    assert set(measured["pixel"]) == set(PROTOCOLS)
    # the map protocol is the library's own evaluate figure on the same batch of test images
    subset = Category(category.name, category.root, category.layout, [], list(test), category.has_masks)
    library = evaluate_zero_shot(subset, options)[4]
    for key in ("pixel_ap", "pixel_auroc", "pixel_aupro"):
        assert measured["pixel"]["map"][key] == pytest.approx(library[key], abs=1e-9)
    assert measured["image_auroc"] == pytest.approx(library["image_auroc"], abs=1e-9)
    # and the defects moved to PRN's training are not in MuSc's batch: the full test set is scored differently
    full = evaluate_zero_shot(category, options)[2]
    assert len(full) == len(category.test) > measured["test"]


def test_magnetic_tile_split_types_come_from_the_mt_folder():
    from prn_mt_split import defect_type

    assert defect_type("/data/magnetic_tile/MT_Crack/Imgs/exp1_num_4.jpg") == "Crack"
    assert defect_type("/data/magnetic_tile/MT_Free/Imgs/exp1_num_9.jpg") is None
    with pytest.raises(ValueError):
        defect_type("/data/mvtec_bottle/test/broken_large/000.png")


def test_bench_prn_params_take_json_or_the_cli_text():
    from bench_prn import protocol_config, with_params

    from defectscope.errors import ConfigError
    from defectscope.methods.prn import PRNConfig

    base = protocol_config("defaults")
    assert with_params(base, []) is base
    for text in ('pseudo_families=["perlin","thin"]', "pseudo_families=perlin,thin"):
        assert with_params(base, [text]).pseudo_families == ("perlin", "thin")
    changed = with_params(protocol_config("guard"), ["pseudo_families=perlin", "epochs=3", "final_model=never"])
    assert (changed.pseudo_families, changed.epochs, changed.final_model, changed.image_size) == (("perlin",), 3, "never", 128)
    assert with_params(base, ["epochs=32"]) == PRNConfig(epochs=32)
    with pytest.raises(ConfigError, match="pseudo_families"):
        with_params(base, ["pseudo_families=perlin,crack"])
