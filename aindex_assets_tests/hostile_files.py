"""Hostile and odd uploads, generated: what each one is, and what the pipeline must say.

`expect` is None for a file that must be activated, else a phrase its rejection reason
must contain. Accepted files are distinct crops of a packaged photo, so that none is a
duplicate of another (or of the photos other tests upload).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aindex_assets.lib.images import decode_image
from aindex_assets.lib.photos import demo_photos


@dataclass(frozen=True)
class HostileFile:
    name: str
    data: bytes
    expect: str | None


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header (with a correct CRC) claims another size."""
    data = bytearray(encoded(Image.new("L", (20, 20)), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def photo_crops(count: int, seed: int, side: int = 96) -> list[Image.Image]:
    """`count` distinct RGB crops of one packaged photo (a seed per caller keeps them apart)."""
    name, data = demo_photos()[0]
    photo = decode_image(data, name).image
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        span = int(rng.integers(side, min(photo.size) // 2))
        left = int(rng.integers(0, photo.width - span))
        top = int(rng.integers(0, photo.height - span))
        crops.append(photo.crop((left, top, left + span, top + span)).resize((side, side)))
    return crops


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """Stored landscape (96x64) with EXIF orientation 6: shown portrait (64x96)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(image.resize((96, 64)), "JPEG", quality=90, exif=exif.tobytes())


def hostile_corpus(seed: int = 7) -> list[HostileFile]:
    crops = photo_crops(9, seed)
    rng = np.random.default_rng(seed)
    frames = [Image.new("RGB", (32, 32), (v, 255 - v, 0)) for v in (0, 128, 255)]
    jpeg, png = encoded(crops[0], "JPEG"), encoded(crops[0], "PNG")
    palette = crops[3].convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    grey16 = (np.asarray(crops[2].convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return [
        HostileFile("empty file.jpg", b"", "empty file"),
        HostileFile("truncated.jpg", jpeg[: len(jpeg) // 2], "truncated or corrupt"),
        HostileFile("truncated.png", png[: len(png) // 2], "truncated or corrupt"),
        HostileFile("random bytes.jpg", rng.bytes(4096), "not an image in a supported format"),
        HostileFile("page.png", b"<!DOCTYPE html><html><body>404</body></html>", "HTML page"),
        HostileFile("bomb.png", png_claiming_size(100_000, 100_000), "decompression bomb"),
        HostileFile("one pixel.png", encoded(Image.new("RGB", (1, 1)), "PNG"), "too small (1x1)"),
        HostileFile("banner.png", encoded(Image.new("RGB", (10_000, 10)), "PNG"), "10000x10"),
        HostileFile(
            "animated.gif",
            encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80),
            "animated image (3 frames)",
        ),
        HostileFile(
            "animated.webp",
            encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=80),
            "animated image (3 frames)",
        ),
        HostileFile(
            "drawing.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="99"><rect width="9"/></svg>',
            "SVG is a vector format",
        ),
        HostileFile("cmyk.jpg", encoded(crops[1].convert("CMYK"), "JPEG", quality=90), None),
        HostileFile("deep 16-bit.png", encoded(Image.fromarray(grey16), "PNG"), None),
        HostileFile("palette transparent.png", encoded(palette, "PNG", transparency=0), None),
        HostileFile("grey alpha.png", encoded(crops[4].convert("LA"), "PNG"), None),
        HostileFile("rotated exif.jpg", exif_rotated_jpeg(crops[5]), None),
        HostileFile("photo with spaces.jpg", encoded(crops[6], "JPEG", quality=90), None),
        HostileFile("写真 été.png", encoded(crops[7], "PNG"), None),
        HostileFile("../../escape.png", encoded(crops[8], "PNG"), None),
    ]
