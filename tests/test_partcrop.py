"""Crop to the part (defectscope.methods.partcrop): the part's box, the batch's decision, maps
pasted back into the full image's frame, and the fallbacks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defectscope.methods import partcrop
from defectscope.methods.base import Result
from defectscope.methods.codegraph import CoDeGraph, CoDeGraphConfig
from defectscope.methods.musc import MuSc, MuScConfig

pytestmark = [pytest.mark.filterwarnings("ignore:mutual scoring of only"), pytest.mark.filterwarnings("ignore:CoDeGraph of only")]

BACKGROUND = (90, 110, 130)


def small_parts(count: int = 10, size: int = 240, part: int = 48, seed: int = 0, defect: int | None = None):
    """Plain background, one bright textured square part per image at a random place; the
    part's true box (top, bottom, left, right) per image. ``defect``: that image's part gets a
    dark spot."""
    rng = np.random.default_rng(seed)
    images, boxes = [], []
    for index in range(count):
        image = np.empty((size, size, 3), dtype=np.uint8)
        image[:] = BACKGROUND
        top, left = (int(v) for v in rng.integers(0, size - part, 2))
        stripes = 200 + 40 * (np.arange(part) // 4 % 2)
        image[top:top + part, left:left + part] = np.stack([stripes[None, :].repeat(part, 0)] * 3, axis=-1)
        if index == defect:
            image[top + part // 2 - 3:top + part // 2 + 3, left + part // 2 - 3:left + part // 2 + 3] = 20
        images.append(image)
        boxes.append((top, top + part, left, left + part))
    return images, boxes


def texture(count: int = 6, size: int = 160, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [(rng.random((size, size, 3)) * 255).astype(np.uint8) for _ in range(count)]


def full_frame(count: int = 6, size: int = 160):
    """A bright disc filling most of a plain frame."""
    yy, xx = np.mgrid[:size, :size]
    images = []
    for k in range(count):
        image = np.full((size, size, 3), 40, dtype=np.uint8)
        image[(yy - size / 2 - k) ** 2 + (xx - size / 2) ** 2 < (0.46 * size) ** 2] = 220
        images.append(image)
    return images


def test_the_part_box_is_found_wherever_the_part_lies():
    images, boxes = small_parts()
    for image, (top, bottom, left, right) in zip(images, boxes):
        facts = partcrop.find_part(image)
        assert facts.plain
        assert facts.box is not None
        # the found box holds the part and is at most a thumbnail pixel or two larger
        assert facts.box[0] <= top and facts.box[1] >= bottom and facts.box[2] <= left and facts.box[3] >= right
        assert facts.box[0] >= top - 3 and facts.box[1] <= bottom + 3 and facts.box[2] >= left - 3 and facts.box[3] <= right + 3
        assert np.allclose(facts.background, np.array(BACKGROUND) / 255.0, atol=1e-3)


def test_otsu_splits_two_groups():
    values = np.concatenate([np.full(100, 0.1), np.full(30, 0.8)])
    assert 0.1 < partcrop.otsu(values) <= 0.8


def test_otsu_is_the_upper_edge_of_its_bin_not_skimages_centre_nor_labelfrees_data_value():
    """partcrop.otsu, scikit-image's threshold_otsu and labelfree.otsu_cut differ in what they
    return (bench/partcrop_otsu.py on real images): a swap would move find_part's foreground."""
    from skimage.filters import threshold_otsu

    from defectscope.methods.labelfree import otsu_cut

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.1, 0.02, 900), rng.normal(0.6, 0.05, 100)]).astype(np.float32)
    edges = np.histogram_bin_edges(values, bins=256, range=(float(values.min()), float(values.max())))
    ours = partcrop.otsu(values)
    assert ours in edges[1:-1]  # a bin's upper edge
    assert ours == pytest.approx(float(threshold_otsu(values, nbins=256)) + (edges[1] - edges[0]) / 2, abs=1e-6)  # half a bin higher
    assert ours != float(threshold_otsu(values, nbins=256))
    exact = otsu_cut(values)
    assert exact in values and exact != ours and np.array_equal(values > exact, values > ours)  # same split here, another cut


def test_auto_crops_small_parts_to_one_square_side_around_each_part():
    images, boxes = small_parts()
    plan = partcrop.plan_batch(images, "auto")
    assert plan.active and plan.facts["cropped"]
    side = plan.facts["side"]
    assert 48 <= side <= 48 * 1.2 + 8  # the extent plus the margin, far below the image
    crops = plan.crop(images)
    for crop, (top, left, square), (b_top, b_bottom, b_left, b_right) in zip(crops, plan.squares, boxes):
        assert crop.shape == (side, side, 3) and square == side
        assert top <= b_top and top + side >= b_bottom and left <= b_left and left + side >= b_right
        assert 0 <= top and top + side <= 240 and 0 <= left and left + side <= 240


def test_maps_come_back_in_the_full_frame():
    images, boxes = small_parts()
    plan = partcrop.plan_batch(images, "auto")
    side = plan.facts["side"]
    n, m = len(images), 32
    # crop maps (at m x m) with a hot spot at the crop's centre, different minimum per image
    maps = np.zeros((n, m, m), dtype=np.float32)
    for k in range(n):
        maps[k] += 0.1 * k
        maps[k, m // 2, m // 2] = 5.0
    result = Result(paths=[f"i{k}" for k in range(n)], image_scores=np.zeros(n), anomaly_maps=maps,
                    masks=maps > 1.0, extras={"batch_facts": {"interval": [0.5, 1.0]}})
    pasted = plan.paste(result, (240, 240))
    scale = m / side
    frame = round(240 * scale)
    assert pasted.anomaly_maps.shape == (n, frame, frame) and pasted.masks.shape == (n, frame, frame)
    for k, (top, left, _) in enumerate(plan.squares):
        full = pasted.anomaly_maps[k]
        y, x = np.unravel_index(int(np.argmax(full)), full.shape)
        # the hot spot sits at the square's centre in the full image's coordinates
        assert abs(y / scale - (top + side / 2)) <= 2 / scale and abs(x / scale - (left + side / 2)) <= 2 / scale
        assert full.min() == pytest.approx(0.1 * k) and full.max() == 5.0
        assert pasted.masks[k].sum() == 1 and pasted.masks[k, y, x]
    assert pasted.extras["batch_facts"]["interval"] == [0.5, 1.0]
    assert pasted.extras["batch_facts"]["part_crop"]["cropped"] is True


def test_outside_the_crop_the_map_takes_its_minimum():
    images, _ = small_parts(count=4)
    plan = partcrop.plan_batch(images, "on")
    maps = np.random.default_rng(0).random((4, 16, 16)).astype(np.float32) + 1.0
    pasted = plan.paste(Result(paths=list("abcd"), image_scores=np.zeros(4), anomaly_maps=maps), (240, 240))
    for k, (top, left, side) in enumerate(plan.squares):
        scale = 16 / side
        inside = np.zeros(pasted.anomaly_maps.shape[1:], dtype=bool)
        inside[round(top * scale):round(top * scale) + 16, round(left * scale):round(left * scale) + 16] = True
        assert np.all(pasted.anomaly_maps[k][~inside] == maps[k].min())
        assert np.array_equal(np.sort(pasted.anomaly_maps[k][inside]), np.sort(maps[k].ravel()))


def test_auto_stays_off_on_a_texture_and_on_a_full_frame_part():
    plan = partcrop.plan_batch(texture(), "auto")
    assert not plan.active and "plain background" in plan.facts["reason"]
    plan = partcrop.plan_batch(full_frame(), "auto")
    assert not plan.active and plan.facts["plain_share"] == 1.0 and "short side" in plan.facts["reason"]


def test_off_never_looks():
    images, _ = small_parts(count=3)
    plan = partcrop.plan_batch(images, "off")
    assert not plan.active and plan.facts == {"mode": "off", "cropped": False, "reason": "part_crop=off"}


def test_an_all_plain_batch_falls_back_to_the_whole_image():
    plain = [np.full((120, 120, 3), 128, dtype=np.uint8) for _ in range(4)]
    assert partcrop.find_part(plain[0]).box is None
    for mode in ("auto", "on"):
        plan = partcrop.plan_batch(plain, mode)
        assert not plan.active and plan.facts["cropped"] is False and "part" in plan.facts["reason"]


def test_an_image_without_a_part_is_scored_on_its_centred_square_and_named():
    images, _ = small_parts(count=9)
    images.append(np.full_like(images[0], 100))
    plan = partcrop.plan_batch(images, "auto")
    assert plan.active and plan.facts["no_part"] == [9]
    assert plan.squares[9] == (0, 0, 240)


@pytest.fixture(scope="module")
def backbone96():
    return MuSc(MuScConfig(image_size=96)).backbone


def test_musc_scores_the_crops_and_reports_the_decision(backbone96):
    images, _ = small_parts(count=8, size=480, part=100, defect=3)
    result = MuSc(MuScConfig(image_size=96), backbone=backbone96).predict(images)
    facts = result.extras["part_crop"]
    assert facts["cropped"] and result.extras["batch_facts"]["part_crop"] == facts
    side = facts["side"]
    assert side > 96  # the crops' maps (96 px) are pasted at their own resolution
    frame = round(480 * 96 / side)
    assert result.anomaly_maps.shape == (8, frame, frame) and result.masks.shape == (8, frame, frame)
    assert int(np.argmax(result.image_scores)) == 3
    # inside each square the map is the crops' own map, scored as a batch of crops
    plan = partcrop.plan_batch(images, "auto")
    crops = MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96).predict(plan.crop(images))
    assert np.array_equal(result.image_scores, crops.image_scores)
    scale = 96 / side
    for k, (top, left, _) in enumerate(plan.squares):
        y, x = min(round(top * scale), frame - 96), min(round(left * scale), frame - 96)
        assert np.allclose(result.anomaly_maps[k, y:y + 96, x:x + 96], crops.anomaly_maps[k], atol=1e-6)
    off = MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96).predict(images)
    assert off.anomaly_maps.shape == (8, 96, 96) and "part_crop" not in off.extras
    assert result.settings["part_crop"] == "auto"


def test_auto_off_leaves_the_scores_identical(backbone96):
    images = texture(count=5, size=96)
    auto = MuSc(MuScConfig(image_size=96), backbone=backbone96).predict(images)
    off = MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96).predict(images)
    assert auto.extras["part_crop"]["cropped"] is False
    assert np.array_equal(auto.image_scores, off.image_scores) and np.array_equal(auto.anomaly_maps, off.anomaly_maps)


def test_codegraph_takes_the_crop_too(backbone96):
    images, _ = small_parts(count=6)
    result = CoDeGraph(CoDeGraphConfig(image_size=96), backbone=backbone96).predict(images)
    assert result.extras["part_crop"]["cropped"] and "communities" in result.extras


@pytest.mark.parametrize("folder", ["mvtec_bottle", "hazelnut_toy", "paper_impurities/pa_gla01_tl"])
def test_auto_stays_off_on_the_shared_parts_and_a_paper_type(shared_datasets, folder):
    from defectscope.data import mvtec_category
    from defectscope.data.io import read_image

    category = mvtec_category(shared_datasets / folder)
    images = [read_image(s.path) for s in category.test[::3]]
    plan = partcrop.plan_batch(images, "auto")
    assert not plan.active, plan.facts


def test_the_reference_bank_path_takes_the_crop_too(backbone96):
    images, _ = small_parts(count=8, size=480, part=100, defect=2)
    result = MuSc(MuScConfig(image_size=96, max_references=2), backbone=backbone96).predict(images)
    side = result.extras["part_crop"]["side"]
    assert result.extras["part_crop"]["cropped"] and result.anomaly_maps.shape == (8, round(480 * 96 / side), round(480 * 96 / side))


# --- reference mode (--good), watch's rolling bank, Dask ---------------------------------------


def _good_and_new(defect: int | None = 1):
    good, _ = small_parts(count=8, size=480, part=100, seed=1)
    new, _ = small_parts(count=4, size=480, part=100, seed=2, defect=defect)
    return good, new


def test_reference_mode_crops_the_good_and_the_new_images_alike(backbone96):
    good, new = _good_and_new()
    musc = MuSc(MuScConfig(image_size=96), backbone=backbone96).calibrate(good, 0.2)
    result = musc.predict(new)
    facts = result.extras["part_crop"]
    plan = partcrop.plan_batch(good, "auto")
    assert facts["cropped"] and facts["planned_on"] == "good images" and facts["side"] == plan.facts["side"]
    assert result.extras["batch_facts"]["part_crop"] == facts and len(facts["squares"]) == 4
    side = facts["side"]
    frame = round(480 * 96 / side)
    assert result.anomaly_maps.shape == (4, frame, frame) and result.masks.shape == (4, frame, frame)
    assert int(np.argmax(result.image_scores)) == 1
    # the same as cropping by hand and scoring the crops with the crop off: the good images'
    # leave-one-out calibration and the new images' scores both come from crops of one side
    follow = plan.follow(new, "good images")
    assert all(sq[2] == side for sq in follow.squares)
    by_hand = MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96).calibrate(plan.crop(good), 0.2)
    expected = by_hand.predict(follow.crop(new))
    assert musc.calibration.value == by_hand.calibration.value
    assert np.array_equal(result.image_scores, expected.image_scores)
    scale = 96 / side
    for k, (top, left, _) in enumerate(follow.squares):
        y, x = min(round(top * scale), frame - 96), min(round(left * scale), frame - 96)
        assert np.allclose(result.anomaly_maps[k, y:y + 96, x:x + 96], expected.anomaly_maps[k], atol=1e-6)
    off = MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96).calibrate(good, 0.2)
    assert off.calibration.value != musc.calibration.value and "part_crop" not in off.predict(new).extras


def test_reference_mode_auto_stays_off_on_a_texture(backbone96):
    good, new = texture(count=6, size=96, seed=1), texture(count=3, size=96, seed=2)
    auto = MuSc(MuScConfig(image_size=96), backbone=backbone96).calibrate(good, 0.2)
    off = MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96).calibrate(good, 0.2)
    got, expected = auto.predict(new), off.predict(new)
    assert got.extras["part_crop"]["cropped"] is False and "plain background" in got.extras["part_crop"]["reason"]
    assert auto.calibration.value == off.calibration.value
    assert np.array_equal(got.image_scores, expected.image_scores) and np.array_equal(got.anomaly_maps, expected.anomaly_maps)


def test_reference_mode_takes_mixed_sizes_when_it_crops(backbone96):
    # one predict call with images of two sizes was refused when cropping; each map is now pasted
    # into its own image's frame (the frame of the most common size, here the first's)
    good, new = _good_and_new()
    musc = MuSc(MuScConfig(image_size=96), backbone=backbone96).calibrate(good, 0.2)
    mixed = musc.predict([new[0], new[1][:400, :400]])
    # one image of another size alone: the square scales with its short side
    alone = musc.predict([new[1][:400, :400]])
    assert alone.extras["part_crop"]["squares"][0][2] == round(musc.reference_crop.side * 400 / 480)
    assert mixed.extras["part_crop"]["squares"][1] == alone.extras["part_crop"]["squares"][0]
    first = musc.predict(new[:1])
    # reference mode: an image's score does not depend on the call it comes in
    assert mixed.image_scores[0] == pytest.approx(first.image_scores[0], abs=1e-6)
    assert mixed.image_scores[1] == pytest.approx(alone.image_scores[0], abs=1e-6)
    assert mixed.anomaly_maps.shape[1:] == first.anomaly_maps.shape[1:]
    assert np.allclose(mixed.anomaly_maps[0], first.anomaly_maps[0], atol=1e-6)


def test_codegraph_reference_mode_crops_too(backbone96):
    good, new = _good_and_new()
    result = CoDeGraph(CoDeGraphConfig(image_size=96), backbone=backbone96).calibrate(good, 0.2).predict(new)
    assert result.extras["part_crop"]["cropped"] and int(np.argmax(result.image_scores)) == 1


def test_watch_rolling_bank_crops_as_decided_on_its_first_batch(backbone96):
    from defectscope.methods.rolling import ZeroShotScorer

    images, _ = small_parts(count=10, size=480, part=100, seed=3, defect=8)
    lines: list[str] = []
    auto = ZeroShotScorer(MuSc(MuScConfig(image_size=96), backbone=backbone96), 0.2, 10, 6, log=lines.append)
    rows = [row for k, image in enumerate(images) for row in auto.score(f"i{k}", image, 0.0)]
    assert auto.crop is not None and auto.crop.active and any("part crop: on" in line for line in lines)
    plan = partcrop.plan_batch(images[:6], "auto")
    assert auto.crop.side == plan.side
    # the same stream cropped by hand (the first batch's side around each part), crop off
    off = ZeroShotScorer(MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96), 0.2, 10, 6)
    crops = plan.follow(images, "the first batch").crop(images)
    expected = [row for k, crop in enumerate(crops) for row in off.score(f"i{k}", crop, 0.0)]
    assert [r.key for r in rows] == [r.key for r in expected]
    frame = round(480 * 96 / plan.side)
    for got, want in zip(rows, expected):
        assert got.score == pytest.approx(want.score, abs=1e-6) and got.anomalous == want.anomalous
        assert got.anomaly_map.shape == (frame, frame) and want.anomaly_map.shape == (96, 96)
        assert float(got.anomaly_map.max()) == pytest.approx(float(want.anomaly_map.max()), abs=1e-6)
    assert rows[8].anomalous and rows[8].score == max(r.score for r in rows)


def test_watch_rolling_bank_off_computes_features_on_arrival(backbone96):
    from defectscope.methods.rolling import ZeroShotScorer

    images = texture(count=4, size=96)
    off = ZeroShotScorer(MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96), 0.2, 10, 4)
    off.score("a", images[0], 0.0)
    assert off.crop is None and off.pending[0][2] is not None
    auto = ZeroShotScorer(MuSc(MuScConfig(image_size=96), backbone=backbone96), 0.2, 10, 4)
    for k, image in enumerate(images[:3]):
        auto.score(f"i{k}", image, 0.0)
    assert auto.pending[0][2] is None  # waits for the decision
    rows = auto.score("i3", images[3], 0.0)
    expected = [r for k, image in enumerate(images[1:]) for r in off.score(f"i{k + 1}", image, 0.0)]
    assert auto.crop is not None and not auto.crop.active
    assert len(expected) == 4 and [round(r.score, 6) for r in rows] == [round(r.score, 6) for r in expected]


def test_dask_takes_the_crop(backbone96):
    distributed = pytest.importorskip("distributed")
    images, _ = small_parts(count=6, size=240, part=48, defect=2)
    local = MuSc(MuScConfig(image_size=96), backbone=backbone96).predict(images)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        got = MuSc(MuScConfig(image_size=96, scheduler=cluster.scheduler_address)).predict(images)
    assert got.extras["part_crop"]["cropped"] and got.anomaly_maps.shape == local.anomaly_maps.shape
    assert np.allclose(got.anomaly_maps, local.anomaly_maps, atol=1e-5)
    assert np.abs(got.image_scores - local.image_scores).max() < 1e-5


def test_a_good_set_of_mixed_sizes_still_crops(backbone96):
    # hazelnut_toy's train/good holds one 512 x 522 image among 512 x 512 ones: the good images
    # are never pasted, so their sizes need not agree (plan_batch's one_size=True still refuses them)
    good, new = _good_and_new()
    good[3] = np.concatenate([good[3], np.broadcast_to(good[3][-1:], (10, 480, 3))], axis=0)
    assert not partcrop.plan_batch(good, "auto").active
    plan = partcrop.plan_batch(good, "auto", one_size=False)
    assert plan.active and plan.squares[3][2] == plan.side
    result = MuSc(MuScConfig(image_size=96), backbone=backbone96).calibrate(good, 0.2).predict(new)
    assert result.extras["part_crop"]["cropped"] and int(np.argmax(result.image_scores)) == 1


# --- a batch of mixed image sizes (each map pasted into its own image's frame) -----------------


def _wider(image: np.ndarray, extra: int = 10) -> np.ndarray:
    """The image with ``extra`` columns of background added on the right (480 x 490 from 480 x 480)."""
    return np.concatenate([image, np.broadcast_to(image[:, -1:], (image.shape[0], extra, 3))], axis=1)


def test_a_batch_of_mixed_sizes_crops_and_pastes_each_map_into_its_own_frame(backbone96):
    # the batch path refused to crop when the sizes differed (one frame for the pasted maps), so a
    # folder holding one 512 x 522 image among 512 x 512 ones silently stayed uncropped
    images, _ = small_parts(count=8, size=480, part=100, defect=3)
    images[5] = _wider(images[5])
    result = MuSc(MuScConfig(image_size=96), backbone=backbone96).predict(images)
    facts = result.extras["part_crop"]
    assert facts["cropped"] and "differ in size" not in facts["reason"]
    side = facts["side"]
    frame = round(480 * 96 / side)  # the frame of the most common size (480 x 480)
    assert result.anomaly_maps.shape == (8, frame, frame) and result.masks.shape == (8, frame, frame)
    assert int(np.argmax(result.image_scores)) == 3
    # the scores are the crops' own, each image cut around its part at the batch's side
    plan = partcrop.plan_batch(images, "auto", one_size=False)
    assert facts["squares"] == [list(sq) for sq in plan.squares] and all(sq[2] == side for sq in plan.squares)
    crops = MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96).predict(plan.crop(images))
    assert np.array_equal(result.image_scores, crops.image_scores)
    # the wider image's map: its square scaled into the frame along each axis, its minimum outside
    top, left, _ = plan.squares[5]
    inside = np.argwhere(result.anomaly_maps[5] > crops.anomaly_maps[5].min())
    (y0, x0), (y1, x1) = inside.min(axis=0), inside.max(axis=0) + 1
    sy, sx = frame / 480, frame / 490
    assert abs(y0 - top * sy) <= 1 and abs(x0 - left * sx) <= 1
    assert abs((y1 - y0) - side * sy) <= 1 and abs((x1 - x0) - side * sx) <= 1
    # the others are pasted as in a batch of one size: the crop's map at the frame's scale
    scale = 96 / side
    for k, (top, left, _) in enumerate(plan.squares):
        if k != 5:
            y, x = min(round(top * scale), frame - 96), min(round(left * scale), frame - 96)
            assert np.allclose(result.anomaly_maps[k, y:y + 96, x:x + 96], crops.anomaly_maps[k], atol=1e-6)


def test_a_batch_of_one_size_plans_the_same_with_or_without_one_size():
    images, _ = small_parts(count=8, size=480, part=100, defect=3)
    one, mixed = partcrop.plan_batch(images, "auto"), partcrop.plan_batch(images, "auto", one_size=False)
    assert one.active and one.squares == mixed.squares and one.facts == mixed.facts and one.side == mixed.side


def test_a_texture_of_mixed_sizes_still_scores_as_with_the_crop_off(backbone96):
    images = texture(count=5, size=96)
    images[2] = _wider(images[2], 6)
    auto = MuSc(MuScConfig(image_size=96), backbone=backbone96).predict(images)
    off = MuSc(MuScConfig(image_size=96, part_crop="off"), backbone=backbone96).predict(images)
    assert auto.extras["part_crop"]["cropped"] is False and "differ in size" not in auto.extras["part_crop"]["reason"]
    assert np.array_equal(auto.image_scores, off.image_scores) and np.array_equal(auto.anomaly_maps, off.anomaly_maps)


def test_watch_records_its_part_crop_decision_in_its_marker_and_report(backbone96, tmp_path):
    """The rolling bank's crop decision (made on the first batch, and again on the rebuilt bank
    after a restart) goes to the watch's settings as batch_facts: the marker file and report.html."""
    from image_helpers import save_images

    from defectscope.methods.rolling import ZeroShotScorer
    from defectscope.watch import Watcher

    images, _ = small_parts(count=6, size=240, part=48, seed=3, defect=5)
    save_images(tmp_path / "in", images, "part_{:03d}.png")
    out = tmp_path / "out"

    def watch() -> ZeroShotScorer:
        scorer = ZeroShotScorer(MuSc(MuScConfig(image_size=96), backbone=backbone96), 0.2, 10, 5)
        watcher = Watcher(tmp_path / "in", out, scorer, settle=0.0, give_up=1.0, poll=0.05, settings={"scorer": "rolling bank"},
                          log=lambda line: None)
        assert "batch_facts" not in json.loads((out / "defectscope-run.json").read_text())  # written at start, before the decision
        assert watcher.run(exit_after_idle=0.2).interrupted is False
        return scorer

    for run in ("first", "restart"):
        scorer = watch()
        marker = json.loads((out / "defectscope-run.json").read_text())
        assert scorer.crop is not None and scorer.crop.active, run
        assert marker["batch_facts"] == {"part_crop": scorer.crop.facts} and marker["batch_facts"]["part_crop"]["cropped"], run
        assert "batch_facts" in (out / "report.html").read_text() and "plain background and a small part" in (out / "report.html").read_text()
