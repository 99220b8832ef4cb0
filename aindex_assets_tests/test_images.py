"""Decoding uploads: what is accepted, how it is converted, and why the rest is rejected."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from aindex_assets.lib.images import (
    ImageRejected,
    content_hash,
    decode_image,
    encode_png,
    pil_to_tensor,
    tensor_to_pil,
)


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(width: int = 64, height: int = 48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    pixels = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def rejection(data: bytes, **limits) -> str:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, "upload.bin", **limits)
    assert caught.value.name == "upload.bin"
    assert str(caught.value) == f"upload.bin: {caught.value.reason}"
    return caught.value.reason


def test_content_hash_is_sha256_hex():
    # The SHA-256 test vector of FIPS 180-2 for "abc".
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_hash(b"abc") == expected


def test_image_rejected_is_a_value_error_with_name_and_reason():
    error = ImageRejected("a.jpg", "empty file")
    assert isinstance(error, ValueError)
    assert (error.name, error.reason, str(error)) == ("a.jpg", "empty file", "a.jpg: empty file")


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_to_the_same_rgb_pixels(fmt):
    original = gradient()
    options = {"lossless": True} if fmt == "WEBP" else {}
    decoded = decode_image(encoded(original, fmt, **options), f"x.{fmt.lower()}")
    assert decoded.format == fmt
    assert (decoded.width, decoded.height, decoded.image.mode) == (64, 48, "RGB")
    assert np.array_equal(np.asarray(decoded.image), np.asarray(original))


def test_jpeg_exif_orientation_is_applied():
    # Left half red, right half blue, stored with orientation 6 (display rotated 90° CW):
    # the viewer sees the red half on top.
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :40, 0] = 255
    pixels[:, 40:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(Image.fromarray(pixels), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data, "turned.jpg")
    shown = np.asarray(decoded.image).astype(int)
    assert (decoded.width, decoded.height) == (40, 80)
    assert shown[:35, :, 0].mean() > 240 and shown[:35, :, 2].mean() < 15
    assert shown[45:, :, 2].mean() > 240 and shown[45:, :, 0].mean() < 15


def test_single_frame_gif_is_accepted():
    decoded = decode_image(encoded(gradient().convert("P"), "GIF"), "still.gif")
    assert decoded.format == "GIF" and decoded.image.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty file"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG is a vector"),
        (b"<svg width='10' height='10'></svg>", "SVG is a vector"),
        (b"%PDF-1.7\n%binary", "PDF"),
        (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "PostScript"),
        (b"just some notes\n", "text file"),
        (bytes(range(256)) * 4, "not an image in a supported format"),
    ],
)
def test_non_images_are_rejected_with_what_they_look_like(data, expected):
    assert expected in rejection(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_rejected(fmt):
    data = encoded(gradient(256, 256), fmt)
    reason = rejection(data[: len(data) * 2 // 3])
    assert "truncated or corrupt" in reason


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header (with a correct CRC) claims another size."""
    data = bytearray(encoded(Image.new("L", (20, 20)), "PNG"))
    ihdr_start = 8 + 8  # signature, then length and type of the IHDR chunk
    data[ihdr_start : ihdr_start + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr_start + 13]))
    data[ihdr_start + 13 : ihdr_start + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_bomb_is_rejected_from_the_header_before_decoding():
    # The pixel data is that of a 20x20 image: decoding would fail as truncated, so a
    # "decompression bomb" reason proves the size was checked first.
    reason = rejection(png_claiming_size(9000, 9000))
    assert "decompression bomb" in reason and "81000000" in reason
    assert "decompression bomb" in rejection(png_claiming_size(20000, 20000))
    assert "decompression bomb" in rejection(encoded(gradient(), "PNG"), max_pixels=1000)


def test_animated_gif_and_multipage_tiff_are_rejected():
    frames = [Image.new("RGB", (32, 32), (v, 255 - v, 0)) for v in (0, 128, 255)]
    gif = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    assert "animated image (3 frames)" in rejection(gif)
    pages = [Image.new("RGB", (32, 32), (v, v, v)) for v in (0, 255)]
    tiff = encoded(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert "multi-page TIFF (2 frames)" in rejection(tiff)


def test_animated_webp_is_rejected():
    frames = [Image.new("RGB", (32, 32), (v, 0, 0)) for v in (0, 128, 255)]
    webp = encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)
    assert "animated image (3 frames)" in rejection(webp)


def test_too_small_and_extreme_aspect_ratios_are_rejected():
    assert "too small (10x40)" in rejection(encoded(Image.new("RGB", (10, 40)), "PNG"))
    assert decode_image(encoded(Image.new("RGB", (16, 16)), "PNG"), "ok.png").width == 16
    assert "aspect ratio 50.0:1" in rejection(encoded(Image.new("RGB", (1000, 20)), "PNG"))
    assert decode_image(encoded(Image.new("RGB", (400, 20)), "PNG"), "ok.png").width == 400
    assert "too small" in rejection(encoded(Image.new("RGB", (30, 30)), "PNG"), min_side=31)


def test_sixteen_bit_grey_png_scales_to_eight_bits():
    values = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16).repeat(16, 0).repeat(4, 1)
    data = encoded(Image.fromarray(values), "PNG")
    rgb = np.asarray(decode_image(data, "deep.png").image)
    assert rgb.shape == (16, 16, 3)
    assert rgb[0, ::4, 0].tolist() == [0, 100, 255, 128]  # 32896 / 257 = 128.0
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_transparency_is_composited_over_white():
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[:, :8, 3] = 0  # fully transparent black -> white
    rgba[:, 8:, 3] = 128  # half transparent black -> 255 * (1 - 128/255) = 127
    rgb = np.asarray(decode_image(encoded(Image.fromarray(rgba, "RGBA"), "PNG"), "a.png").image)
    assert (rgb[:, :8] == 255).all()
    assert (rgb[:, 8:] == 127).all()

    grey_alpha = Image.merge("LA", (Image.new("L", (16, 16), 0), Image.new("L", (16, 16), 0)))
    assert (np.asarray(decode_image(encoded(grey_alpha, "PNG"), "la.png").image) == 255).all()

    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 20, 30] + [0] * 762)
    palette.paste(0, (0, 0, 8, 16))
    rgb = np.asarray(decode_image(encoded(palette, "PNG", transparency=0), "p.png").image)
    assert (rgb[:, :8] == 255).all()
    assert rgb[0, 12].tolist() == [10, 20, 30]


def test_cmyk_and_grey_become_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    red = np.asarray(decode_image(encoded(cmyk, "TIFF"), "c.tif").image)
    assert red[0, 0].tolist() == [255, 0, 0]
    grey = np.asarray(decode_image(encoded(Image.new("L", (32, 32), 77), "PNG"), "g.png").image)
    assert grey.shape == (32, 32, 3) and (grey == 77).all()


def test_encode_png_is_lossless_and_validates_input():
    pixels = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    data = encode_png(pixels)
    assert data.startswith(b"\x89PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
    assert encode_png(pixels) == data
    with pytest.raises(ValueError, match="uint8"):
        encode_png(pixels.astype(np.float32))
    with pytest.raises(ValueError, match="HxWx3"):
        encode_png(pixels[..., 0])


def test_tensor_round_trip_and_rounding():
    image = gradient(20, 10)
    tensor = pil_to_tensor(image)
    assert tensor.shape == (3, 10, 20) and tensor.dtype == torch.float32
    assert float(tensor.min()) >= 0.0 and float(tensor.max()) <= 1.0
    assert np.array_equal(np.asarray(tensor_to_pil(tensor)), np.asarray(image))
    # 128.4/255 rounds to 128, 128.6/255 to 129; out-of-range values are clamped.
    values = torch.tensor([128.4 / 255, 128.6 / 255, 1.5, -0.5]).view(1, 1, 4).repeat(3, 1, 1)
    assert np.asarray(tensor_to_pil(values))[0, :, 0].tolist() == [128, 129, 255, 0]
    with pytest.raises(ValueError, match="3xHxW"):
        tensor_to_pil(torch.zeros(1, 4, 4))


# -- fuzzing: whatever the bytes, the decoder answers with an image or a reason ----------------


def _seed_files() -> list[bytes]:
    """Small valid files of every accepted container, the starting points of mutation."""
    base = gradient(24, 20)
    return [
        encoded(base, "JPEG", quality=80),
        encoded(base, "PNG"),
        encoded(base.convert("P"), "GIF"),
        encoded(base, "WEBP"),
        encoded(base, "TIFF"),
        encoded(base, "BMP"),
        encoded(base.convert("LA"), "PNG"),
    ]


SEEDS = _seed_files()


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A valid file with bytes flipped, a slice cut out, and/or cut short."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(0, len(data) - 1))
        del data[start : start + draw(st.integers(1, 64))]
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated_files(), st.binary(max_size=2048)))
def test_fuzzed_bytes_decode_or_are_rejected_with_a_reason(data: bytes) -> None:
    # Anything but ImageRejected would fail the whole batch that holds the file.
    try:
        decoded = decode_image(data, "fuzz.bin")
    except ImageRejected as rejected:
        assert rejected.reason and rejected.name == "fuzz.bin"
        return
    assert decoded.image.mode == "RGB"
    assert (decoded.width, decoded.height) == decoded.image.size
    assert min(decoded.image.size) >= 16


def test_parser_errors_other_than_oserror_are_rejections():
    # Found by the fuzz test: one flipped byte in a TIFF tag makes Pillow raise TypeError
    # ("Missing dimensions"), which used to escape the decoder and fail the whole batch.
    data = bytearray(encoded(gradient(24, 20), "TIFF"))
    data[130] = 219
    assert "corrupt TIFF" in rejection(bytes(data))
