"""JND heatmap: values computed by hand from the formula, and the effect of edges."""

from __future__ import annotations

import math

import pytest
import torch

from aindex_assets.lib.perceptual import jnd_heatmap


def expected_flat(gray: float) -> float:
    background = gray * 255.0  # the 5x5 kernel sums to 32: the flat background is the gray level
    if background <= 127:
        la = 17 * (1 - math.sqrt(background / 127 + 1e-3)) + 3
    else:
        la = 3 / 128 * (background - 127) + 3
    return max(la, 5.0) / 255.0  # no gradient: cm = 0, and min(la, 0) = 0


@pytest.mark.parametrize("gray", [0.1, 0.5, 0.9])
def test_flat_gray_matches_hand_computation(gray: float):
    pixels = torch.full((1, 3, 32, 32), gray)
    for padding in ("zeros", "replicate"):
        heat = jnd_heatmap(pixels, padding=padding)
        assert heat.shape == (1, 1, 32, 32)
        assert heat[0, 0, 8:24, 8:24].allclose(torch.tensor(expected_flat(gray)), atol=1e-6)
    # replicate padding: the border is flat too
    assert jnd_heatmap(pixels, padding="replicate").allclose(
        torch.tensor(expected_flat(gray)), atol=1e-6
    )


def test_edges_raise_the_heatmap_both_orientations():
    vertical = torch.full((1, 3, 32, 32), 0.5)
    vertical[..., 16:] = 0.8
    horizontal = vertical.transpose(2, 3).contiguous()
    flat = jnd_heatmap(torch.full((1, 3, 32, 32), 0.5), padding="replicate")[0, 0, 16, 5]
    for image, at in ((vertical, (16, 16)), (horizontal, (16, 16))):
        heat = jnd_heatmap(image, padding="replicate")[0, 0]
        assert heat[at] > flat * 1.5
    # a correct y kernel responds to horizontal edges exactly as x does to vertical ones
    assert torch.allclose(
        jnd_heatmap(vertical, padding="replicate")[0, 0],
        jnd_heatmap(horizontal, padding="replicate")[0, 0].T,
    )


def test_zero_padding_raises_the_border_and_batches():
    pixels = torch.full((2, 3, 16, 16), 0.5)
    heat = jnd_heatmap(pixels)
    assert heat[0, 0, 0, 8] > heat[0, 0, 8, 8]
    assert torch.equal(heat[0], heat[1])
    with pytest.raises(ValueError, match="padding"):
        jnd_heatmap(pixels, padding="reflect")
