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
