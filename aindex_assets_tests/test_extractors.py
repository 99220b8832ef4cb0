"""Extractors: identity, normalization, differentiability, and the three loaders."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from aindex_assets.lib.extractors import ExtractorError, load_extractor


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def lite0():
    return load_extractor("efficientnet_lite0", device="cpu")


@pytest.fixture
def scripted(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.jit.script(TinyNet()).save(str(path))
    return path


def test_default_extractor_shape_and_normalization(lite0):
    assert lite0.dim == 1280 and lite0.input_size == 224 and len(lite0.identity) == 64
    pixels = torch.rand(2, 3, 150, 190)
    descriptors = lite0.embed(pixels)
    assert descriptors.shape == (2, 1280)
    assert torch.allclose(descriptors.norm(dim=1), torch.ones(2), atol=1e-5)


def test_embed_is_differentiable_wrt_pixels(lite0):
    pixels = torch.rand(1, 3, 97, 131, requires_grad=True)
    lite0.embed(pixels)[0, :10].sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in lite0.parameters())
    assert not lite0.backbone.training


def test_embed_images_matches_embed(lite0):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (h, 80, 3), dtype=np.uint8)) for h in (64, 120)]
    batch = lite0.embed_images(images, batch_size=1)
    one = lite0.embed(torch.from_numpy(np.asarray(images[1])).permute(2, 0, 1)[None] / 255.0)
    assert batch.dtype == np.float32 and batch.shape == (2, 1280)
    assert np.allclose(batch[1], one.detach().numpy()[0], atol=1e-5)


def test_identity_stable_and_sensitive_to_weights(scripted: Path, tmp_path: Path):
    first = load_extractor(f"torchscript:{scripted}", device="cpu", input_size=32)
    again = load_extractor(f"torchscript:{scripted}", device="cpu", input_size=32)
    assert first.identity == again.identity and first.dim == 8
    other_size = load_extractor(f"torchscript:{scripted}", device="cpu", input_size=48)
    assert other_size.identity != first.identity
    torch.manual_seed(1)
    changed = tmp_path / "changed.pt"
    torch.jit.script(TinyNet()).save(str(changed))
    assert (
        load_extractor(f"torchscript:{changed}", device="cpu", input_size=32).identity
        != first.identity
    )


def test_torchscript_file_url_and_pin(scripted: Path, tmp_path: Path):
    digest = hashlib.sha256(scripted.read_bytes()).hexdigest()
    local = load_extractor(f"torchscript:{scripted}", device="cpu", input_size=32)
    pinned = load_extractor(
        f"torchscript:{scripted.as_uri()}#sha256={digest}",
        device="cpu",
        input_size=32,
        cache_dir=tmp_path / "c",
    )
    assert pinned.identity == local.identity
    assert (tmp_path / "c" / f"{digest}.pt").is_file()
    pixels = torch.rand(1, 3, 40, 40)
    assert torch.allclose(local.embed(pixels), pinned.embed(pixels))
    with pytest.raises(ExtractorError, match="sha256 mismatch"):
        load_extractor(f"torchscript:{scripted}#sha256={'0' * 64}", device="cpu")


def test_torchscript_over_http(scripted: Path, tmp_path: Path):
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(scripted.parent)
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{scripted.name}"
        remote = load_extractor(
            f"torchscript:{url}", device="cpu", input_size=32, cache_dir=tmp_path / "c"
        )
    finally:
        server.shutdown()
        server.server_close()
    assert (
        remote.identity
        == load_extractor(f"torchscript:{scripted}", device="cpu", input_size=32).identity
    )


def test_torchvision_loader(tmp_path: Path):
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    model = load_extractor(f"torchvision:resnet18:{weights}", device="cpu")
    assert model.dim == 512
    assert model.embed(torch.rand(1, 3, 64, 64)).shape == (1, 512)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nonsense", "unknown extractor spec"),
        ("torchscript:/no/such/file.pt", "not found"),
        ("torchvision:resnet18:/no/such/weights.pth", "not found"),
        ("torchvision:not_an_arch:/x.pth", "unknown torchvision"),
    ],
)
def test_bad_specs_are_refused(spec: str, message: str):
    with pytest.raises(ExtractorError, match=message):
        load_extractor(spec, device="cpu")


def test_antialias_is_part_of_the_preprocessing_and_identity(scripted: Path):
    sharp = load_extractor(f"torchscript:{scripted}", device="cpu", input_size=32)
    smooth = load_extractor(f"torchscript:{scripted}", device="cpu", input_size=32, antialias=True)
    assert not sharp.preprocessing["antialias"] and smooth.preprocessing["antialias"]
    assert smooth.identity != sharp.identity
    pixels = torch.rand(1, 3, 128, 160)
    assert not torch.allclose(smooth.embed(pixels), sharp.embed(pixels))
    assert torch.allclose(smooth.resize(pixels, antialias=False), sharp.resize(pixels))


def test_antialiased_resize_gives_every_pixel_a_gradient(scripted: Path):
    """A 4x downscale without antialias reads 2x2 of every 4x4 pixels; with it, all of them."""
    extractor = load_extractor(f"torchscript:{scripted}", device="cpu", input_size=32)
    reached = {}
    for antialias in (False, True):
        pixels = torch.rand(1, 3, 128, 128, requires_grad=True)
        extractor.resize(pixels, antialias=antialias).sum().backward()
        reached[antialias] = float((pixels.grad != 0).float().mean())
    assert reached[False] == pytest.approx(0.25)
    assert reached[True] == 1.0
