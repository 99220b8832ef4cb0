"""Activation engine: determinism, mixed sizes, reported quality, and retrieval on real photos."""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib import photos
from aindex_assets.lib.activation import ActivationParams, activate
from aindex_assets.lib.extractors import load_extractor
from aindex_assets.lib.metrics import psnr

# The unedited-copy guarantee is tested on its own; here it would hide the perturbation.
FAST = ActivationParams(iterations=3, batch_size=4, keep_first=False)


@pytest.fixture(scope="module")
def extractor():
    return load_extractor("efficientnet_lite0", device="cpu")


def decode(data: bytes, width: int) -> Image.Image:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return image.resize((width, max(16, image.height * width // image.width)), Image.BICUBIC)


@pytest.fixture(scope="module")
def small_photos() -> list[Image.Image]:
    named = dict(photos.demo_photos())
    names = ["skimage/astronaut.png", "skimage/chelsea.png", "skimage/coffee.png"]
    return [decode(named[name], width) for name, width in zip(names, (128, 160, 144), strict=True)]


@pytest.fixture(scope="module")
def small_index(extractor):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, extractor.dim)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return faiss_index.train_index("IVF4,PQ16x4", x / np.linalg.norm(x, axis=1, keepdims=True))


def test_deterministic_mixed_sizes_and_reported_quality(extractor, small_index, small_photos):
    images = small_photos
    assert len({im.size for im in images}) == len(images)
    first = activate(images, extractor, small_index, FAST)
    second = activate(images, extractor, small_index, FAST)
    for image, a, b in zip(images, first, second, strict=True):
        assert a.image.shape == (image.height, image.width, 3) and a.image.dtype == np.uint8
        assert np.array_equal(a.image, b.image)
        assert a.psnr == pytest.approx(psnr(np.asarray(image), a.image))
        diff = np.abs(np.asarray(image).astype(int) - a.image.astype(int))
        assert a.linf == diff.max() > 0
        assert 0.9 < a.ssim <= 1.0
        assert a.distance_after < a.distance_before
    other_seed = activate(images[:1], extractor, small_index, dataclasses.replace(FAST, seed=1))
    assert not np.array_equal(other_seed[0].image, first[0].image)


def test_batching_by_pixels_gives_nearly_the_same_images(extractor, small_index, small_photos):
    images = small_photos[:2]
    together = activate(images, extractor, small_index, FAST)
    apart = activate(
        images, extractor, small_index, dataclasses.replace(FAST, max_pixels_per_batch=1)
    )
    # The loss sums over images and Adam steps per element: batching changes nothing but
    # float rounding in the batched convolutions.
    for a, b in zip(together, apart, strict=True):
        assert np.mean(a.image != b.image) < 0.002
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1


def test_tensor_inputs_and_paper_preset(extractor, small_index):
    pixels = torch.rand(3, 96, 64)
    result = activate([pixels], extractor, small_index, ActivationParams.paper(iterations=2))
    assert result[0].image.shape == (96, 64, 3)
    paper = ActivationParams.paper()
    assert paper.scaling == 3.0 and paper.lambda_margin == 0.0
    assert paper.to_dict()["alpha"][0] == pytest.approx(0.072 / 0.299)
    with pytest.raises(ValueError, match="target"):
        ActivationParams(target="nowhere")


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


EDITS = {
    "none": lambda im: im,
    "contrast2": lambda im: ImageEnhance.Contrast(im).enhance(2.0),
    "brightness2": lambda im: ImageEnhance.Brightness(im).enhance(2.0),
    "brightness0.5": lambda im: ImageEnhance.Brightness(im).enhance(0.5),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
    "jpeg30": lambda im: jpeg(im, 30),
    "saturation0": lambda im: ImageEnhance.Color(im).enhance(0.0),
}


def recall_at_1(extractor, served, released, edits) -> dict[str, float]:
    out = {}
    for name, edit in edits.items():
        queries = extractor.embed_images([edit(im) for im in released])
        _, ids = faiss_index.search(served, queries, k=1, nprobe=1)
        out[name] = float((ids[:, 0] == np.arange(len(released))).mean())
    return out


def test_activation_beats_passive_on_real_photos(extractor):
    """Queried: packaged photos; training and distractors: crops of OTHER (held-out) photos."""
    to_ingest, held_out = photos.split_demo_photos()
    queried = [decode(data, 224) for _, data in to_ingest[:16]]
    sources = [decode(data, 512) for _, data in held_out]
    crops = extractor.embed_images(photos.random_crops(sources, 1600, 128, seed=0), batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = faiss_index.train_index("IVF16,PQ8x4", crops[:600])
    database = faiss_index.empty_shard(trained)
    faiss_index.add_with_ids(database, crops[600:], 10**6 + np.arange(1000, dtype=np.int64))
    features = extractor.embed_images(queried)
    served = faiss_index.merge_shards(trained, [database])
    faiss_index.add_with_ids(served, features, np.arange(len(queried), dtype=np.int64))

    results = activate(queried, extractor, trained, ActivationParams(), features, database=database)
    released = [Image.fromarray(r.image) for r in results]
    passive = recall_at_1(extractor, served, queried, EDITS)
    active = recall_at_1(extractor, served, released, EDITS)
    assert active["none"] == 1.0 and passive["none"] == 1.0
    assert np.mean(list(active.values())) > np.mean(list(passive.values())) + 0.05, (
        passive,
        active,
    )
    assert np.mean([r.psnr for r in results]) >= 40.0


def test_psnr_floor_shrinks_the_perturbation_until_it_holds() -> None:
    from aindex_assets.lib.activation import to_uint8, within_psnr_floor
    from aindex_assets.lib.metrics import psnr

    generator = torch.Generator().manual_seed(0)
    original = torch.rand(3, 64, 64, generator=generator)
    loud = (original + 0.05 * torch.randn(3, 64, 64, generator=generator)).clamp(0, 1)
    assert psnr(to_uint8(original), to_uint8(loud)) < 35
    quiet = within_psnr_floor(original, loud, 42.0)
    achieved = psnr(to_uint8(original), to_uint8(quiet))
    assert 42.0 <= achieved < 44.0  # shrunk just enough, not wiped out


def test_antialiased_optimization_spreads_the_perturbation(extractor, small_index):
    """A 3x downscale without antialias reads one pixel in nine: only those can be perturbed."""
    named = dict(photos.demo_photos())
    image = Image.open(io.BytesIO(named["skimage/astronaut.png"])).convert("RGB").resize((672, 672))
    changed = {}
    for antialias in (False, True):
        params = dataclasses.replace(FAST, antialias=antialias, min_psnr=None)
        released = activate([image], extractor, small_index, params)[0].image
        changed[antialias] = float((released != np.asarray(image)).any(axis=2).mean())
    assert changed[False] <= 1 / 9 + 0.01
    assert changed[True] > 0.3, changed


def test_unedited_release_never_ranks_its_own_code_below_the_original(
    extractor, small_index, small_photos
) -> None:
    from aindex_assets.lib.activation import own_code_ranks, with_own_codes

    params = dataclasses.replace(FAST, keep_first=True)
    features = extractor.embed_images(small_photos)
    searched, own_ids = with_own_codes(small_index, features)
    passive = own_code_ranks(searched, features, own_ids, params.nprobe)
    results = activate(small_photos, extractor, small_index, params, original_features=features)
    released = extractor.embed_images([Image.fromarray(r.image) for r in results])
    active = own_code_ranks(searched, released, own_ids, params.nprobe)
    assert (active <= passive).all(), (passive, active)


def test_sampled_grid_gives_the_extractor_resize_and_keeps_other_pixels(extractor) -> None:
    """Without antialias only the sampled grid reaches the descriptor: optimizing it is exact."""
    from aindex_assets.lib.activation import GridCanvas

    generator = torch.Generator().manual_seed(0)
    sizes = ((1024, 768), (300, 451), (100, 150), (224, 224))
    images = [torch.rand(3, h, w, generator=generator) for h, w in sizes]
    canvas = GridCanvas(images, extractor, ActivationParams())
    expected = torch.cat([extractor.resize(image[None]) for image in images])
    assert (canvas.resize(canvas.originals) - expected).abs().max() < 1e-4
    assert canvas.original.shape[-2:] == (448, 448)  # 2 rows/columns per output at most
    for image, back in zip(images, canvas.full(canvas.originals), strict=True):
        assert torch.equal(image, back)
