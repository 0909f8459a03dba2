"""PRN's tiles for long images: counts, exact cuts, defects kept only where they are, maps put back."""

from __future__ import annotations

import numpy as np
import torch

from defectscope.methods.prn import tiles


def test_tile_count_follows_the_aspect():
    assert tiles.tile_count((100, 100, 3), 1.5) == 1
    assert tiles.tile_count((100, 140), 1.5) == 1
    assert tiles.tile_count((250, 600, 3), 1.5) == 2
    assert tiles.tile_count((700, 250), 1.5) == 3
    assert tiles.tile_count((250, 600, 3), 0) == 1


def test_split_covers_the_image_exactly():
    image = np.arange(250 * 601 * 3).reshape(250, 601, 3)
    parts = tiles.split(image, 2)
    assert [p.shape[:2] for p in parts] == [(250, 300), (250, 301)] or [p.shape[:2] for p in parts] == [(250, 301), (250, 300)]
    assert np.array_equal(np.concatenate(parts, axis=1), image)
    tall = image.transpose(1, 0, 2)
    assert np.array_equal(np.concatenate(tiles.split(tall, 3), axis=0), tall)


def test_split_anomalies_drops_tiles_without_defect():
    image = np.zeros((100, 300, 3), dtype=np.uint8)
    mask = np.zeros((100, 300), dtype=bool)
    mask[40:50, 210:230] = True
    kept = tiles.split_anomalies([(image, mask)], 1.5)
    assert len(kept) == 1 and kept[0][0].shape[:2] == (100, 100) and kept[0][1].sum() == mask.sum()


def test_stitch_puts_each_tile_map_on_its_side():
    size = 8
    maps = torch.zeros(3, size, size)
    maps[2] = 1.0  # the second tile of the long image: its right half
    joined = tiles.stitch(maps, [1, 2], [(size, size), (size, 2 * size)], size)
    assert joined.shape == (2, size, size)
    assert torch.equal(joined[0], maps[0])
    assert joined[1][:, : size // 2 - 1].max() == 0 and joined[1][:, size // 2 + 1 :].min() == 1


def test_stitch_keeps_the_aspect_when_every_image_has_the_same_tiles():
    """Two wide images of 3 tiles -> (2, S, 3S), the tile maps side by side unchanged (a 1-pixel
    crack in one tile stays 1 pixel wide); two tall images of 2 tiles -> (2, 2S, S)."""
    size = 8
    maps = torch.zeros(6, size, size)
    maps[4, :, 3] = 1.0  # second image, middle tile: a thin vertical line
    joined = tiles.stitch(maps, [3, 3], [(size, 3 * size), (size, 3 * size)], size)
    assert joined.shape == (2, size, 3 * size)
    assert torch.equal(joined[1], torch.cat(list(maps[3:6]), dim=1))
    assert joined[1].sum(dim=0).nonzero().flatten().tolist() == [size + 3]
    tall = tiles.stitch(maps[:4], [2, 2], [(2 * size, size), (2 * size, size)], size)
    assert tall.shape == (2, 2 * size, size) and torch.equal(tall[1], torch.cat(list(maps[2:4]), dim=0))
    # the same counts but one wide and one tall image: shapes differ, so both are squashed
    assert tiles.stitch(maps[:4], [2, 2], [(size, 2 * size), (2 * size, size)], size).shape == (2, size, size)


def test_settings_are_checked():
    import pytest

    from defectscope.errors import ConfigError
    from defectscope.methods.prn import PRNConfig

    config = PRNConfig.from_options({"pseudo_families": "perlin,thin", "tile_aspect": "1.5"})
    assert config.pseudo_families == ("perlin", "thin") and config.tile_aspect == 1.5
    assert PRNConfig().pseudo_families == ("perlin", "thin") and PRNConfig().tile_aspect == 3.0
    older = PRNConfig().to_json()
    del older["tile_aspect"]
    assert PRNConfig.from_dict(older).tile_aspect == 0  # files from before tiles existed: none
    with pytest.raises(ConfigError, match="pseudo_families"):
        PRNConfig(pseudo_families=("perlin", "crack"))
    with pytest.raises(ConfigError, match="tile_aspect"):
        PRNConfig(tile_aspect=0.5)
