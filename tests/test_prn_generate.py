"""PRN anomaly generation: exact masks, seeded output, foreground placement, balanced epochs."""

from __future__ import annotations

import numpy as np
import pytest

from defectscope.methods.prn.generate import (
    AnomalyGenerator,
    epoch_plan,
    estimate_foreground,
    paste_real_defect,
    perlin_mask,
    perlin_noise,
    pseudo_defect,
)

SIZE = 64


def _texture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 120, size=(SIZE, SIZE, 3)).astype(np.uint8)


def _defect() -> tuple[np.ndarray, np.ndarray]:
    image = _texture(99)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[20:30, 10:26] = True
    mask[30:34, 10:14] = True
    image[mask] = 250
    return image, mask


def test_perlin_noise_is_seeded_and_bounded():
    first = perlin_noise((32, 48), (4, 6), np.random.default_rng(3))
    second = perlin_noise((32, 48), (4, 6), np.random.default_rng(3))
    assert np.array_equal(first, second)
    assert first.shape == (32, 48) and np.abs(first).max() <= 1.5 and first.std() > 0.05


def test_pasted_mask_is_exactly_the_changed_pixels():
    normal = _texture(1)
    image, mask = _defect()
    for seed in range(10):
        out, pasted = paste_real_defect(normal, image, mask, np.random.default_rng(seed))
        assert pasted.dtype == bool and pasted.any()
        assert np.array_equal(out[~pasted], normal[~pasted])
        assert (out[pasted] != normal[pasted]).any(axis=-1).all()
        assert 0.5 * mask.sum() <= pasted.sum() <= 1.7 * mask.sum()


def test_paste_lands_on_the_foreground():
    normal = np.full((SIZE, SIZE, 3), 10, dtype=np.uint8)
    normal[16:48, 16:48] = 200
    foreground = estimate_foreground(normal)
    assert foreground[20:44, 20:44].all() and not foreground[:8].any()
    image, mask = _defect()
    small = np.zeros_like(mask)
    small[20:23, 20:23] = True
    for seed in range(10):
        _, pasted = paste_real_defect(normal, image, small, np.random.default_rng(seed), foreground=foreground)
        ys, xs = np.nonzero(pasted)
        assert foreground[int(ys.mean()), int(xs.mean())]


def test_uniform_texture_counts_as_whole_foreground():
    assert estimate_foreground(_texture(5)).all()


def test_pseudo_defect_blends_only_inside_mask_with_the_alpha_it_returns():
    normal, second = _texture(2), _texture(7)
    others = [_texture(3), _texture(4)]
    everywhere = np.ones(normal.shape[:2], dtype=bool)
    for seed in range(10):
        out, mask, alpha = pseudo_defect(normal, np.random.default_rng(seed), other_images=others, foreground=everywhere)
        assert mask.any()
        assert np.array_equal(out[~mask], normal[~mask])
        assert (out[mask] != normal[mask]).any()
        # the same draw on another normal image: inside the mask out = round((1 - alpha) normal +
        # alpha texture), so the two outputs differ by (1 - alpha) times the two normals' difference
        out2, mask2, alpha2 = pseudo_defect(second, np.random.default_rng(seed), other_images=others, foreground=everywhere)
        assert np.array_equal(mask, mask2) and alpha == alpha2
        expected = (1 - alpha) * (normal[mask].astype(np.float64) - second[mask])
        assert np.abs(out[mask].astype(np.float64) - out2[mask] - expected).max() <= 1.0


def test_pseudo_defect_is_seeded():
    normal = _texture(2)
    first = pseudo_defect(normal, np.random.default_rng(7))
    second = pseudo_defect(normal, np.random.default_rng(7))
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])


def test_perlin_mask_respects_allowed_region():
    allowed = np.zeros((SIZE, SIZE), dtype=bool)
    allowed[:, :20] = True
    mask = perlin_mask((SIZE, SIZE), np.random.default_rng(0), allowed=allowed)
    assert mask.any() and not mask[:, 20:].any()


def test_epoch_plan_is_balanced():
    plan = epoch_plan(40, 7, True, (0.5, 0.25, 0.25), np.random.default_rng(0))
    kinds = [kind for _, kind in plan]
    assert kinds.count("normal") == 20 and kinds.count("real") == 10 and kinds.count("pseudo") == 10
    assert {index for index, _ in plan} == set(range(7))
    no_real = [kind for _, kind in epoch_plan(40, 7, False, (0.5, 0.25, 0.25), np.random.default_rng(0))]
    assert no_real.count("real") == 0 and no_real.count("pseudo") == 20


@pytest.mark.parametrize("kind", ["normal", "real", "pseudo"])
def test_generator_samples(kind):
    generator = AnomalyGenerator([_texture(i) for i in range(3)], [_defect()], image_size=32)
    sample = generator.make(1, kind, np.random.default_rng(0))
    assert sample.image.shape == (32, 32, 3) and sample.mask.shape == (32, 32)
    assert sample.kind == kind and sample.mask.any() == (kind != "normal")


# ---- pseudo-defect families (thin, stain, missing) -------------------------------------------

def _skeleton_and_width(mask: np.ndarray) -> tuple[int, float]:
    """(skeleton length, width): twice the distance to the mask's edge that 95 % of its pixels
    stay within (a junction or a crossing may be wider)."""
    from scipy import ndimage
    from skimage.morphology import skeletonize

    inside = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1][mask]
    return int(skeletonize(mask).sum()), 2.0 * float(np.percentile(inside, 95))


@pytest.mark.parametrize("family", ["thin", "stain", "missing", "uneven"])
def test_family_changes_exactly_its_mask_and_is_seeded(family):
    normal = np.random.default_rng(5).integers(60, 200, size=(96, 96, 3)).astype(np.uint8)
    for seed in range(6):
        out, mask, _ = pseudo_defect(normal, np.random.default_rng(seed), families=(family,))
        again, mask_again, _ = pseudo_defect(normal, np.random.default_rng(seed), families=(family,))
        assert np.array_equal(out, again) and np.array_equal(mask, mask_again)
        assert mask.any() and np.array_equal(out[~mask], normal[~mask])
        assert (out[mask] != normal[mask]).any(axis=-1).all()


def test_thin_family_is_narrow_and_long():
    side = 128
    normal = np.full((side, side, 3), 128, dtype=np.uint8)
    for seed in range(8):
        _, mask, _ = pseudo_defect(normal, np.random.default_rng(seed), families=("thin",))
        length, width = _skeleton_and_width(mask)
        assert width <= 5.0, f"seed {seed}: a crack {width} px wide"
        assert length >= 0.12 * side, f"seed {seed}: a crack only {length} px long"
        assert mask.mean() < 0.05


def test_stain_family_is_low_contrast_and_missing_family_is_large():
    normal = np.full((128, 128, 3), 120, dtype=np.uint8)
    for seed in range(6):
        out, mask, _ = pseudo_defect(normal, np.random.default_rng(seed), families=("stain",))
        shift = np.abs(out[mask].astype(int) - 120)
        assert 1 <= shift.min() and shift.max() <= 21
        _, big, _ = pseudo_defect(normal, np.random.default_rng(seed), families=("missing",))
        assert big.mean() >= 0.02


def test_uneven_family_is_large_and_faint():
    normal = np.full((128, 128, 3), 120, dtype=np.uint8)
    areas = []
    for seed in range(12):
        out, mask, _ = pseudo_defect(normal, np.random.default_rng(seed), families=("uneven",))
        shift = np.abs(out[mask].astype(int) - 120)
        assert 1 <= shift.min() and shift.max() <= 15, f"seed {seed}: shifts {shift.min()}-{shift.max()}"
        areas.append(mask.mean())
    assert min(areas) >= 0.05 and float(np.median(areas)) >= 0.15


def test_one_family_keeps_the_perlin_output_and_mixed_families_all_occur():
    normal = _texture(3)
    for seed in range(4):
        plain = pseudo_defect(normal, np.random.default_rng(seed))
        named = pseudo_defect(normal, np.random.default_rng(seed), families=("perlin",))
        assert np.array_equal(plain[0], named[0]) and np.array_equal(plain[1], named[1])
    widths = [_skeleton_and_width(pseudo_defect(np.full((96, 96, 3), 128, np.uint8), np.random.default_rng(s),
                                                families=("perlin", "thin"))[1])[1] for s in range(16)]
    assert min(widths) <= 5.0 < max(widths)
    with pytest.raises(ValueError, match="families"):
        pseudo_defect(normal, np.random.default_rng(0), families=("cracks",))


def test_generator_passes_its_families_on():
    generator = AnomalyGenerator([np.full((64, 64, 3), 128, np.uint8)], image_size=64, families=("thin",))
    masks = [generator.make(0, "pseudo", np.random.default_rng(s)).mask for s in range(4)]
    assert all(_skeleton_and_width(m)[1] <= 5.0 for m in masks)


def test_relative_paste_keeps_a_faint_defect_faint_on_another_exposure():
    """A defect 6 grey levels above its bright surroundings (200) pasted onto a dark tile (50):
    "relative" lands it about 6 levels above the dark tile (contrast jitter 0.85-1.15), "absolute"
    near its own bright level (a 150-level step the real defect never had); the random draws
    are the same, so the pasted mask is the same."""
    source = np.full((SIZE, SIZE, 3), 200, np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[20:36, 16:40] = True
    source[mask] = 206
    target = np.full((SIZE, SIZE, 3), 50, np.uint8)
    everywhere = np.ones((SIZE, SIZE), dtype=bool)
    rel_image, rel_mask = paste_real_defect(target, source, mask, np.random.default_rng(4), foreground=everywhere, level="relative")
    abs_image, abs_mask = paste_real_defect(target, source, mask, np.random.default_rng(4), foreground=everywhere)
    assert np.array_equal(rel_mask, abs_mask) and rel_mask.any()
    assert np.all(np.abs(rel_image[rel_mask].astype(int) - 56) <= 1)
    assert np.all(abs_image[abs_mask] >= 180)
    assert np.array_equal(rel_image[~rel_mask], target[~rel_mask])


def test_seen_share_gives_the_labelled_image_itself_mirrored():
    """``seen_share=1``: every real-defect sample is the labelled image itself (at the generator's
    size), mirrored at random, with its own mask mirrored the same way; never the normal image it
    was drawn for. ``seen_share=0`` draws exactly what the generator drew before the setting."""
    image, mask = _defect()
    normals = [_texture(i) for i in range(3)]
    seen = AnomalyGenerator(normals, [(image, mask)], image_size=SIZE, seen_share=1.0)
    views = {(False, False): (image, mask), (True, False): (image[:, ::-1], mask[:, ::-1]),
             (False, True): (image[::-1], mask[::-1]), (True, True): (image[::-1, ::-1], mask[::-1, ::-1])}
    found = set()
    for s in range(16):
        sample = seen.make(1, "real", np.random.default_rng(s))
        match = [key for key, (view, view_mask) in views.items()
                 if np.array_equal(sample.image, view) and np.array_equal(sample.mask, view_mask)]
        assert len(match) == 1 and sample.kind == "real"
        found.add(match[0])
    assert len(found) >= 3  # the flips are random, not fixed
    pasted = AnomalyGenerator(normals, [(image, mask)], image_size=SIZE, seen_share=0.0).make(1, "real", np.random.default_rng(5))
    before = AnomalyGenerator(normals, [(image, mask)], image_size=SIZE).make(1, "real", np.random.default_rng(5))
    assert np.array_equal(pasted.image, before.image) and np.array_equal(pasted.mask, before.mask)
    assert not any(np.array_equal(pasted.image, view) for view, _ in views.values())
