"""Activation: imperceptible perturbations that pull each image's descriptor onto its stored code.

One call activates a list of images (any sizes) for one extractor and one trained index:

1. descriptors `y` of the originals and their targets `t` = the index's own decoding of the
   code it stores for `y` (or the IVF centroid); for LSH indexes, the sign pattern of `y`;
2. competitors: the codes nearest to `y` that belong to other images (searched in the
   `database` index when one is given, the served index holding the rest of the collection);
3. a JND heatmap per image, computed once, folded with the per-channel `alpha`, the scaling and
   the normalization into one constant amplitude map, so that the activated pixels are
   `x = x_o + A * tanh(d)` with `d` the only variable;
4. Adam on `d` for `iterations` steps, minimizing
   `lambda_feature * -cos(f(x), t) + lambda_image * MSE_normalized(x, x_o)
    + lambda_margin * mean_c(relu(margin - (|f-c|^2 - |f-t|^2)))` over competitors `c`,
   summed over the images of the batch (the paper averages; with Adam's per-element step the
   sum makes each image's result independent of which images share its batch);
   `f(x)` is the extractor's differentiable resize + forward, batched across images. Without
   antialias the resize reads only a sampled grid of rows and columns (2 per output row or
   column), so `d` lives on that grid only (`GridCanvas`), exactly: the other pixels never
   reach the descriptor and are released unchanged;
5. output: clamp to [0,1], round to 8 bits, encode in the release format (PNG, lossless, or
   JPEG/WebP), and measure PSNR/SSIM/L-inf and the feature to target distance of the pixels
   decoded from that file (what is actually released).

The margin term is what keeps activation from losing the unedited image: pulling `f` onto a
coarse code also pulls it towards other images whose codes are nearly the same, so the loss also
asks the stored code to beat each nearby competitor's code by `margin` in the index's own
distance.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.extractors import IMAGENET_STD, Extractor
from aindex_assets.lib.images import (
    decode_release,
    encode_release,
    pil_to_tensor,
    release_format,
)
from aindex_assets.lib.metrics import ssim
from aindex_assets.lib.perceptual import jnd_heatmap

LUMA = (0.299, 0.587, 0.114)
PAPER_ALPHA = tuple(0.072 / w for w in LUMA)
TARGETS = ("reconstruction", "centroid")


@dataclass(frozen=True)
class ActivationParams:
    """Parameters of one activation run: this project's defaults; `paper()` gives the paper's.

    Differences from the paper, tuned for the default `sscd_distilled` descriptor on the
    packaged photos (benchmarks/activation.py): `scaling` 3.3 (mean PSNR about 42.5 dB;
    EfficientNet-Lite0 needs 2.0 for 40 dB), two randomly edited views per iteration
    (`edited_views`), and a margin term against the nearest competing codes
    (`lambda_margin` > 0), which keeps the unedited image first.
    `min_psnr` is a guarantee, not a goal: an image whose optimum falls below it has its
    perturbation shrunk until the released 8-bit image reaches it (None: no floor).
    `keep_first` is the other guarantee, never worse than passive for the unedited copy:
    a release whose descriptor ranks its own code lower than the original's descriptor
    does (searched with `nprobe` among the database and the batch) has its perturbation
    halved until it does not, or is released unchanged.
    `antialias` chooses the differentiable resize inside the optimization only (None: the
    extractor's own preprocessing, which always computes the stored and measured descriptors).
    `edited_views` adds, at every iteration, that many randomly edited views of each image
    (rotation, crop, colour, blur: `random_edit`) to the feature loss, an expectation over
    transformations that the paper does not use: the code must then survive edits, not only
    the unedited image. 0 is the paper's objective.
    `release_format` is the file each release is published as (`lib.images.ReleaseFormat`:
    png, jpeg or webp) and `release_quality` (1-100) the lossy encoders' quality. Both
    guarantees and every recorded measure hold for the pixels decoded from that file.
    """

    iterations: int = 10
    scaling: float = 3.3
    alpha: tuple[float, float, float] = PAPER_ALPHA
    lambda_feature: float = 1.0
    lambda_image: float = 0.01
    lambda_margin: float = 1.0
    margin: float = 0.05
    competitors: int = 8
    nprobe: int = 1
    lsh_margin: float = 0.05
    learning_rate: float = 1.0
    batch_size: int = 16
    max_pixels_per_batch: int = 16_000_000
    target: str = "reconstruction"
    heatmap_padding: str = "zeros"
    seed: int = 0
    min_psnr: float | None = 40.0
    keep_first: bool = True
    antialias: bool | None = None
    edited_views: int = 2
    release_format: str = "png"
    release_quality: int = 95

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}: use one of {TARGETS}")
        if self.iterations < 0 or self.batch_size < 1 or self.max_pixels_per_batch < 1:
            raise ValueError("iterations >= 0, batch_size >= 1 and max_pixels_per_batch >= 1")
        if len(self.alpha) != 3:
            raise ValueError("alpha: one value per RGB channel")
        release_format(self.release_format)
        if not 1 <= self.release_quality <= 100:
            raise ValueError(f"release_quality {self.release_quality} is not within 1-100")

    @classmethod
    def paper(cls, **overrides: object) -> ActivationParams:
        """The paper's published defaults (scaling 3, no margin term, no edited views)."""
        paper = cls(
            scaling=3.0,
            lambda_margin=0.0,
            competitors=0,
            min_psnr=None,
            keep_first=False,
            edited_views=0,
        )
        return dataclasses.replace(paper, **overrides)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record of every parameter."""
        record = dataclasses.asdict(self)
        record["alpha"] = list(self.alpha)
        return record


class FloorUnreachable(ValueError):
    """A lossy release format whose own loss already takes an image below the PSNR floor."""


@dataclass
class ActivationResult:
    """One activated image, its released file (`encoded`) and the 8-bit HxWx3 pixels a reader
    decodes from it (`image`), and what it cost and gained, measured on those pixels."""

    image: np.ndarray
    encoded: bytes
    psnr: float
    ssim: float
    linf: float
    distance_before: float
    distance_after: float
    competitor_gap_before: float = float("nan")
    competitor_gap_after: float = float("nan")
    extras: dict[str, float] = field(default_factory=dict)


@dataclass
class Goals:
    """What the loss pulls towards, per image (all on the extractor's device)."""

    targets: torch.Tensor  # (n, d)
    competitors: torch.Tensor | None  # (n, k, d) or None
    competitor_mask: torch.Tensor | None  # (n, k) 1 where a competitor exists
    lsh_weights: torch.Tensor | None = None  # (nbits, d)
    lsh_bias: torch.Tensor | None = None
    lsh_signs: torch.Tensor | None = None  # (n, nbits)


def activate(
    images: Sequence[Image.Image | torch.Tensor],
    extractor: Extractor,
    index: faiss.Index,
    params: ActivationParams | None = None,
    original_features: np.ndarray | None = None,
    database: faiss.Index | None = None,
    *,
    own_ids: np.ndarray | None = None,
    generator: torch.Generator | None = None,
) -> list[ActivationResult]:
    """Activate images for `index` (see the module docstring); results in input order.

    `images`: PIL images or float (3,H,W) tensors in [0,1], any sizes. `original_features`:
    the descriptors the index stores for them (computed here when absent). `database`: the
    index holding other images' codes, searched for competitors (default: `index` itself).

    A caller that activates one batch in several calls (chunks, to bound memory) passes
    what one call would have shared: `database` already holding the whole batch's codes
    (`with_own_codes`) with `own_ids` the ids of these images' codes there, and one
    `generator` (`noise_generator`) for all the calls. The results are then those of a
    single call whose internal batches were the chunks.
    """
    params = params or ActivationParams()
    device = extractor.device
    pixels = [as_pixels(image, device) for image in images]
    if original_features is None:
        original_features = embed_each(extractor, pixels)
    features = faiss_index.as_matrix(original_features, extractor.dim, "original_features")
    if len(features) != len(pixels):
        raise ValueError(f"{len(features)} original features for {len(pixels)} images")
    if own_ids is None:
        # The batch's own codes join the database: they compete with each other, and the
        # unedited release must find its own code first (checked after optimisation).
        searched, own_ids = with_own_codes(database if database is not None else index, features)
    else:
        if database is None or len(own_ids) != len(features):
            raise ValueError("own_ids: one id per image, of codes already in `database`")
        searched, own_ids = database, np.asarray(own_ids, dtype=np.int64)
    goals = build_goals(index, features, params, searched, device)
    passive_ranks = own_code_ranks(searched, features, own_ids, params.nprobe)
    generator = generator if generator is not None else noise_generator(params.seed)
    results: list[ActivationResult] = []
    for batch in plan_batches(pixels, params):
        originals = [pixels[i] for i in batch]
        activated = optimize_batch(originals, extractor, select(goals, batch), params, generator)
        before = [to_uint8(p) for p in originals]
        if params.min_psnr is not None:
            develop = reader_pixels(params)
            activated = [
                within_psnr_floor(p, out, params.min_psnr, before=b, develop=develop)
                for p, out, b in zip(originals, activated, before, strict=True)
            ]
        released = [publish(to_uint8(out), params) for out in activated]
        # One batched forward gives every release's descriptor, for the check and the record.
        after = embed_released(extractor, [r.pixels for r in released])
        if params.keep_first:
            ranks = own_code_ranks(searched, after, own_ids[batch], params.nprobe)
            for j, i in enumerate(batch):
                if ranks[j] > passive_ranks[i]:  # rare: retried one image at a time
                    released[j], after[j] = not_worse_than_passive(
                        pixels[i],
                        activated[j],
                        extractor,
                        searched,
                        own_ids[i],
                        passive_ranks[i],
                        params,
                    )
        results.extend(
            measure(before[j], released[j], after[j], goals, i, features[i])
            for j, i in enumerate(batch)
        )
    return results


@dataclass(frozen=True)
class Release:
    """One image as published: the encoded file and the 8-bit pixels a reader decodes."""

    data: bytes
    pixels: np.ndarray


def publish(rounded: np.ndarray, params: ActivationParams) -> Release:
    """The release of 8-bit HxWx3 pixels in the release format; a lossy file is decoded back,
    since its readers (and every measure of the release) see the decoded pixels."""
    data = encode_release(rounded, params.release_format, params.release_quality)
    if release_format(params.release_format).lossless:
        return Release(data, rounded)
    return Release(data, decode_release(data))


def reader_pixels(params: ActivationParams) -> Callable[[np.ndarray], np.ndarray] | None:
    """What a reader decodes from the release of 8-bit pixels; None for a lossless format,
    where it is the pixels themselves (no file needs encoding to know it)."""
    if release_format(params.release_format).lossless:
        return None
    return lambda rounded: publish(rounded, params).pixels


def as_pixels(image: Image.Image | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(image, Image.Image):
        return pil_to_tensor(image, device)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3,H,W) tensor, got {tuple(image.shape)}")
    return image.detach().to(device, torch.float32).clamp(0.0, 1.0)


def embed_each(extractor: Extractor, pixels: Sequence[torch.Tensor]) -> np.ndarray:
    with torch.no_grad():
        resized = torch.cat([extractor.resize(p[None]) for p in pixels])
        return extractor.embed_resized(resized).cpu().numpy()


def noise_generator(seed: int) -> torch.Generator:
    """The random stream of the initial perturbations (one per `activate` call, or shared)."""
    return torch.Generator(device="cpu").manual_seed(seed)


def plan_batches(pixels: Sequence[torch.Tensor], params: ActivationParams) -> Iterator[list[int]]:
    """Consecutive batches bounded by image count and total pixels (one image always fits)."""
    return plan_chunks([image.shape[1] * image.shape[2] for image in pixels], params)


def plan_chunks(sizes: Sequence[int], params: ActivationParams) -> Iterator[list[int]]:
    """`plan_batches` from pixel counts alone: what a caller plans before decoding anything."""
    batch: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        if batch and (
            len(batch) == params.batch_size or total + size > params.max_pixels_per_batch
        ):
            yield batch
            batch, total = [], 0
        batch.append(i)
        total += size
    if batch:
        yield batch


def build_goals(
    index: faiss.Index,
    features: np.ndarray,
    params: ActivationParams,
    database: faiss.Index | None,
    device: torch.device,
) -> Goals:
    targets = faiss_index.activation_targets(index, features, params.target)
    goals = Goals(torch.from_numpy(targets).to(device), None, None)
    if faiss_index.is_binary(index):
        planes = faiss_index.lsh_hyperplanes(index)
        goals.lsh_weights = torch.from_numpy(planes.weights).to(device)
        goals.lsh_bias = torch.from_numpy(planes.bias).to(device)
        goals.lsh_signs = torch.from_numpy(np.sign(planes.margins(features))).to(device)
    searched = database if database is not None else index
    if params.competitors > 0 and params.lambda_margin > 0 and searched.ntotal > 0:
        # One extra result: the image itself may already be stored (its code equals the target).
        _, ids, codes = faiss_index.search_and_reconstruct(
            searched, features, params.competitors + 1, params.nprobe
        )
        same_code = ((codes - targets[:, None, :]) ** 2).sum(-1) < 1e-10
        valid = (ids >= 0) & ~same_code
        # Missing results (fewer codes than asked) come back as garbage, even NaN: a NaN
        # times a zero mask is still NaN, so zero them before they reach the loss.
        codes = np.where(valid[..., None], codes, 0.0).astype(np.float32)
        keep = np.argsort(~valid, axis=1, kind="stable")[:, : params.competitors]
        rows = np.arange(len(features))[:, None]
        goals.competitors = torch.from_numpy(np.ascontiguousarray(codes[rows, keep])).to(device)
        goals.competitor_mask = torch.from_numpy(valid[rows, keep].astype(np.float32)).to(device)
    return goals


def select(goals: Goals, batch: list[int]) -> Goals:
    pick = torch.as_tensor(batch, dtype=torch.long, device=goals.targets.device)

    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.index_select(0, pick)

    return Goals(
        targets=goals.targets.index_select(0, pick),
        competitors=take(goals.competitors),
        competitor_mask=take(goals.competitor_mask),
        lsh_weights=goals.lsh_weights,
        lsh_bias=goals.lsh_bias,
        lsh_signs=take(goals.lsh_signs),
    )


def amplitude(pixels: torch.Tensor, params: ActivationParams) -> torch.Tensor:
    """Constant map A (1,3,H,W) such that the activated pixels are x_o + A * tanh(d).

    The paper's perturbation in normalized space is scaling * H * alpha_c * tanh(d); in
    [0,1] pixels this is multiplied by the ImageNet std of the channel.
    """
    heat = jnd_heatmap(pixels[None], params.heatmap_padding)
    per_channel = torch.tensor(params.alpha, device=pixels.device) * torch.tensor(
        IMAGENET_STD, device=pixels.device
    )
    return params.scaling * heat * per_channel.view(1, 3, 1, 1)


def feature_loss(features: torch.Tensor, goals: Goals, params: ActivationParams) -> torch.Tensor:
    """Summed (not averaged) over images: Adam then treats every image alone, whatever the batch."""
    if goals.lsh_weights is not None:
        projected = features @ goals.lsh_weights.T + goals.lsh_bias
        scale = goals.lsh_weights.norm(dim=1)
        return F.relu(params.lsh_margin - goals.lsh_signs * projected / scale).mean(dim=1).sum()
    loss = -F.cosine_similarity(features, goals.targets, dim=1).sum()
    if goals.competitors is not None and params.lambda_margin > 0:
        own = ((features - goals.targets) ** 2).sum(dim=1, keepdim=True)
        other = ((features[:, None, :] - goals.competitors) ** 2).sum(dim=2)
        hinge = F.relu(params.margin - (other - own)) * goals.competitor_mask
        loss = loss + params.lambda_margin / params.lambda_feature * hinge.mean(dim=1).sum()
    return loss


def bilinear_taps(
    size_in: int, size_out: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PyTorch's bilinear resize (align_corners False, no antialias) along one axis.

    Output i is `w0[i] * input[i0[i]] + w1[i] * input[i1[i]]`, with the source position
    `(i + 0.5) * size_in / size_out - 0.5` computed in float32 like `F.interpolate`.
    """
    ratio = torch.tensor(size_in, dtype=torch.float32) / size_out
    source = (ratio * (torch.arange(size_out, dtype=torch.float32) + 0.5) - 0.5).clamp(min=0.0)
    first = source.floor().long().clamp(max=size_in - 1)
    w1 = (source - first).clamp(0.0, 1.0)
    second = torch.where(first < size_in - 1, first + 1, first)
    return first.to(device), second.to(device), (1.0 - w1).to(device), w1.to(device)


@dataclass
class SampledGrid:
    """The rows and columns of one image that a resize without antialias reads.

    Only these pixels reach the descriptor (for a downscale by s > 2, 2 rows in s), so only
    they are optimized. `rows`/`cols`: their positions in the full image; the taps say which
    grid rows/columns (and weights) each output row/column of the network input reads.
    """

    rows: torch.Tensor
    cols: torch.Tensor
    row_taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    col_taps: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def sampled_grid(height: int, width: int, size: int, device: torch.device) -> SampledGrid:
    def axis(n: int) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        first, second, w0, w1 = bilinear_taps(n, size, device)
        kept = torch.unique(torch.cat([first, second]))  # sorted
        return kept, (
            torch.searchsorted(kept, first),
            torch.searchsorted(kept, second),
            w0,
            w1,
        )

    rows, row_taps = axis(height)
    cols, col_taps = axis(width)
    return SampledGrid(rows, cols, row_taps, col_taps)  # type: ignore[arg-type]


class Canvas:
    """One batch's optimization variables: what the perturbation is added to, and how the
    activated variables become the network input and the full images.

    The base class works on full-resolution images (needed with an antialiased resize, which
    reads every pixel): one tensor per image, resized one by one.
    """

    def __init__(
        self, pixels: Sequence[torch.Tensor], extractor: Extractor, params: ActivationParams
    ) -> None:
        self.extractor = extractor
        self.antialias = params.antialias
        std = torch.tensor(IMAGENET_STD, device=extractor.device).view(1, 3, 1, 1)
        self.originals = [p[None] for p in pixels]
        self.amplitudes = [amplitude(p, params) for p in pixels]
        # MSE in the paper's normalized space (pixel change / channel std), averaged over the
        # full image: a per-element weight, so that the image loss is one weighted sum.
        self.weights = [
            (a / std) ** 2 / p.numel() for a, p in zip(self.amplitudes, pixels, strict=True)
        ]

    def initial(self, generator: torch.Generator) -> list[torch.Tensor]:
        return [(1e-6 * torch.randn(x.shape, generator=generator)) for x in self.originals]

    def resize(self, activated: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat([self.extractor.resize(x, self.antialias) for x in activated])

    def full(self, activated: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [x[0] for x in activated]


class GridCanvas(Canvas):
    """The batch's sampled grids packed into one (B,3,h,w) tensor (zero padded).

    Exact for a resize without antialias: the resize of the full image equals the bilinear
    interpolation of its grid, and the pixels off the grid never change. A 1024 px photo has
    5x fewer variables, and the whole batch is one tensor (one tanh, one Adam step, two
    gathers) instead of a list of full-resolution images.
    """

    def __init__(
        self, pixels: Sequence[torch.Tensor], extractor: Extractor, params: ActivationParams
    ) -> None:
        self.extractor = extractor
        self.pixels = list(pixels)
        size, device = extractor.input_size, extractor.device
        self.grids = [sampled_grid(p.shape[1], p.shape[2], size, device) for p in pixels]
        self.shapes = [(len(g.rows), len(g.cols)) for g in self.grids]
        height = max(h for h, _ in self.shapes)
        width = max(w for _, w in self.shapes)
        std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
        batch = len(pixels)
        self.original = torch.zeros(batch, 3, height, width, device=device)
        self.amplitude = torch.zeros_like(self.original)
        self.weight = torch.zeros_like(self.original)
        for i, (p, g) in enumerate(zip(pixels, self.grids, strict=True)):
            h, w = self.shapes[i]
            # The heatmap needs each pixel's neighbours: computed at full size (strip by
            # strip), then sampled.
            self.original[i, :, :h, :w] = p[:, g.rows][:, :, g.cols]
            self.amplitude[i, :, :h, :w] = sampled_amplitude(p, params, g.rows, g.cols)
            self.weight[i, :, :h, :w] = (self.amplitude[i, :, :h, :w] / std) ** 2 / p.numel()
        self.originals, self.amplitudes, self.weights = (
            [self.original],
            [self.amplitude],
            [self.weight],
        )
        self.row_taps = self.stack_taps([g.row_taps for g in self.grids], batch, size, "rows")
        self.col_taps = self.stack_taps([g.col_taps for g in self.grids], batch, size, "cols")

    @staticmethod
    def stack_taps(
        taps: list[tuple[torch.Tensor, ...]], batch: int, size: int, axis: str
    ) -> tuple[torch.Tensor, ...]:
        shape = (batch, 1, size, 1) if axis == "rows" else (batch, 1, 1, size)
        return tuple(torch.stack([t[k] for t in taps]).view(shape) for k in range(4))

    def initial(self, generator: torch.Generator) -> list[torch.Tensor]:
        # Drawn per image at its grid's size: the same noise whichever images share a batch.
        delta = torch.zeros(self.original.shape)
        for i, (h, w) in enumerate(self.shapes):
            delta[i, :, :h, :w] = 1e-6 * torch.randn((3, h, w), generator=generator)
        return [delta]

    def resize(self, activated: Sequence[torch.Tensor]) -> torch.Tensor:
        (x,) = activated
        batch, _, _, width = x.shape
        size = self.extractor.input_size
        first, second, w0, w1 = self.row_taps
        rows = x.gather(2, first.expand(batch, 3, size, width)) * w0
        rows = rows + x.gather(2, second.expand(batch, 3, size, width)) * w1
        first, second, w0, w1 = self.col_taps
        out = rows.gather(3, first.expand(batch, 3, size, size)) * w0
        return out + rows.gather(3, second.expand(batch, 3, size, size)) * w1

    def full(self, activated: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        (x,) = activated
        images = []
        for i, (p, g) in enumerate(zip(self.pixels, self.grids, strict=True)):
            h, w = self.shapes[i]
            image = p.clone()
            image[:, g.rows[:, None], g.cols[None, :]] = x[i, :, :h, :w]
            images.append(image)
        return images


def make_canvas(
    pixels: Sequence[torch.Tensor], extractor: Extractor, params: ActivationParams
) -> Canvas:
    antialias = extractor.antialias if params.antialias is None else params.antialias
    return (Canvas if antialias else GridCanvas)(pixels, extractor, params)


def optimize_batch(
    pixels: Sequence[torch.Tensor],
    extractor: Extractor,
    goals: Goals,
    params: ActivationParams,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Optimize one batch; returns the activated pixels (3,H,W) in [0,1], before rounding."""
    canvas = make_canvas(pixels, extractor, params)
    rng = np.random.default_rng(params.seed)  # the edits; `generator` draws the start noise
    deltas = [d.to(extractor.device).requires_grad_(True) for d in canvas.initial(generator)]
    if params.iterations > 0:
        optimizer = torch.optim.Adam(deltas, lr=params.learning_rate, fused=True)
        for _ in range(params.iterations):
            optimizer.zero_grad(set_to_none=True)
            bounded = [torch.tanh(d) for d in deltas]
            activated = [
                x + a * b
                for x, a, b in zip(canvas.originals, canvas.amplitudes, bounded, strict=True)
            ]
            inputs = canvas.resize(activated)
            views = [inputs, *(random_edit(inputs, rng) for _ in range(params.edited_views))]
            features_loss = sum(
                feature_loss(extractor.embed_resized(view), goals, params) for view in views
            ) / len(views)
            image_loss = sum(
                (w * b * b).sum() for w, b in zip(canvas.weights, bounded, strict=True)
            )
            loss = params.lambda_feature * features_loss
            loss = loss + params.lambda_image * image_loss
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return canvas.full(
            [
                (x + a * torch.tanh(d)).clamp(0.0, 1.0)
                for x, a, d in zip(canvas.originals, canvas.amplitudes, deltas, strict=True)
            ]
        )


def random_edit(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """One random, differentiable edit of a batch of network inputs (B,3,S,S) in [0,1]:
    the geometric and photometric edits that lose copies most (rotation, crop, colour,
    blur, shrinking onto a background), drawn per call and shared by the batch."""
    size = x.shape[-1]
    kind = rng.integers(5)
    if kind == 0:
        return TF.rotate(x, float(rng.uniform(-30, 30)), TF.InterpolationMode.BILINEAR)
    if kind == 1:
        side = int(size * np.sqrt(rng.uniform(0.3, 0.9)))
        top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
        return TF.resized_crop(x, top, left, side, side, [size, size], antialias=False)
    if kind == 2:
        x = TF.adjust_brightness(x.clamp(0, 1), float(rng.uniform(0.5, 2.0)))
        return TF.adjust_contrast(x, float(rng.uniform(0.5, 2.0)))
    if kind == 3:
        return TF.gaussian_blur(x, [int(rng.choice([5, 9, 11]))] * 2)
    # Shrunk onto a flat background, as in a screenshot, a meme or a collage.
    side = int(size * rng.uniform(0.4, 0.85))
    top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
    shrunk = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
    padding = (left, size - side - left, top, size - side - top)
    return F.pad(shrunk, padding, value=float(rng.uniform(0, 1)))


def with_own_codes(database: faiss.Index, features: np.ndarray) -> tuple[faiss.Index, np.ndarray]:
    """A copy of `database` that also holds `features`, and the fresh ids they got there."""
    searched = faiss.clone_index(database)
    held = faiss_index.stored_ids(database)
    first = int(held.max()) + 1 if len(held) else 0
    own_ids = np.arange(first, first + len(features), dtype=np.int64)
    faiss_index.add_with_ids(searched, features, own_ids)
    return searched, own_ids


RANK_DEPTH = 10


def own_code_ranks(
    searched: faiss.Index, features: np.ndarray, own_ids: np.ndarray, nprobe: int
) -> np.ndarray:
    """Rank of each vector's own code among its nearest codes (RANK_DEPTH when not found)."""
    _, ids = faiss_index.search(searched, features, k=RANK_DEPTH, nprobe=nprobe)
    hits = ids == np.asarray(own_ids)[:, None]
    return np.where(hits.any(axis=1), hits.argmax(axis=1), RANK_DEPTH)


def embed_released(extractor: Extractor, released: Sequence[np.ndarray]) -> np.ndarray:
    """Descriptors (n, dim) of 8-bit HxWx3 images, exactly as queries will compute them."""
    with torch.inference_mode():
        resized = torch.cat(
            [
                extractor.resize(
                    # In place: one full-resolution float copy, not two.
                    torch.from_numpy(r)
                    .to(extractor.device)
                    .permute(2, 0, 1)[None]
                    .float()
                    .div_(255.0)
                )
                for r in released
            ]
        )
        return extractor.embed_resized(resized).cpu().numpy()


def not_worse_than_passive(
    original: torch.Tensor,
    activated: torch.Tensor,
    extractor: Extractor,
    searched: faiss.Index,
    own_id: int,
    passive_rank: int,
    params: ActivationParams,
    attempts: int = 4,
) -> tuple[Release, np.ndarray]:
    """For a release that ranks its own code lower than the original does: halve the
    perturbation until it does not (the original itself after `attempts` halvings).

    Ranks are those of the decoded release. A lossy format's own loss can rank even the
    original's release lower: that last fallback is then the best this format allows.
    Returns the release and its descriptor.
    """
    for _ in range(attempts):
        activated = original + 0.5 * (activated - original)
        release = publish(to_uint8(activated), params)
        feature = embed_released(extractor, [release.pixels])
        if own_code_ranks(searched, feature, np.array([own_id]), params.nprobe)[0] <= passive_rank:
            return release, feature[0]
    release = publish(to_uint8(original), params)
    return release, embed_released(extractor, [release.pixels])[0]


def within_psnr_floor(
    original: torch.Tensor,
    activated: torch.Tensor,
    floor_db: float,
    attempts: int = 4,
    before: np.ndarray | None = None,
    develop: Callable[[np.ndarray], np.ndarray] | None = None,
) -> torch.Tensor:
    """Shrink the perturbation until the released image is at least `floor_db` PSNR.

    `develop`: what a reader decodes from the release of 8-bit pixels (None: a lossless
    release, the pixels themselves). The scale c of the perturbation is searched by regula
    falsi on the squared error as a linear function of c^2, between the largest scale
    found above the floor and the smallest below, aiming FLOOR_MARGIN_DB above the floor.
    Lossless, that line is exact (the first step nearly always lands; the next ones absorb
    the rounding to 8 bits). A lossy encoder adds its own error, the line's value at c = 0,
    and drops part of a small perturbation, so the line is only roughly right: a scale is
    kept once its release lands less than LOSSY_FLOOR_TOLERANCE_DB above the floor, else
    the largest scale found above it after `attempts` steps, else the original. Raises
    FloorUnreachable when the encoder alone leaves no room above the floor: releasing the
    image anyway would break the floor for good (releases are immutable).
    """
    before = to_uint8(original) if before is None else before

    def release_psnr(candidate: torch.Tensor) -> float:
        released = to_uint8(candidate)
        return psnr_8bit(before, develop(released) if develop else released)

    current = release_psnr(activated)
    if current >= floor_db:
        return activated
    encoder_db = release_psnr(original) if develop else float("inf")
    if encoder_db <= floor_db + FLOOR_MARGIN_DB:
        raise FloorUnreachable(
            f"the release format alone leaves the image at {encoder_db:.1f} dB, at or below "
            f"the {floor_db:g} dB floor: raise release_quality, or release as png"
        )
    goal = squared_error(floor_db + FLOOR_MARGIN_DB)
    # (c^2, squared error) of the largest scale found above the floor and the smallest below.
    above, below = (0.0, squared_error(encoder_db)), (1.0, squared_error(current))
    for _ in range(attempts):
        square = above[0] + (below[0] - above[0]) * (goal - above[1]) / (below[1] - above[1])
        candidate = scaled(original, activated, math.sqrt(square))
        achieved = release_psnr(candidate)
        if achieved < floor_db:
            below = (square, squared_error(achieved))
        elif develop is None or achieved < floor_db + LOSSY_FLOOR_TOLERANCE_DB:
            return candidate
        else:
            above = (square, squared_error(achieved))
    return scaled(original, activated, math.sqrt(above[0])) if above[0] else original.clone()


# The floor's search aims this far above the floor: 8-bit rounding rarely lands below it.
FLOOR_MARGIN_DB = 0.1
# A lossy release this close above the floor ends the search (each step is one encoding).
LOSSY_FLOOR_TOLERANCE_DB = 0.5


def squared_error(psnr_db: float) -> float:
    """The mean squared error of a PSNR, in units of 255^2 (0 for an infinite PSNR)."""
    return 10 ** (-psnr_db / 10)


def scaled(original: torch.Tensor, activated: torch.Tensor, scale: float) -> torch.Tensor:
    """original + scale * (activated - original), in place on one full-size temporary."""
    return (activated - original).mul_(scale).add_(original).clamp_(0.0, 1.0)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3,H,W) in [0,1] -> HxWx3 uint8, rounding to nearest (strip by strip: the float
    temporaries never cover a whole large image)."""
    height, width = pixels.shape[1], pixels.shape[2]
    out = np.empty((height, width, 3), np.uint8)
    for start, stop in row_strips(height):
        strip = pixels[:, start:stop].detach().clamp(0.0, 1.0).mul(255.0).round()
        out[start:stop] = strip.to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return out


# Rows per strip when a full-resolution image is measured, rounded or its heatmap sampled.
# Measured per pixel of a whole image, SSIM's float64 temporaries take about 130 bytes, the
# L-inf and PSNR differences 40-60 and the JND heatmap 50: a 49 Mpx image needed 10 GB at
# once. Strip by strip they cover STRIP_ROWS rows (a few MB to 250 MB), whatever the size.
STRIP_ROWS = 256
# Gaussian SSIM window (sigma 1.5, truncated at 3.5 sigma): 5 rows of context each side.
SSIM_RADIUS = 5
# The JND heatmap's widest kernel (the 5x5 luminance background): 2 rows each side.
HEATMAP_RADIUS = 2


def row_strips(height: int, rows: int = STRIP_ROWS) -> Iterator[tuple[int, int]]:
    """[start, stop) row ranges of at most `rows` rows covering [0, height)."""
    for start in range(0, height, rows):
        yield start, min(height, start + rows)


def sampled_amplitude(
    pixels: torch.Tensor,
    params: ActivationParams,
    rows: torch.Tensor,
    cols: torch.Tensor,
    strip_rows: int = STRIP_ROWS,
) -> torch.Tensor:
    """`amplitude(pixels)[0]` at the sampled rows x cols (3,len(rows),len(cols)).

    Computed strip by strip, each strip read with HEATMAP_RADIUS rows of context above and
    below (so that every kept row sees its real neighbours, and the image border the same
    padding as in one piece), never on the whole image at once.
    """
    height = pixels.shape[1]
    if height <= strip_rows:
        return amplitude(pixels, params)[0][:, rows][:, :, cols]
    parts = []
    for start, stop in row_strips(height, strip_rows):
        kept = rows[(rows >= start) & (rows < stop)]
        if len(kept) == 0:
            continue
        low, high = max(0, start - HEATMAP_RADIUS), min(height, stop + HEATMAP_RADIUS)
        strip = amplitude(pixels[:, low:high], params)[0]
        parts.append(strip[:, kept - low][:, :, cols])
    return torch.cat(parts, dim=1)


def psnr_8bit(before: np.ndarray, after: np.ndarray, strip_rows: int = STRIP_ROWS) -> float:
    """`lib.metrics.psnr` of two 8-bit HxWx3 images, exactly, strip by strip (squared errors
    summed as integers, so the mean is the same float as over the whole image)."""
    if before.shape != after.shape:
        raise ValueError(f"images differ in shape: {before.shape} vs {after.shape}")
    squared = 0
    for start, stop in row_strips(before.shape[0], strip_rows):
        diff = before[start:stop].astype(np.int64) - after[start:stop]
        squared += int(np.dot(diff.ravel(), diff.ravel()))
    if squared == 0:
        return float("inf")
    return 10.0 * float(np.log10(255.0**2 / (squared / before.size)))


def linf_8bit(before: np.ndarray, after: np.ndarray, strip_rows: int = STRIP_ROWS) -> float:
    """`lib.metrics.linf` of two 8-bit images, strip by strip."""
    largest = 0
    for start, stop in row_strips(before.shape[0], strip_rows):
        diff = np.abs(before[start:stop].astype(np.int16) - after[start:stop])
        largest = max(largest, int(diff.max(initial=0)))
    return float(largest)


def ssim_8bit(before: np.ndarray, after: np.ndarray, strip_rows: int = STRIP_ROWS) -> float:
    """`lib.metrics.ssim` of two 8-bit HxWx3 images, strip by strip.

    SSIM is the mean of a per-pixel map over the image less SSIM_RADIUS pixels at each
    border; the map at a pixel reads SSIM_RADIUS rows of context each side. Each strip is
    measured with that context, so it covers exactly its own rows of the map, and the
    strips' means weighted by their rows give the whole image's mean.
    """
    height = before.shape[0]
    interior = height - 2 * SSIM_RADIUS
    if height <= strip_rows + 2 * SSIM_RADIUS or interior < 1:
        return ssim(before, after)
    total = 0.0
    for start, stop in row_strips(interior, strip_rows):
        low, high = start, stop + 2 * SSIM_RADIUS  # map rows [start, stop) + SSIM_RADIUS
        total += ssim(before[low:high], after[low:high]) * (stop - start)
    return total / interior


def measure(
    before: np.ndarray,
    release: Release,
    feature_after: np.ndarray,
    goals: Goals,
    position: int,
    feature_before: np.ndarray,
) -> ActivationResult:
    """Quality and feature distances of the release as decoded (not of the float optimum)."""
    target = goals.targets[position]
    y = torch.from_numpy(feature_before).to(target.device)
    after = torch.from_numpy(feature_after).to(target.device)
    released = release.pixels
    result = ActivationResult(
        image=released,
        encoded=release.data,
        psnr=psnr_8bit(before, released),
        ssim=ssim_8bit(before, released) if min(released.shape[:2]) >= 11 else float("nan"),
        linf=linf_8bit(before, released),
        distance_before=float(((y - target) ** 2).sum()),
        distance_after=float(((after - target) ** 2).sum()),
    )
    if goals.competitors is not None and goals.competitor_mask[position].any():
        competitors = goals.competitors[position][goals.competitor_mask[position] > 0]
        result.competitor_gap_before = gap(y, target, competitors)
        result.competitor_gap_after = gap(after, target, competitors)
    return result


def gap(feature: torch.Tensor, target: torch.Tensor, competitors: torch.Tensor) -> float:
    """Smallest (distance to a competitor - distance to the target): > 0 means the target wins."""
    own = ((feature - target) ** 2).sum()
    return float((((feature[None] - competitors) ** 2).sum(dim=1) - own).min())
