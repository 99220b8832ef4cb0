"""Safe decoding of uploaded image files, content hashing, and the encoding of releases.

Everything that enters the pipeline goes through `decode_image`, which either returns
an RGB image with its EXIF orientation applied or raises `ImageRejected` with a reason
a person can act on. Decisions:

- Accepted containers: JPEG, PNG, WebP, TIFF, BMP and single-frame GIF. Pillow is only
  allowed to try these plugins, so files such as EPS (which Pillow hands to Ghostscript)
  are never parsed. A multi-picture JPEG (MPO: a stereo pair, or a photo with its depth
  map, shown as one photo by every viewer) is indexed as its first picture and reported
  as ``JPEG``.
- Files above `max_bytes` (64 MiB, `MAX_FILE_BYTES`) are refused before parsing; the
  uploader (`aindex ingest`) and the ingestion step enforce the same limit.
- Image size is checked from the header, before any pixel is decoded, against
  `max_pixels`; Pillow's global bomb limit is neither relied upon nor changed.
- Progressive JPEGs are refused before decoding when they hold more than `max_jpeg_scans`
  scans (200) or more than `max_jpeg_scan_pixels` scans x pixels: each scan is one more
  pass over every coefficient, so a small file that repeats its last scan thousands of
  times takes minutes to decode (encoders write about 10). Scans are counted from the
  markers in the bytes, without decoding.
- Animations (GIF/WebP with more than one frame) and multi-page TIFFs are rejected: a
  photo bank releases single pictures, and silently indexing the first frame of a clip
  would index something the owner never released as such.
- Images under `min_side` pixels on a side are rejected: extractors resize to about
  224-288 px, so a thumbnail carries no detail worth indexing.
- Aspect ratios above `max_aspect` (20:1 by default) are rejected: the extractor's
  square resize squeezes such a banner into a few rows of pixels.
- Truncated or corrupt files are rejected: decoding is forced with `load()` and
  `LOAD_TRUNCATED_IMAGES` stays off, so a half-uploaded JPEG is not padded with grey.
  Whatever a parser raises on malformed bytes (Pillow also raises KeyError, IndexError,
  struct.error...) becomes a rejection, so one bad file never fails its batch; only
  MemoryError propagates.
- Colour: CMYK, grey, palette, 16-bit and alpha images become 8-bit RGB; transparent
  pixels are composited over white (how a viewer shows them on a page). Embedded ICC
  profiles are not applied: pixels are taken as sRGB.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MIN_SIDE = 16
DEFAULT_MAX_ASPECT = 20.0
# The largest upload accepted, in bytes; `aindex ingest` and the ingestion step use it too.
MAX_FILE_BYTES = 64 * 1024 * 1024
# libjpeg writes 10 scans for a colour progressive JPEG (6 for grey); mozjpeg and jpegtran
# scripts stay in the tens. Each scan costs one pass over the whole image, so the budget
# also caps scans x pixels: 32 passes over a 50-megapixel photo, about a second of decoding.
DEFAULT_MAX_JPEG_SCANS = 200
DEFAULT_MAX_JPEG_SCAN_PIXELS = 32 * DEFAULT_MAX_PIXELS

# Signatures of things people upload by mistake, to say what a rejected file looks like.
_KNOWN_NON_IMAGES: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document, not an image"),
    (b"%!PS", "a PostScript/EPS file, not supported"),
    (b"8BPS", "a Photoshop PSD file, not supported"),
    (b"PK\x03\x04", "a ZIP archive, not an image"),
    (b"\x1f\x8b", "a gzip archive, not an image"),
    (b"\x00\x00\x01\x00", "an ICO icon, not supported"),
    (b"GIF8", "a GIF that could not be parsed"),
    (b"\x89PNG", "a PNG that could not be parsed"),
    (b"\xff\xd8\xff", "a JPEG that could not be parsed"),
)


class ImageRejected(ValueError):
    """An uploaded file that cannot enter the index; `reason` says why."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class DecodedImage:
    """A decoded upload: RGB pixels (orientation applied) and what the file was.

    `width` and `height` are those of `image`, i.e. after the EXIF rotation;
    `format` is Pillow's name of the container ("JPEG", "PNG", ...);
    `mode` is the colour mode stored in the file before conversion to RGB.
    """

    image: Image.Image
    format: str
    width: int
    height: int
    mode: str


def content_hash(data: bytes) -> str:
    """SHA-256 of the file's bytes, as lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def decode_image(
    data: bytes,
    name: str,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    max_aspect: float = DEFAULT_MAX_ASPECT,
    max_bytes: int = MAX_FILE_BYTES,
    max_jpeg_scans: int = DEFAULT_MAX_JPEG_SCANS,
    max_jpeg_scan_pixels: int = DEFAULT_MAX_JPEG_SCAN_PIXELS,
) -> DecodedImage:
    """Decode an uploaded file into 8-bit RGB or raise `ImageRejected` naming `name`.

    The pixels are decoded once: every check before that reads the header or the bytes.
    """
    if not data:
        raise ImageRejected(name, "empty file (0 bytes)")
    if len(data) > max_bytes:
        raise ImageRejected(name, too_large_reason(len(data), max_bytes))
    img = _open_header(data, name)
    _check_header(img, name, max_pixels=max_pixels, min_side=min_side, max_aspect=max_aspect)
    if img.format in ("JPEG", "MPO"):
        _check_jpeg_scans(data, img, name, max_jpeg_scans, max_jpeg_scan_pixels)
    try:
        img.load()
    except MemoryError:
        raise
    except Exception as error:  # Pillow's parsers raise KeyError, IndexError, struct.error...
        raise ImageRejected(name, f"truncated or corrupt {img.format} data ({error})") from error
    try:
        oriented = ImageOps.exif_transpose(img)
    except MemoryError:
        raise
    except Exception as error:  # a malformed EXIF block must not crash ingestion
        raise ImageRejected(name, f"unreadable EXIF orientation ({error})") from error
    try:
        rgb = _to_rgb(oriented, name)
    except (ImageRejected, MemoryError):
        raise
    except Exception as error:
        raise ImageRejected(name, f"corrupt {img.format} data ({error})") from error
    # An MPO is a JPEG followed by more pictures: stored, named and served as a JPEG.
    container = "JPEG" if img.format == "MPO" else str(img.format)
    return DecodedImage(
        image=rgb, format=container, width=rgb.width, height=rgb.height, mode=img.mode
    )


def too_large_reason(size: int, limit: int = MAX_FILE_BYTES) -> str:
    """Why a file of `size` bytes is refused (the same words wherever the limit applies)."""
    return f"file too large: {size} bytes, above the limit of {limit} bytes ({limit / 2**20:g} MiB)"


def jpeg_scan_count(data: bytes) -> int:
    """Start-of-scan markers of the first picture of a JPEG, found without decoding.

    Walks the markers as libjpeg reads them: segments with a length are skipped whole
    (so an SOS-like pair inside EXIF or ICC data does not count), the entropy-coded data
    after each SOS runs to the next marker (0xFF followed by anything but a stuffed 0x00,
    a restart marker or a fill byte), and the walk ends at EOI, where the decoder stops.
    """
    scans, position, end = 0, 2, len(data)
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= end:
            return scans
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before a marker
            position += 1
            continue
        if marker == 0x00 or 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no length
            position += 2
            continue
        if marker == 0xD9:  # EOI: the end of the first picture (an MPO's next one follows)
            return scans
        if position + 4 > end:
            return scans
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:
            scans += 1
        position += 2 + max(length, 2)


def _check_jpeg_scans(
    data: bytes, img: Image.Image, name: str, max_scans: int, max_scan_pixels: int
) -> None:
    scans = jpeg_scan_count(data)
    width, height = img.size
    if scans > max_scans:
        raise ImageRejected(
            name,
            f"JPEG with {scans} scans is above the limit of {max_scans} scans: each scan is "
            "one more decoding pass (encoders write about 10), so this file would take "
            "minutes to decode",
        )
    if scans * width * height > max_scan_pixels:
        allowed = max(1, max_scan_pixels // max(1, width * height))
        raise ImageRejected(
            name,
            f"JPEG with {scans} scans of {width}x{height} pixels is above the decoding "
            f"budget of {max_scan_pixels} scan-pixels (at most {allowed} scans at this size)",
        )


def _open_header(data: bytes, name: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.DecompressionBombError as error:
        raise ImageRejected(name, f"decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageRejected(name, _describe_unknown(data)) from error
    except MemoryError:
        raise
    except Exception as error:  # any parser failure is the file's fault, not the batch's
        raise ImageRejected(name, f"unreadable image header ({error!r})") from error


def _describe_unknown(data: bytes) -> str:
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if b"<svg" in head or (head.startswith(b"<?xml") and b"svg" in head):
        return "SVG is a vector format, not supported"
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "an HTML page, not an image (a web page saved instead of the picture?)"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypmsf1"):
        return "HEIC/HEIF is not supported (export as JPEG)"
    if head[4:12] == b"ftypavif":
        return "AVIF is not supported (export as JPEG or PNG)"
    for signature, description in _KNOWN_NON_IMAGES:
        if data.startswith(signature):
            return description
    if _looks_like_text(data[:1024]):
        return "a text file, not an image"
    allowed = ", ".join(ALLOWED_FORMATS)
    return f"not an image in a supported format ({allowed})"


def _looks_like_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_header(
    img: Image.Image, name: str, *, max_pixels: int, min_side: int, max_aspect: float
) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected(
            name,
            f"decompression bomb guard: {width}x{height} = {width * height} pixels "
            f"exceeds the limit of {max_pixels}",
        )
    try:
        frames = getattr(img, "n_frames", 1)
    except MemoryError:
        raise
    except Exception as error:  # e.g. KeyError from a TIFF page without its size tags
        raise ImageRejected(name, f"corrupt {img.format} frame table ({error})") from error
    if frames > 1 and img.format != "MPO":  # an MPO's first picture is the photo
        what = "multi-page TIFF" if img.format == "TIFF" else "animated image"
        raise ImageRejected(name, f"{what} ({frames} frames); only still images are indexed")
    if min(width, height) < min_side:
        raise ImageRejected(
            name,
            f"too small ({width}x{height}); at least {min_side} px per side is needed "
            "because descriptors are computed at about 224-288 px",
        )
    aspect = max(width, height) / min(width, height)
    if aspect > max_aspect:
        raise ImageRejected(
            name,
            f"extreme aspect ratio {aspect:.1f}:1 ({width}x{height}) above {max_aspect:g}:1; "
            "the extractor's square resize would squash it beyond recognition",
        )


def _to_rgb(img: Image.Image, name: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return Image.fromarray(_sixteen_bit_to_uint8(np.asarray(img)), "L").convert("RGB")
    if mode == "F":
        raise ImageRejected(name, "32-bit floating-point samples are not supported")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or img.mode == "RGBA":
        return _composite_on_white(img.convert("RGBA"))
    try:
        return img.convert("RGB")
    except ValueError as error:
        raise ImageRejected(name, f"unsupported colour mode {mode}") from error


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    # 65535 maps to 255 exactly: v / 257 is the inverse of the usual 8->16 bit v * 257.
    wide = np.clip(values.astype(np.float64), 0, 65535)
    return np.rint(wide / 257.0).astype(np.uint8)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def encode_png(pixels: np.ndarray) -> bytes:
    """Lossless PNG of an HxWx3 uint8 array (activated images must keep every bit)."""
    return encode_release(pixels, ReleaseFormat.png)


class ReleaseFormat(StrEnum):
    """The file format activated images are released in.

    PNG is lossless, the default. JPEG and WebP are several times smaller but lossy: what a
    reader decodes differs from the activated pixels, so the released image's quality and
    descriptor are measured on the decoded file. The content type is ``image/<value>``.
    """

    png = "png"
    jpeg = "jpeg"
    webp = "webp"

    @property
    def lossless(self) -> bool:
        return self is ReleaseFormat.png

    @property
    def content_type(self) -> str:
        return f"image/{self.value}"


def release_format(name: str) -> ReleaseFormat:
    """The release format called `name`, or a ValueError naming the field and the choices."""
    try:
        return ReleaseFormat(name)
    except ValueError:
        choices = ", ".join(f.value for f in ReleaseFormat)
        raise ValueError(f"release_format {name!r} is not one of {choices}") from None


def encode_release(pixels: np.ndarray, release: ReleaseFormat | str, quality: int = 95) -> bytes:
    """The released file of an HxWx3 uint8 array, in `release` format at `quality` (1-100).

    PNG ignores `quality`. JPEG keeps full-resolution chroma (4:4:4): activation may move
    blue up to 5x more than green (alpha is inversely proportional to the luma weights), and
    on the packaged photos 4:4:4 at quality 95 measured 1.3-4 dB above 4:2:0 for about 30%
    more bytes; its Huffman tables are optimized (smaller file, same pixels). WebP is libwebp's
    lossy mode, whose chroma is always 4:2:0.
    """
    chosen = release_format(release)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {pixels.dtype} {pixels.shape}")
    options: dict[str, object] = {} if chosen.lossless else {"quality": quality}
    if chosen is ReleaseFormat.jpeg:
        options |= {"subsampling": 0, "optimize": True}
    buffer = io.BytesIO()
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    image.save(buffer, format=chosen.value.upper(), **options)
    return buffer.getvalue()


def decode_release(data: bytes) -> np.ndarray:
    """HxWx3 uint8 pixels (writable) of a file written by `encode_release` (trusted: no
    upload checks)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def pil_to_tensor(image: Image.Image, device: torch.device | str = "cpu") -> torch.Tensor:
    """RGB PIL image -> float32 tensor CxHxW in [0, 1], on `device` (bytes travel as uint8)."""
    import torch  # imported here so that decoding alone does not load torch

    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).to(device).permute(2, 0, 1).float().div_(255.0)


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """Float tensor CxHxW in [0, 1] -> RGB PIL image, clamped and rounded to 8 bits."""
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected a 3xHxW tensor, got shape {tuple(tensor.shape)}")
    import torch

    scaled = (tensor.detach().float().cpu().clamp(0.0, 1.0) * 255.0).round()
    array = scaled.to(dtype=torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), "RGB")
