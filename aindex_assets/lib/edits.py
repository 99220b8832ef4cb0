"""The evaluation edits ("attacks") of Active Image Indexing: PIL image in, PIL image out.

`PAPER_EDITS` lists the paper's evaluation edits in its order; `sweep_edits()` gives the
parameter sweeps. Every edit is deterministic: the random "auto" edit draws from a
generator seeded by the caller (`edit(image, seed=...)`), so one image and one seed always
give the same copy.

Conventions, as in the authors' evaluation code:
- `center_crop_s` and `resize_s` keep a fraction `s` of the AREA (sides scaled by sqrt(s));
- rotations expand the canvas (black corners) with bilinear interpolation;
- blur is torchvision's Gaussian blur, whose sigma follows from the kernel size;
- JPEG re-encodes with Pillow at the given quality.

AugLy 1.0.0 is not called: its `meme_format` fails on Pillow >= 10, its perspective
transform uses the removed `np.float`, and importing it requires libmagic. Its assets
(screenshot templates, fonts, emoji) are read from the installed package by path, and
`overlay_screenshot` reproduces AugLy's default `overlay_onto_screenshot` pixel for pixel.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageDraw, ImageFilter, ImageFont

MEME_TEXT = "LOL"
MEME_CAPTION_HEIGHT = 250  # AugLy's default, in pixels, whatever the image size
SCREENSHOT_TEMPLATE = "web.png"

# The single parameter of each edit kind, as recorded in reports.
PARAMETER_OF_KIND: dict[str, str | None] = {
    "none": None,
    "contrast": "factor",
    "brightness": "factor",
    "hue": "factor",
    "blur": "kernel_size",
    "jpeg": "quality",
    "rotate": "degrees",
    "center_crop": "area",
    "resize": "area",
    "meme": None,
    "overlay_screenshot": None,
    "auto": None,
}


@dataclass(frozen=True)
class Edit:
    """One named edit with at most one parameter; call it as `edit(image, seed=0)`.

    `seed` only matters for the "auto" kind (1 to 4 random edits); the others ignore it.
    """

    kind: str
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in PARAMETER_OF_KIND:
            raise ValueError(f"unknown edit kind {self.kind!r}")
        if (PARAMETER_OF_KIND[self.kind] is None) != (self.value is None):
            raise ValueError(f"edit {self.kind!r} takes parameter {PARAMETER_OF_KIND[self.kind]}")
        if self.value is not None:
            object.__setattr__(self, "value", float(self.value))

    @property
    def name(self) -> str:
        return self.kind if self.value is None else f"{self.kind}_{self.value:g}"

    @property
    def params(self) -> dict[str, float]:
        parameter = PARAMETER_OF_KIND[self.kind]
        return {} if parameter is None or self.value is None else {parameter: self.value}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "params": self.params}

    def __call__(self, image: Image.Image, seed: int = 0) -> Image.Image:
        rgb = image.convert("RGB")
        if self.kind == "auto":
            return auto_edit(rgb, seed)[0]
        if self.value is None:
            return _PARAMETERLESS[self.kind](rgb)
        return _WITH_PARAMETER[self.kind](rgb, self.value)


def center_crop(image: Image.Image, area: float) -> Image.Image:
    """Central crop keeping `area` of the pixels, aspect ratio unchanged."""
    width, height = _scaled_size(image, math.sqrt(area))
    return TF.center_crop(image, [height, width])


def resize(image: Image.Image, area: float) -> Image.Image:
    """Bilinear, antialiased resize to `area` of the pixels, aspect ratio unchanged."""
    width, height = _scaled_size(image, math.sqrt(area))
    return TF.resize(image, [height, width], antialias=True)


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    return TF.rotate(image, degrees, interpolation=TF.InterpolationMode.BILINEAR, expand=True)


def gaussian_blur(image: Image.Image, kernel_size: float) -> Image.Image:
    size = int(kernel_size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"blur kernel size must be odd and positive, got {kernel_size}")
    return TF.gaussian_blur(image, [size, size])


def jpeg(image: Image.Image, quality: float) -> Image.Image:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as reopened:
        return reopened.convert("RGB")


def meme(image: Image.Image, text: str = MEME_TEXT) -> Image.Image:
    """AugLy's meme format: a white band of 250 px above the image with a black caption."""
    caption_height = MEME_CAPTION_HEIGHT
    width, height = image.size
    font, (text_width, text_height) = _fit_font(text, width - 10, caption_height - 10)
    framed = Image.new("RGB", (width, height + caption_height), (255, 255, 255))
    framed.paste(image, (0, caption_height))
    position = (round((width - text_width) / 2), round((caption_height - text_height) / 2))
    ImageDraw.Draw(framed).multiline_text(position, text, font=font, fill=(0, 0, 0), align="center")
    return framed


def overlay_screenshot(image: Image.Image, template: str = SCREENSHOT_TEMPLATE) -> Image.Image:
    """AugLy's `overlay_onto_screenshot` defaults: the image fitted into a social-media page."""
    page, (left, top, right, bottom) = _screenshot_template(template)
    box_width, box_height = right - left, bottom - top
    factor = min(box_width / image.width, box_height / image.height)
    resample = Image.Resampling.LANCZOS if factor < 1 else Image.Resampling.BILINEAR
    fitted = image.resize(
        (max(1, int(image.width * factor)), max(1, int(image.height * factor))), resample
    )
    padded = Image.new("RGB", (box_width, box_height))
    padded.paste(fitted, ((box_width - fitted.width) // 2, (box_height - fitted.height) // 2))
    page.paste(padded, (left, top))
    return page


_WITH_PARAMETER: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "contrast": TF.adjust_contrast,
    "brightness": TF.adjust_brightness,
    "hue": TF.adjust_hue,
    "blur": gaussian_blur,
    "jpeg": jpeg,
    "rotate": rotate,
    "center_crop": center_crop,
    "resize": resize,
}
_PARAMETERLESS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "none": lambda image: image.copy(),
    "meme": meme,
    "overlay_screenshot": overlay_screenshot,
}

PAPER_EDITS: dict[str, Edit] = {
    edit.name: edit
    for edit in (
        Edit("none"),
        Edit("contrast", 0.5),
        Edit("contrast", 2.0),
        Edit("brightness", 0.5),
        Edit("brightness", 2.0),
        Edit("hue", 0.2),
        Edit("blur", 11),
        Edit("jpeg", 50),
        Edit("rotate", 25),
        Edit("rotate", 90),
        Edit("center_crop", 0.5),
        Edit("resize", 0.5),
        Edit("meme"),
        Edit("overlay_screenshot"),
        Edit("auto"),
    )
}


def sweep_edits(full: bool = False) -> dict[str, list[Edit]]:
    """The parameter sweeps of the paper, per edit kind.

    By default a handful of steps per kind (quick reports); `full=True` gives the
    authors' dense grid (rotation every 10 degrees, crop/resize every 0.1, ...).
    """
    if full:
        grid: dict[str, list[float]] = {
            "rotate": [float(a) for a in range(-90, 91, 10)],
            "center_crop": [round(0.1 * i, 1) for i in range(1, 11)],
            "resize": [round(0.1 * i, 1) for i in range(1, 11)],
            "blur": [float(1 + 2 * i) for i in range(1, 15)],
            "jpeg": [float(10 * i) for i in range(1, 11)],
            "contrast": [round(0.5 + 0.1 * i, 1) for i in range(15)],
            "brightness": [round(0.5 + 0.1 * i, 1) for i in range(15)],
            "hue": [round(-0.5 + 0.1 * i, 1) for i in range(11)],
        }
    else:
        grid = {
            "rotate": [-90, -45, -25, -10, 10, 25, 45, 90],
            "center_crop": [0.1, 0.3, 0.5, 0.7, 0.9, 1.0],
            "resize": [0.1, 0.3, 0.5, 0.7, 0.9, 1.0],
            "blur": [3, 7, 11, 17, 23, 29],
            "jpeg": [10, 30, 50, 70, 90, 100],
            "contrast": [0.5, 0.8, 1.1, 1.4, 1.6, 1.9],
            "brightness": [0.5, 0.8, 1.1, 1.4, 1.6, 1.9],
            "hue": [-0.5, -0.3, -0.1, 0.1, 0.3, 0.5],
        }
    return {kind: [Edit(kind, float(v)) for v in values] for kind, values in grid.items()}


# ---------------------------------------------------------------------------------------
# "auto": 1 to 4 random edits, one from each of 1 to 4 families, as in the authors' query
# generator (probabilities 0.1, 0.2, 0.3, 0.4 for 1, 2, 3, 4 edits; a crop goes first,
# a palette reduction last).


@dataclass(frozen=True)
class _Primitive:
    name: str
    sample: Callable[[np.random.Generator], dict[str, Any]]
    apply: Callable[..., Image.Image]


def auto_edit(image: Image.Image, seed: int) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Apply 1 to 4 random edits drawn from `seed`; return the copy and what was applied."""
    rng = np.random.default_rng(seed)
    count = int(rng.choice([1, 2, 3, 4], p=[0.1, 0.2, 0.3, 0.4]))
    families = rng.choice(len(_FAMILIES), size=count, replace=False)
    chosen = [_FAMILIES[f][int(rng.integers(len(_FAMILIES[f])))] for f in families]
    chosen.sort(key=lambda p: {"crop": 0, "convert_color": 2}.get(p.name, 1))
    applied: list[dict[str, Any]] = []
    edited = image.convert("RGB")
    for primitive in chosen:
        params = primitive.sample(rng)
        edited = primitive.apply(edited, **params).convert("RGB")
        applied.append({"name": primitive.name, **params})
    return edited, applied


def _uniform(low: float, high: float) -> Callable[[np.random.Generator], float]:
    return lambda rng: float(rng.uniform(low, high))


def _grayscale(image: Image.Image) -> Image.Image:
    return image.convert("L").convert("RGB")


def _saturation(image: Image.Image, factor: float) -> Image.Image:
    return TF.adjust_saturation(image, factor)


def _brightness(image: Image.Image, factor: float) -> Image.Image:
    return TF.adjust_brightness(image, factor)


def _overlay_emoji(
    image: Image.Image, emoji: str, x: float, y: float, size: float, opacity: float
) -> Image.Image:
    with Image.open(_augly_assets() / "twemojis" / emoji) as opened:
        sticker = opened.convert("RGBA")
    side = max(1, round(size * min(image.size)))
    sticker = sticker.resize((side, side), Image.Resampling.BILINEAR)
    alpha = np.asarray(sticker.getchannel("A"), dtype=np.float32) * opacity
    sticker.putalpha(Image.fromarray(alpha.round().astype(np.uint8), "L"))
    canvas = image.convert("RGBA")
    canvas.alpha_composite(sticker, (int(x * image.width), int(y * image.height)))
    return canvas.convert("RGB")


def _overlay_text(
    image: Image.Image, font: str, text: str, size: float, color: list[int], x: float, y: float
) -> Image.Image:
    font_size = max(1, round(size * image.height))
    typeface = ImageFont.truetype(str(_font_path(font)), font_size)
    canvas = image.copy()
    position = (int(x * image.width), int(y * image.height))
    ImageDraw.Draw(canvas).text(position, text, font=typeface, fill=tuple(color))
    return canvas


def _blur_radius(image: Image.Image, radius: float) -> Image.Image:
    return image.filter(ImageFilter.GaussianBlur(radius))


def _convert_color(image: Image.Image, colors: int) -> Image.Image:
    return image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT).convert("RGB")


def _edge_enhance(image: Image.Image) -> Image.Image:
    return image.filter(ImageFilter.EDGE_ENHANCE_MORE)


def _pixelize(image: Image.Image, ratio: float) -> Image.Image:
    small = image.resize(_scaled_size(image, ratio), Image.Resampling.BILINEAR)
    return small.resize(image.size, Image.Resampling.NEAREST)


def _shuffle_pixels(image: Image.Image, fraction: float, seed: int) -> Image.Image:
    pixels = np.asarray(image).reshape(-1, 3).copy()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pixels), size=int(fraction * len(pixels)), replace=False)
    pixels[chosen] = pixels[rng.permutation(chosen)]
    return Image.fromarray(pixels.reshape(image.height, image.width, 3), "RGB")


def _crop(image: Image.Image, x1: float, x2: float, y1: float, y2: float) -> Image.Image:
    box = (int(x1 * image.width), int(y1 * image.height))
    end = (max(box[0] + 1, int(x2 * image.width)), max(box[1] + 1, int(y2 * image.height)))
    return image.crop((*box, *end))


def _hflip(image: Image.Image) -> Image.Image:
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def _change_aspect_ratio(image: Image.Image, ratio: float) -> Image.Image:
    area = image.width * image.height
    width = max(1, int(math.sqrt(area * ratio)))
    return image.resize((width, max(1, int(area / width))), Image.Resampling.BILINEAR)


def _pad_square(image: Image.Image, color: list[int]) -> Image.Image:
    side = max(image.size)
    square = Image.new("RGB", (side, side), tuple(color))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


def _perspective(image: Image.Image, sigma: float, seed: int) -> Image.Image:
    """Move the four corners by N(0, sigma) pixels (at most a quarter side), crop black."""
    width, height = image.size
    limit = np.array([width, height]) / 4
    offsets = np.clip(np.random.default_rng(seed).normal(0, sigma, (4, 2)), -limit, limit)
    source = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float64)
    target = source + offsets
    warped = image.transform(
        image.size,
        Image.Transform.PERSPECTIVE,
        _perspective_coefficients(target, source),
        Image.Resampling.BILINEAR,
    )
    left = max(target[0, 0], target[3, 0], 0)
    top = max(target[0, 1], target[1, 1], 0)
    right = min(target[1, 0], target[2, 0], width)
    bottom = min(target[2, 1], target[3, 1], height)
    return warped.crop(
        (int(left), int(top), max(int(left) + 1, int(right)), max(int(top) + 1, int(bottom)))
    )


def _perspective_coefficients(output_quad: np.ndarray, input_quad: np.ndarray) -> tuple:
    # PIL maps each output pixel (x, y) to the input point ((ax+by+c)/(gx+hy+1), ...).
    rows = []
    for (x, y), (u, v) in zip(output_quad, input_quad, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    solution = np.linalg.solve(np.array(rows), input_quad.reshape(-1))
    return tuple(float(c) for c in solution)


def _rotate_and_crop(image: Image.Image, degrees: float) -> Image.Image:
    """Rotate, then keep the largest axis-aligned rectangle free of black corners."""
    rotated = rotate(image, degrees)
    width, height = _largest_inner_rectangle(image.width, image.height, math.radians(degrees))
    left, top = (rotated.width - width) // 2, (rotated.height - height) // 2
    return rotated.crop((left, top, left + width, top + height))


def _largest_inner_rectangle(width: int, height: int, angle: float) -> tuple[int, int]:
    long_side, short_side = max(width, height), min(width, height)
    sin_a, cos_a = abs(math.sin(angle)), abs(math.cos(angle))
    if short_side <= 2 * sin_a * cos_a * long_side or abs(sin_a - cos_a) < 1e-10:
        half = short_side / 2
        inner = (half / sin_a, half / cos_a) if width >= height else (half / cos_a, half / sin_a)
    else:
        cos_2a = cos_a * cos_a - sin_a * sin_a
        inner = (
            (width * cos_a - height * sin_a) / cos_2a,
            (height * cos_a - width * sin_a) / cos_2a,
        )
    return max(1, int(inner[0])), max(1, int(inner[1]))


def _sample_crop(rng: np.random.Generator) -> dict[str, Any]:
    spans = {}
    for axis in ("x", "y"):
        extent = float(rng.uniform(0.3, 0.6))
        start = float(rng.uniform(0, 1 - extent))
        spans[f"{axis}1"], spans[f"{axis}2"] = start, start + extent
    return spans


def _sample_text(rng: np.random.Generator) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 "
    return "".join(letters[i] for i in rng.integers(len(letters), size=int(rng.integers(5, 16))))


def _color(rng: np.random.Generator) -> list[int]:
    return [int(c) for c in rng.integers(0, 256, size=3)]


def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


_TEXT_FONTS = ("Raleway-ExtraBold.ttf", "OpenSans-Bold.ttf", "Montserrat-Regular.ttf")

_FAMILIES: tuple[tuple[_Primitive, ...], ...] = (
    (  # colour
        _Primitive("brightness", lambda r: {"factor": float(r.uniform(0.1, 1.9))}, _brightness),
        _Primitive("grayscale", lambda r: {}, _grayscale),
        _Primitive("saturation", lambda r: {"factor": float(r.uniform(2.0, 5.0))}, _saturation),
    ),
    (  # overlays
        _Primitive(
            "overlay_emoji",
            lambda r: {
                "emoji": _emoji_names()[int(r.integers(len(_emoji_names())))],
                "x": float(r.uniform(0, 0.8)),
                "y": float(r.uniform(0, 0.8)),
                "size": float(r.uniform(0.4, 0.8)),
                "opacity": float(r.uniform(0.5, 1.0)),
            },
            _overlay_emoji,
        ),
        _Primitive(
            "overlay_text",
            lambda r: {
                "font": _TEXT_FONTS[int(r.integers(len(_TEXT_FONTS)))],
                "text": _sample_text(r),
                "size": float(r.uniform(0.1, 0.3)),
                "color": _color(r),
                "x": float(r.uniform(0, 0.6)),
                "y": float(r.uniform(0, 0.6)),
            },
            _overlay_text,
        ),
    ),
    (  # pixel level
        _Primitive("blur", lambda r: {"radius": float(r.uniform(5, 10))}, _blur_radius),
        _Primitive("convert_color", lambda r: {"colors": int(r.integers(2, 17))}, _convert_color),
        _Primitive("jpeg", lambda r: {"quality": int(r.integers(5, 26))}, jpeg),
        _Primitive("edge_enhance", lambda r: {}, _edge_enhance),
        _Primitive("pixelization", lambda r: {"ratio": float(r.uniform(0.2, 0.5))}, _pixelize),
        _Primitive(
            "shuffle_pixels",
            lambda r: {"fraction": float(r.uniform(0.1, 0.3)), "seed": _seed(r)},
            _shuffle_pixels,
        ),
    ),
    (  # spatial
        _Primitive("crop", _sample_crop, _crop),
        _Primitive("hflip", lambda r: {}, _hflip),
        _Primitive(
            "change_aspect_ratio",
            lambda r: {"ratio": float(r.uniform(0.5, 2.0))},
            _change_aspect_ratio,
        ),
        _Primitive(
            "overlay_screenshot",
            lambda r: {"template": ("mobile.png", "web.png")[int(r.integers(2))]},
            overlay_screenshot,
        ),
        _Primitive("pad_square", lambda r: {"color": _color(r)}, _pad_square),
        _Primitive(
            "perspective",
            lambda r: {"sigma": float(r.uniform(30, 60)), "seed": _seed(r)},
            _perspective,
        ),
        _Primitive("rotate", lambda r: {"degrees": float(r.uniform(-90, 90))}, _rotate_and_crop),
    ),
)


# ---------------------------------------------------------------------------------------
# Shared utilities and the assets shipped with AugLy.


def _scaled_size(image: Image.Image, side_factor: float) -> tuple[int, int]:
    return max(1, int(image.width * side_factor)), max(1, int(image.height * side_factor))


@functools.cache
def _augly_assets() -> Path:
    spec = importlib.util.find_spec("augly")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the augly package (screenshot templates, fonts, emoji) is not installed"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "assets"


@functools.cache
def _emoji_names() -> tuple[str, ...]:
    root = _augly_assets() / "twemojis"
    return tuple(sorted(str(p.relative_to(root)) for p in root.rglob("*.png")))


def _font_path(font_name: str) -> Path:
    path = _augly_assets() / "fonts" / font_name
    if path.exists():
        return path
    import matplotlib  # fallback typeface that always ships with matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"


@functools.cache
def _screenshot_page(template: str) -> tuple[Image.Image, tuple[int, int, int, int]]:
    folder = _augly_assets() / "screenshot_templates"
    boxes = json.loads((folder / "bboxes.json").read_text())
    with Image.open(folder / template) as page:
        return page.convert("RGB"), tuple(boxes[template])


def _screenshot_template(template: str) -> tuple[Image.Image, tuple[int, int, int, int]]:
    page, box = _screenshot_page(template)
    return page.copy(), box


def _fit_font(
    text: str, max_width: int, max_height: int
) -> tuple[ImageFont.FreeTypeFont, tuple[int, int]]:
    """The largest size (AugLy's steps of 5 px down from the band height) that fits."""
    path = str(_font_path("Raleway-ExtraBold.ttf"))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    size = max_height
    while True:
        font = ImageFont.truetype(path, max(1, size))
        left, top, right, bottom = probe.multiline_textbbox((0, 0), text, font=font)
        extent = (int(right - left), int(bottom - top))
        if size <= 1 or (extent[0] <= max_width and extent[1] <= max_height):
            return font, extent
        size -= 5


def edits_by_name(names: list[str] | None = None) -> Mapping[str, Edit]:
    """A subset of `PAPER_EDITS` by name, in the paper's order; unknown names raise."""
    if names is None:
        return dict(PAPER_EDITS)
    unknown = sorted(set(names) - set(PAPER_EDITS))
    if unknown:
        raise KeyError(f"unknown edits {unknown}; known: {list(PAPER_EDITS)}")
    return {name: edit for name, edit in PAPER_EDITS.items() if name in names}
