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
   `f(x)` is the extractor's differentiable resize + forward, batched across images;
5. output: clamp to [0,1], round to 8 bits, and measure PSNR/SSIM/L-inf and the feature to target
   distance of the 8-bit result (what is actually released).

The margin term is what keeps activation from losing the unedited image: pulling `f` onto a
coarse code also pulls it towards other images whose codes are nearly the same, so the loss also
asks the stored code to beat each nearby competitor's code by `margin` in the index's own
distance.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.extractors import IMAGENET_STD, Extractor, pil_to_tensor
from aindex_assets.lib.metrics import linf, psnr, ssim
from aindex_assets.lib.perceptual import jnd_heatmap

LUMA = (0.299, 0.587, 0.114)
PAPER_ALPHA = tuple(0.072 / w for w in LUMA)
TARGETS = ("reconstruction", "centroid")


@dataclass(frozen=True)
class ActivationParams:
    """Parameters of one activation run: this project's defaults; `paper()` gives the paper's.

    Differences from the paper: `scaling` 2.0 instead of 3.0 (the offline EfficientNet-Lite0
    reaches ~38 dB at 3.0; 2.0 gives a mean PSNR above 40 dB) and a margin term against the
    nearest competing codes (`lambda_margin` > 0), which keeps the unedited image first.
    `min_psnr` is a guarantee, not a goal: an image whose optimum falls below it has its
    perturbation shrunk until the released 8-bit image reaches it (None: no floor).
    `keep_first` is the other guarantee, never worse than passive for the unedited copy:
    a release whose descriptor ranks its own code lower than the original's descriptor
    does (searched with `nprobe` among the database and the batch) has its perturbation
    halved until it does not, or is released unchanged.
    `antialias` chooses the differentiable resize inside the optimization only (None: the
    extractor's own preprocessing, which always computes the stored and measured descriptors).
    """

    iterations: int = 10
    scaling: float = 2.0
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

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}: use one of {TARGETS}")
        if self.iterations < 0 or self.batch_size < 1 or self.max_pixels_per_batch < 1:
            raise ValueError("iterations >= 0, batch_size >= 1 and max_pixels_per_batch >= 1")
        if len(self.alpha) != 3:
            raise ValueError("alpha: one value per RGB channel")

    @classmethod
    def paper(cls, **overrides: object) -> ActivationParams:
        """The paper's published defaults (scaling 3, no margin term)."""
        paper = cls(scaling=3.0, lambda_margin=0.0, competitors=0, min_psnr=None, keep_first=False)
        return dataclasses.replace(paper, **overrides)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record of every parameter."""
        record = dataclasses.asdict(self)
        record["alpha"] = list(self.alpha)
        return record


@dataclass
class ActivationResult:
    """One activated image (8-bit HxWx3) and what it cost and gained."""

    image: np.ndarray
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
) -> list[ActivationResult]:
    """Activate images for `index` (see the module docstring); results in input order.

    `images`: PIL images or float (3,H,W) tensors in [0,1], any sizes. `original_features`:
    the descriptors the index stores for them (computed here when absent). `database`: the
    index holding other images' codes, searched for competitors (default: `index` itself).
    """
    params = params or ActivationParams()
    device = extractor.device
    pixels = [as_pixels(image, device) for image in images]
    if original_features is None:
        original_features = embed_each(extractor, pixels)
    features = faiss_index.as_matrix(original_features, extractor.dim, "original_features")
    if len(features) != len(pixels):
        raise ValueError(f"{len(features)} original features for {len(pixels)} images")
    # The batch's own codes join the database: they compete with each other, and the
    # unedited release must find its own code first (checked after optimisation).
    searched, own_ids = with_own_codes(database if database is not None else index, features)
    goals = build_goals(index, features, params, searched, device)
    passive_ranks = own_code_ranks(searched, features, own_ids, params.nprobe)
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    results: list[ActivationResult] = []
    for batch in plan_batches(pixels, params):
        activated = optimize_batch(
            [pixels[i] for i in batch], extractor, select(goals, batch), params, generator
        )
        if params.min_psnr is not None:
            activated = [
                within_psnr_floor(pixels[i], out, params.min_psnr)
                for i, out in zip(batch, activated, strict=True)
            ]
        if params.keep_first:
            activated = [
                not_worse_than_passive(
                    pixels[i], out, extractor, searched, own_ids[i], passive_ranks[i], params
                )
                for i, out in zip(batch, activated, strict=True)
            ]
        results.extend(
            measure(pixels[i], out, extractor, goals, i, features[i])
            for i, out in zip(batch, activated, strict=True)
        )
    return results


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


def plan_batches(pixels: Sequence[torch.Tensor], params: ActivationParams) -> Iterator[list[int]]:
    """Consecutive batches bounded by image count and total pixels (one image always fits)."""
    batch: list[int] = []
    total = 0
    for i, image in enumerate(pixels):
        size = image.shape[1] * image.shape[2]
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


def optimize_batch(
    pixels: Sequence[torch.Tensor],
    extractor: Extractor,
    goals: Goals,
    params: ActivationParams,
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Optimize one batch; returns the activated pixels (3,H,W) in [0,1], before rounding."""
    originals = [p[None] for p in pixels]
    amplitudes = [amplitude(p, params) for p in pixels]
    # MSE in the paper's normalized space: the pixel change divided by the channel std.
    std = torch.tensor(IMAGENET_STD, device=extractor.device).view(1, 3, 1, 1)
    mse_weights = [(a / std) ** 2 for a in amplitudes]
    deltas = [
        (1e-6 * torch.randn(p.shape, generator=generator)).to(extractor.device).requires_grad_(True)
        for p in originals
    ]
    if params.iterations > 0:
        optimizer = torch.optim.Adam(deltas, lr=params.learning_rate, fused=True)
        for _ in range(params.iterations):
            optimizer.zero_grad(set_to_none=True)
            bounded = [torch.tanh(d) for d in deltas]
            resized = torch.cat(
                [
                    extractor.resize(x + a * b, params.antialias)
                    for x, a, b in zip(originals, amplitudes, bounded, strict=True)
                ]
            )
            features = extractor.embed_resized(resized)
            image_loss = torch.stack(
                [(w * b * b).mean() for w, b in zip(mse_weights, bounded, strict=True)]
            ).sum()
            loss = params.lambda_feature * feature_loss(features, goals, params)
            loss = loss + params.lambda_image * image_loss
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return [
            (x + a * torch.tanh(d)).clamp(0.0, 1.0)[0]
            for x, a, d in zip(originals, amplitudes, deltas, strict=True)
        ]


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


def not_worse_than_passive(
    original: torch.Tensor,
    activated: torch.Tensor,
    extractor: Extractor,
    searched: faiss.Index,
    own_id: int,
    passive_rank: int,
    params: ActivationParams,
    attempts: int = 4,
) -> torch.Tensor:
    """Halve the perturbation until the release ranks its own code no lower than the original."""
    for _ in range(attempts):
        released = torch.from_numpy(to_uint8(activated)).permute(2, 0, 1).float() / 255.0
        with torch.no_grad():
            feature = extractor.embed(released[None].to(extractor.device)).cpu().numpy()
        if own_code_ranks(searched, feature, np.array([own_id]), params.nprobe)[0] <= passive_rank:
            return activated
        activated = original + 0.5 * (activated - original)
    return original.clone()


def within_psnr_floor(
    original: torch.Tensor, activated: torch.Tensor, floor_db: float, attempts: int = 4
) -> torch.Tensor:
    """Shrink the perturbation until the released 8-bit image is at least `floor_db` PSNR.

    Scaling a perturbation by c changes the PSNR by -20 log10(c), so one step nearly
    always lands; the loop absorbs the rounding to 8 bits.
    """
    before = to_uint8(original)
    for _ in range(attempts):
        current = psnr(before, to_uint8(activated))
        if current >= floor_db:
            return activated
        shrink = 10 ** ((current - floor_db - 0.1) / 20)
        activated = (original + shrink * (activated - original)).clamp(0.0, 1.0)
    return original.clone()


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3,H,W) in [0,1] -> HxWx3 uint8, rounding to nearest."""
    array = pixels.detach().clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)
    return array.permute(1, 2, 0).cpu().numpy()


def measure(
    original: torch.Tensor,
    activated: torch.Tensor,
    extractor: Extractor,
    goals: Goals,
    position: int,
    feature_before: np.ndarray,
) -> ActivationResult:
    """Quality and feature distances of the released 8-bit image (not of the float optimum)."""
    released = to_uint8(activated)
    before = to_uint8(original)
    with torch.no_grad():
        pixels = torch.from_numpy(released).to(extractor.device).permute(2, 0, 1).float() / 255.0
        feature_after = extractor.embed(pixels[None])[0]
    target = goals.targets[position]
    y = torch.from_numpy(feature_before).to(target.device)
    result = ActivationResult(
        image=released,
        psnr=psnr(before, released),
        ssim=ssim(before, released) if min(released.shape[:2]) >= 11 else float("nan"),
        linf=linf(before, released),
        distance_before=float(((y - target) ** 2).sum()),
        distance_after=float(((feature_after - target) ** 2).sum()),
    )
    if goals.competitors is not None and goals.competitor_mask[position].any():
        competitors = goals.competitors[position][goals.competitor_mask[position] > 0]
        result.competitor_gap_before = gap(y, target, competitors)
        result.competitor_gap_after = gap(feature_after, target, competitors)
    return result


def gap(feature: torch.Tensor, target: torch.Tensor, competitors: torch.Tensor) -> float:
    """Smallest (distance to a competitor - distance to the target): > 0 means the target wins."""
    own = ((feature - target) ** 2).sum()
    return float((((feature[None] - competitors) ** 2).sum(dim=1) - own).min())
