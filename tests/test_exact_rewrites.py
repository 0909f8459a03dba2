"""Rewrites made for speed give the very numbers of the plain formulas they replace."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from defectscope.backbones.efficientnet import EfficientNetLite, VARIANTS
from defectscope.methods.verdict import NullFit
from defectscope.report.overlay import _lookup, colorize, heatmap_overlay, mask_contour, resize_map, resize_mask


def plain_overlay(image, anomaly_map, *, vmin, vmax, alpha=0.5, mask=None, colormap="turbo"):
    """The overlay as colorize + blend would compute it, step by step with fresh arrays."""
    height, width = image.shape[:2]
    values = resize_map(np.asarray(anomaly_map, np.float32), (height, width))
    span = float(vmax) - float(vmin)
    if span > 0:
        normalised = np.clip((values - np.float32(vmin)) / np.float32(span), 0.0, 1.0)
    else:
        normalised = (values > vmin).astype(np.float32)
    colours = _lookup(colormap)[np.round(np.nan_to_num(normalised, nan=0.0) * 255.0).astype(np.intp)]
    blended = image.astype(np.float32) * (1.0 - alpha) + colours.astype(np.float32) * alpha
    out = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if mask is not None:
        out[mask_contour(resize_mask(mask, (height, width)), max(1, round(min(height, width) / 256)))] = 255
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.35, 0.5, 1.0])
@pytest.mark.parametrize("vrange", [(-1.0, 1.0), (0.2, 0.2), (-3.0, 0.5)])
def test_overlay_equals_the_plain_formula(alpha, vrange):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (61, 47, 3), dtype=np.uint8)
    anomaly_map = rng.normal(size=(20, 16)).astype(np.float32)
    anomaly_map[1, 1], anomaly_map[2, 2], anomaly_map[3, 3] = np.nan, np.inf, -np.inf
    mask = rng.random((20, 16)) > 0.7
    vmin, vmax = vrange
    for colormap in ("turbo", "viridis"):
        got = heatmap_overlay(image, anomaly_map, vmin=vmin, vmax=vmax, alpha=alpha, mask=mask, colormap=colormap)
        assert np.array_equal(got, plain_overlay(image, anomaly_map, vmin=vmin, vmax=vmax, alpha=alpha, mask=mask, colormap=colormap))
    values = rng.normal(size=(9, 7)).astype(np.float32)
    values[0, 0] = np.nan
    expected = _lookup("turbo")[np.round(np.nan_to_num(np.clip((values - np.float32(vmin)) / np.float32(vmax - vmin), 0, 1) if vmax > vmin else (values > vmin).astype(np.float32), nan=0.0) * 255).astype(np.intp)]
    assert np.array_equal(colorize(values, vmin=vmin, vmax=vmax), expected)


def test_overlay_refuses_a_bad_colour_range():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="inverted"):
        heatmap_overlay(image, np.zeros((4, 4)), vmin=1.0, vmax=0.0)
    with pytest.raises(ValueError, match="finite"):
        heatmap_overlay(image, np.zeros((4, 4)), vmin=float("nan"), vmax=1.0)


def test_quantile_bound_uses_the_normal_quantile():
    fit = NullFit(location=0.3, scale=0.07, count=57.0, components=2)
    for rate, confidence in ((0.05, 0.9), (0.01, 0.95), (0.2, 0.5)):
        y = -math.log(-math.log(1.0 - rate))
        spread = math.sqrt((1.10866 + 0.51404 * y + 0.60793 * y * y) / 57.0)
        assert fit.quantile_bound(rate, confidence) == 0.3 + 0.07 * (y + float(stats.norm.ppf(confidence)) * spread)


def test_lite_blocks_in_place_relu_give_the_out_of_place_numbers():
    torch.manual_seed(0)
    network = EfficientNetLite(VARIANTS["efficientnet-lite0"]).eval()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        got = network.forward_blocks(x, [1, 4])
        # the same network with out-of-place ReLU6, written out
        y = F.relu6(network._bn0(network._conv_stem(x)))
        expected = []
        for index, block in enumerate(network._blocks):
            out = y
            if block.expand:
                out = F.relu6(block._bn0(block._expand_conv(out)))
            out = F.relu6(block._bn1(block._depthwise_conv(out)))
            out = block._bn2(block._project_conv(out))
            y = out + y if block.residual else out
            if index in (1, 4):
                expected.append(y)
            if index == 4:
                break
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
