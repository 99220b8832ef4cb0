"""The bundled demo photos: enough of them, all decodable, stable, and distinct."""

import numpy as np
import pytest
from PIL import Image

from aindex_assets.lib.images import content_hash, decode_image
from aindex_assets.lib.photos import demo_photos, random_crops, split_demo_photos


@pytest.fixture(scope="module")
def photos():
    return demo_photos()


def test_at_least_forty_distinct_photos_with_unique_names(photos):
    names = [name for name, _ in photos]
    assert len(photos) >= 40
    assert len(set(names)) == len(names)
    assert len({content_hash(data) for _, data in photos}) == len(photos)
    assert "skimage/astronaut.png" in names and "matplotlib/grace_hopper.jpg" in names
    assert sum(name.startswith("interior/") for name in names) == 39


def test_photos_are_deterministic(photos):
    again = demo_photos()
    assert [name for name, _ in again] == [name for name, _ in photos]
    assert all(a == b for (_, a), (_, b) in zip(again, photos, strict=True))


def test_every_photo_decodes_as_a_colour_photo(photos):
    for name, data in photos:
        decoded = decode_image(data, name)
        assert decoded.format in ("JPEG", "PNG"), name
        assert min(decoded.width, decoded.height) >= 256, name
        # Colour, not grey stored as RGB (which has equal channels everywhere).
        small = np.asarray(decoded.image.reduce(8))
        assert (small[..., 0] != small[..., 2]).mean() > 0.2, name


def test_split_is_disjoint_and_complete(photos):
    to_ingest, held_out = split_demo_photos()
    names = [name for name, _ in photos]
    assert (len(to_ingest), len(held_out)) == (len(photos) - len(photos) // 4, len(photos) // 4)
    assert sorted(n for n, _ in to_ingest + held_out) == sorted(names)
    assert {n for n, _ in held_out} == set(names[3::4])
    with pytest.raises(ValueError):
        split_demo_photos(every=1)


def test_random_crops_are_seeded_squares():
    images = [Image.new("RGB", (100, 60), (i * 80, 0, 0)) for i in range(3)]
    first = random_crops(images, 7, 32, seed=1)
    assert len(first) == 7 and all(crop.size == (32, 32) for crop in first)
    again = random_crops(images, 7, 32, seed=1)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=True)
    )
    # Crops cycle through the inputs: crop i comes from image i % 3 (solid colours here).
    assert [int(np.asarray(c)[0, 0, 0]) for c in first[:3]] == [0, 80, 160]
    gradient = [Image.fromarray(np.tile(np.arange(200, dtype=np.uint8), (150, 1)), "L")]
    a, b = random_crops(gradient, 1, 16, seed=1), random_crops(gradient, 1, 16, seed=2)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    with pytest.raises(ValueError):
        random_crops([], 1, 16, seed=0)
