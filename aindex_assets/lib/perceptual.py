"""Just-noticeable-difference (JND) heatmaps: where a pixel can change without being seen.

The model (Yang et al. / Wu et al., as used by Active Image Indexing) works on the luminance
`Y = 0.299 R + 0.587 G + 0.114 B` on the 0-255 scale:
- luminance adaptation `la`: the background luminance (5x5 kernel / 32) mapped piecewise,
  so that very dark and bright areas tolerate more change;
- contrast masking `cm`: the Sobel gradient magnitude `c` mapped to `0.117*16 c^2.4/(c^2+26^2)`,
  so that textured areas and edges tolerate more change;
- `H = max(la + cm - 0.3 min(la, cm), 5) / 255`.

Padding: the authors convolve with `conv2d(..., padding=2/1)`, i.e. zero padding. Zero padding
makes the image border look like a strong edge next to black, which raises the heatmap along a
2-pixel frame. "zeros" reproduces the authors (the default, so that image quality figures are
comparable); "replicate" treats the border like its neighbours and is offered for callers who
prefer no frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)
KERNEL_LUM = (
    (1.0, 1.0, 1.0, 1.0, 1.0),
    (1.0, 2.0, 2.0, 2.0, 1.0),
    (1.0, 2.0, 0.0, 2.0, 1.0),
    (1.0, 2.0, 2.0, 2.0, 1.0),
    (1.0, 1.0, 1.0, 1.0, 1.0),
)
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
PADDINGS = ("zeros", "replicate")


def luminance(pixels: torch.Tensor) -> torch.Tensor:
    """Luminance (B,1,H,W) on [0,255] of RGB pixels (B,3,H,W) in [0,1]."""
    weights = torch.tensor(LUMA, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels * 255.0 * weights).sum(dim=1, keepdim=True)


def convolve(y: torch.Tensor, kernel: tuple[tuple[float, ...], ...], padding: str) -> torch.Tensor:
    """Cross-correlation (as conv2d) keeping the size, with zero or replicate padding."""
    weight = torch.tensor(kernel, dtype=y.dtype, device=y.device)[None, None]
    pad = weight.shape[-1] // 2
    if padding == "replicate":
        return F.conv2d(F.pad(y, (pad, pad, pad, pad), mode="replicate"), weight)
    return F.conv2d(y, weight, padding=pad)


def luminance_adaptation(y: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    background = convolve(y, KERNEL_LUM, padding) / 32.0
    dark = 17.0 * (1.0 - torch.sqrt(background / 127.0 + 1e-3)) + 3.0
    bright = 3.0 / 128.0 * (background - 127.0) + 3.0
    return torch.where(background <= 127.0, dark, bright)


def contrast_masking(y: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    gx = convolve(y, SOBEL_X, padding)
    gy = convolve(y, SOBEL_Y, padding)
    c = torch.sqrt(gx * gx + gy * gy)
    return 0.117 * 16.0 * c.pow(2.4) / (c * c + 26.0**2)


def jnd_heatmap(pixels: torch.Tensor, padding: str = "zeros") -> torch.Tensor:
    """JND heatmap (B,1,H,W), on the [0,1] pixel scale, of RGB pixels (B,3,H,W) in [0,1]."""
    if padding not in PADDINGS:
        raise ValueError(f"unknown padding {padding!r}: use one of {PADDINGS}")
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected RGB pixels (B,3,H,W), got {tuple(pixels.shape)}")
    y = luminance(pixels.float())
    la = luminance_adaptation(y, padding)
    cm = contrast_masking(y, padding)
    return torch.clamp(la + cm - 0.3 * torch.minimum(la, cm), min=5.0) / 255.0
