"""The canonical pose (defectscope.methods.canonical): orientation, turn, gate, maps back."""

import math

import numpy as np
import pytest

from defectscope.methods import canonical


def stripes(angle: float, shape=(120, 160), period: float = 9.0) -> np.ndarray:
    """RGB uint8 stripes whose gradient points at ``angle`` degrees (x right, y down)."""
    height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    theta = math.radians(angle)
    phase = ((xx - width / 2) * math.cos(theta) + (yy - height / 2) * math.sin(theta)) / period
    grey = np.clip(127.5 + 100.0 * np.cos(2.0 * math.pi * phase), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def folded_error(a: float, b: float, fold: int) -> float:
    return abs(canonical.folded(a - b, fold))


@pytest.mark.parametrize("fold", [2, 4])
def test_turned_stripes_come_back_to_one_angle(fold):
    angles = [5.0, 28.0, 51.0, 77.0, 112.0, 143.0]
    images = [stripes(a) for a in angles]
    measured = canonical.batch_orientations(images, fold)
    for angle, (found, coherence) in zip(angles, measured):
        assert coherence > 0.9
        assert folded_error(found, angle, fold) < 3.0
    plan = canonical.plan_batch(images, "auto", fold)
    assert plan.active and plan.facts["spread_degrees"] > canonical.MIN_SPREAD
    after = [canonical.orientation(canonical.thumbnail(image), fold)[0] for image in plan.warp(images)]
    reference = plan.facts["reference_degrees"]
    assert max(folded_error(a, reference, fold) for a in after) < 3.0


def mesh(angle: float, shape=(120, 160)) -> np.ndarray:
    """A square mesh: two stripe sets at right angles (the two directions cancel at fold 2)."""
    both = stripes(angle, shape).astype(np.float64) + stripes(angle + 90.0, shape)
    return (both / 2).astype(np.uint8)


def test_a_square_mesh_takes_fold_four():
    angles = [3.0, 14.0, 26.0, 37.0, 58.0, 71.0]
    images = [mesh(a) for a in angles]
    plan = canonical.plan_batch(images, "auto")
    facts = plan.facts
    assert facts["median_coherence_by_fold"]["2"] < canonical.MIN_COHERENCE[2]
    assert plan.active and facts["fold"] == 4
    after = [canonical.orientation(canonical.thumbnail(image), 4)[0] for image in plan.warp(images)]
    assert max(folded_error(a, facts["reference_degrees"], 4) for a in after) < 3.0


def test_gate_stays_off_on_aligned_and_isotropic_batches():
    aligned = [stripes(a) for a in (0.0, 1.0, -1.5, 0.5)]
    plan = canonical.plan_batch(aligned, "auto")
    assert not plan.active and "agree" in plan.facts["reason"]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(4)]
    plan = canonical.plan_batch(noise, "auto")
    assert not plan.active and "coherence" in plan.facts["reason"]
    assert not canonical.plan_batch(aligned, "off").active
    with pytest.raises(ValueError):
        canonical.plan_batch(aligned, "sometimes")


def test_turn_has_no_empty_corners_and_keeps_dtype():
    image = np.full((64, 96, 3), 200, dtype=np.uint8)
    turned = canonical.turn_image(image, 37.0)
    assert turned.dtype == np.uint8 and turned.shape == image.shape
    assert turned.min() == 200  # mirrored, never filled with black


@pytest.mark.parametrize("shape", [(80, 80), (60, 100)])
def test_maps_return_to_their_frame(shape):
    """A blob drawn in the image frame, carried into the turned frame like the image, comes back
    to where it was; outside the turned image the map holds its minimum."""
    frame = (40, 40)
    height, width = shape
    yy, xx = np.mgrid[:frame[0], :frame[1]]
    ys, xs = (yy + 0.5) * height / frame[0], (xx + 0.5) * width / frame[1]
    blob_y, blob_x = 0.3 * height, 0.7 * width
    sigma = 0.08 * min(height, width)  # round in pixels, so turning keeps its shape
    original = np.exp(-(((ys - blob_y) / sigma) ** 2 + ((xs - blob_x) / sigma) ** 2)).astype(np.float32)
    turn = 30.0
    # the image content turned by +turn about the centre moves the blob to c + R(turn)(p - c)
    theta = math.radians(turn)
    cx, cy = width / 2.0, height / 2.0
    tx = cx + math.cos(theta) * (blob_x - cx) - math.sin(theta) * (blob_y - cy)
    ty = cy + math.sin(theta) * (blob_x - cx) + math.cos(theta) * (blob_y - cy)
    turned_map = np.exp(-(((ys - ty) / sigma) ** 2 + ((xs - tx) / sigma) ** 2)).astype(np.float32)
    masks = turned_map[None] > 0.5
    back, back_masks = canonical.unturn_maps(turned_map[None], masks, [turn], [shape])
    peak = np.unravel_index(np.argmax(back[0]), frame)
    want = np.unravel_index(np.argmax(original), frame)
    assert abs(peak[0] - want[0]) <= 1 and abs(peak[1] - want[1]) <= 1
    assert np.corrcoef(back[0].ravel(), original.ravel())[0, 1] > 0.95
    assert back_masks[0].sum() > 0 and (back_masks[0] <= (original > 0.25)).all()
    # an untouched image keeps its map byte for byte
    same, _ = canonical.unturn_maps(turned_map[None], None, [0.0], [shape])
    assert np.array_equal(same, turned_map[None])


def test_turned_image_and_unturned_map_agree():
    """turn_image and unturn_maps use the same geometry: a bright square turned with the image
    and read back through unturn_maps lands on the square's place."""
    image = np.zeros((90, 120), dtype=np.uint8)
    image[20:35, 80:100] = 255
    turned = canonical.turn_image(image, -50.0)
    back, _ = canonical.unturn_maps(turned[None].astype(np.float32), None, [-50.0], [image.shape])
    inside = back[0][20:35, 80:100].mean()
    assert inside > 150 and back[0][60:, :40].mean() < 20


def test_expanded_canvas_keeps_the_whole_image():
    """With ``expand`` the turned canvas holds the whole image: a map drawn from the turned image
    comes back everywhere, corners included (nothing falls outside)."""
    image = np.zeros((50, 110), dtype=np.uint8)
    image[2:12, 2:20] = 255  # a corner that a same-size turn would cut off
    turned = canonical.turn_image(image, 70.0, expand=True)
    assert turned.shape == canonical.canvas_shape(image.shape, 70.0, expand=True)
    assert turned.shape[0] > image.shape[0]
    back, _ = canonical.unturn_maps(turned[None].astype(np.float32), None, [70.0], [image.shape], expand=True)
    assert back.shape == (1, *turned.shape)  # the map keeps its size, now covering the image
    resized = np.asarray(torch_resize(back[0], image.shape))
    assert resized[2:12, 2:20].mean() > 120 and resized[25:, 40:].mean() < 20
    cut, _ = canonical.unturn_maps(canonical.turn_image(image, 70.0)[None].astype(np.float32), None, [70.0], [image.shape])
    assert cut[0][2:12, 2:20].mean() < 60  # the same-size turn loses that corner


def torch_resize(array, shape):
    import torch
    import torch.nn.functional as F

    return F.interpolate(torch.from_numpy(array)[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


# --- the detector path --------------------------------------------------------------------------

from defectscope.errors import ConfigError  # noqa: E402
from defectscope.methods.musc import MuSc  # noqa: E402
from defectscope.methods.zeroshot_config import CoDeGraphConfig, MuScConfig  # noqa: E402


@pytest.fixture(scope="module")
def backbone64():
    return MuSc(MuScConfig(image_size=64)).backbone


def turned_stripes(angles, defect: int | None = None, size: int = 96) -> list[np.ndarray]:
    images = [stripes(a, (size, size), period=6.0) for a in angles]
    if defect is not None:
        images[defect][40:52, 40:52] = 255  # a bright square breaks the stripes
    return images


def test_musc_turns_a_directional_batch_and_reports_it(backbone64):
    angles = [0.0, 23.0, 47.0, 71.0, 98.0, 122.0, 151.0, 169.0]
    images = turned_stripes(angles, defect=5)
    result = MuSc(MuScConfig(image_size=64, canonical_pose="auto"), backbone=backbone64).predict(images)
    facts = result.extras["canonical_pose"]
    assert facts["turned"] and result.extras["batch_facts"]["canonical_pose"] == facts
    assert result.anomaly_maps.shape[0] == 8 and int(np.argmax(result.image_scores)) == 5
    # the defect's map peak comes back onto the square in its own frame
    peak = np.unravel_index(np.argmax(result.anomaly_maps[5]), result.anomaly_maps.shape[1:])
    scale = result.anomaly_maps.shape[1] / 96
    assert 30 * scale <= peak[0] <= 62 * scale and 30 * scale <= peak[1] <= 62 * scale
    assert result.settings["canonical_pose"] == "auto"


def test_the_reference_bank_path_takes_the_turn_too(backbone64):
    images = turned_stripes([0.0, 31.0, 62.0, 93.0, 124.0, 155.0], defect=1)
    musc = MuSc(MuScConfig(image_size=64, canonical_pose="auto", max_references=2), backbone=backbone64)
    assert musc._banked(len(images))  # six images against a bank of two references
    result = musc.predict(images)
    assert result.extras["canonical_pose"]["turned"] and result.anomaly_maps.shape[0] == 6
    assert np.isfinite(result.anomaly_maps).all()


def test_auto_off_on_aligned_stripes_leaves_the_scores_identical(backbone64):
    images = turned_stripes([0.0, 0.5, -0.5, 1.0, 0.0, -1.0], defect=2)
    auto = MuSc(MuScConfig(image_size=64, canonical_pose="auto"), backbone=backbone64).predict(images)
    off = MuSc(MuScConfig(image_size=64, canonical_pose="off"), backbone=backbone64).predict(images)
    assert auto.extras["canonical_pose"]["turned"] is False and "canonical_pose" not in off.extras
    assert np.array_equal(auto.image_scores, off.image_scores) and np.array_equal(auto.anomaly_maps, off.anomaly_maps)


def test_off_is_the_default_and_codegraph_reads_auto_as_off(backbone64):
    assert MuScConfig().canonical_pose == "off" and CoDeGraphConfig().canonical_pose == "off"
    from defectscope.methods.codegraph import CoDeGraph

    images = turned_stripes([0.0, 23.0, 47.0, 71.0, 98.0, 122.0, 151.0, 169.0], defect=5)
    auto = CoDeGraph(CoDeGraphConfig(image_size=64, canonical_pose="auto"), backbone=backbone64).predict(images)
    off = CoDeGraph(CoDeGraphConfig(image_size=64, canonical_pose="off"), backbone=backbone64).predict(images)
    facts = auto.extras["canonical_pose"]
    assert facts["turned"] is False and "read as off" in facts["reason"] and auto.extras["batch_facts"]["canonical_pose"] == facts
    assert "canonical_pose" not in off.extras
    assert np.array_equal(auto.image_scores, off.image_scores) and np.array_equal(auto.anomaly_maps, off.anomaly_maps)


def test_reference_mode_runs_with_auto(backbone64):
    musc = MuSc(MuScConfig(image_size=64, canonical_pose="auto"), backbone=backbone64)
    musc.calibrate(turned_stripes([0.0, 0.5, -0.5, 1.0, 0.0, -1.0, 0.2, -0.2, 0.7, -0.7]), 0.1)
    result = musc.predict(turned_stripes([0.0, 1.0], defect=1))
    assert result.anomaly_maps.shape[0] == 2 and "canonical_pose" not in result.extras  # scored as they are


def test_other_paths_refuse_canonical_pose_on(backbone64):
    with pytest.raises(ConfigError, match="canonical_pose"):
        CoDeGraphConfig(canonical_pose="on")
    musc = MuSc(MuScConfig(image_size=64, canonical_pose="on"), backbone=backbone64)
    with pytest.raises(ConfigError, match="reference mode"):
        musc.calibrate(turned_stripes([0.0] * 6), 0.1)


@pytest.mark.parametrize("folder", ["mvtec_bottle", "magnetic_tile", "paper_impurities/pa_fvn01_tl"])
def test_auto_stays_off_on_the_aligned_shared_batches(shared_datasets, folder):
    from defectscope.data import discover
    from defectscope.data.io import read_image

    category = discover(shared_datasets / folder)[0]
    images = [read_image(s.path) for s in category.test[::4][:40]]
    plan = canonical.plan_batch(images, "auto")
    assert not plan.active, plan.facts


# --- the cut-off corners, filled from the unturned pass ---------------------------------------


def test_covered_frames_mark_the_corners_a_turn_cuts_off():
    covered = canonical.covered_frames([45.0, 0.0], [(96, 96), (96, 96)], (48, 48))
    assert covered[1].all()  # an image left as it is loses nothing
    for corner in (covered[0][:4, :4], covered[0][:4, -4:], covered[0][-4:, :4], covered[0][-4:, -4:]):
        assert not corner.any()
    assert covered[0][12:36, 12:36].all()
    # the same region unturn_maps reads from the turned map ("min" shows where it does not)
    ramp = np.linspace(1.0, 2.0, 48 * 48, dtype=np.float32).reshape(1, 48, 48)
    back, _ = canonical.unturn_maps(ramp, None, [45.0], [(96, 96)], outside="min")
    assert np.all(back[0][~covered[0]] == ramp.min())


def test_fill_keeps_the_turned_map_inside_and_scales_the_unturned_one_in_the_corners():
    rng = np.random.default_rng(0)
    covered = canonical.covered_frames([40.0, -60.0, 0.0], [(64, 64)] * 3, (32, 32))
    turned = rng.normal(5.0, 2.0, (3, 32, 32)).astype(np.float32)
    plain = rng.normal(0.3, 0.05, (3, 32, 32)).astype(np.float32)
    plain[0, 0, 0] = 2.0  # a corner far above anything the covered region holds
    for matching in ("quantile", "affine"):
        filled = canonical.fill_corners(turned, plain, covered, matching, "none")
        assert np.array_equal(filled[covered], turned[covered])
        corners = filled[~covered]
        assert abs(float(np.median(corners)) - 5.0) < 1.0  # on the turned maps' scale, not 0.3
        assert filled[0, 0, 0] > turned[covered].max()  # a corner above everything stays above
    # the quantile map keeps the unturned pass's order everywhere ("unturned": its map throughout)
    whole = canonical.fill_corners(turned, plain, covered, "quantile", "unturned")
    order = np.argsort(plain.reshape(-1), kind="stable")
    assert np.all(np.diff(whole.reshape(-1)[order]) >= 0)
    low = canonical.fill_corners(turned, plain, covered, "quantile", "min")
    assert np.all(low[covered] <= turned[covered])
    with pytest.raises(ValueError, match="blend"):
        canonical.fill_corners(turned, plain, covered, "quantile", "max")


def corner_defect_batch():
    """Wide stripes, most of them vertical, three across: the batch turns those three by about
    90 degrees, and a same-size turn cuts off both ends of a wide image. In one of them a
    bright square in such an end. Returns the images, that image's index and the square's rows
    and columns (pixels of the 96 x 160 images)."""
    angles = [0.0, 1.0, -1.0, 0.5, -0.5, 0.0, 90.0, 91.0, 89.0]
    images = [stripes(a, (96, 160), period=6.0) for a in angles]
    plan = canonical.plan_batch(images, "auto")
    index = 7
    assert plan.active and abs(abs(plan.turns[index]) - 90.0) < 5.0, plan.facts
    covered = canonical.covered_frames(plan.turns, [(96, 160)] * len(images), (96, 160))[index]
    rows, cols = slice(40, 52), slice(6, 18)
    assert not covered[rows, cols].any()  # the whole square lies in a cut-off end
    images[index][rows, cols] = 255
    return images, index, rows, cols


def test_a_defect_in_a_cut_off_corner_is_found_only_with_the_fill(backbone64, monkeypatch):
    images, index, rows, cols = corner_defect_batch()

    def corner_rank(result):
        """The share of the other images whose same corner peaks below the square's (1: the
        square stands above all of them) and whether the defect image is outlined there."""
        down, across = result.anomaly_maps.shape[1] / 96, result.anomaly_maps.shape[2] / 160
        r = slice(int(rows.start * down), int(np.ceil(rows.stop * down)))
        c = slice(int(cols.start * across), int(np.ceil(cols.stop * across)))
        peaks = result.anomaly_maps[:, r, c].reshape(len(images), -1).max(axis=1)
        return float(np.mean(peaks[index] > np.delete(peaks, index))), bool(result.masks[index][r, c].any())

    config = MuScConfig(image_size=64, canonical_pose="auto")
    filled = MuSc(config, backbone=backbone64).predict(images)
    assert filled.extras["canonical_pose"]["turned"] and filled.extras["canonical_pose"]["corner_fill"]["fill"] == canonical.FILL
    rank, _ = corner_rank(filled)
    assert rank == 1.0
    # the verdict follows the turned pass's image scores; an image is outlined exactly when it
    # is anomalous, as on the default path
    assert np.array_equal(filled.masks.any(axis=(1, 2)), filled.is_anomalous)

    # every pixel is the unturned pass's (FILL_BLEND "unturned"), brought to the turned pass's
    # scale by one increasing map: the pixels keep the order of the default path's maps
    off = MuSc(MuScConfig(image_size=64, canonical_pose="off"), backbone=backbone64).predict(images)
    order = np.argsort(off.anomaly_maps.reshape(-1), kind="stable")
    assert np.all(np.diff(filled.anomaly_maps.reshape(-1)[order]) >= 0)
    assert not np.array_equal(filled.image_scores, off.image_scores)  # the image scores are not the default's

    monkeypatch.setattr(canonical, "FILL", "edge")  # the rule before the fill
    edge = MuSc(config, backbone=backbone64).predict(images)
    assert edge.extras["canonical_pose"]["corner_fill"]["fill"] == "edge"
    assert np.array_equal(edge.image_scores, filled.image_scores)  # the image scores are the turned pass's either way
    rank, outlined = corner_rank(edge)
    assert rank <= 0.5 and not outlined


def test_the_recorded_batch_facts_are_the_turned_passs(backbone64):
    """With the corner fill two passes run (turned, then unturned); the MSM interval recorded in
    extras and batch_facts is the one of the turned pass, which gives the image scores, and the
    unturned pass's facts are recorded apart, under corner_fill."""
    images, _, _, _ = corner_defect_batch()
    result = MuSc(MuScConfig(image_size=64, canonical_pose="auto"), backbone=backbone64).predict(images)
    probe = MuSc(MuScConfig(image_size=64), backbone=backbone64)
    turned = probe.patch_scores(canonical.plan_batch(images, "auto").warp(images)).facts
    unturned = probe.patch_scores(images).facts
    # the gate opens on the unturned batch only: the two passes' intervals differ
    assert unturned["several_looks"] and not turned["several_looks"] and unturned["interval"] != turned["interval"]
    for facts in (result.extras, result.extras["batch_facts"]):
        assert {key: facts[key] for key in turned} == turned
    assert result.extras["canonical_pose"]["corner_fill"]["unturned_pass_facts"] == unturned
    assert result.extras["batch_facts"]["canonical_pose"]["corner_fill"]["unturned_pass_facts"] == unturned
