"""The evaluation edits: geometry, colour effects, determinism and the random "auto" edit."""

import colorsys
import importlib.util
import math

import numpy as np
import pytest
from PIL import Image

from aindex_assets.lib.edits import PAPER_EDITS, Edit, auto_edit, edits_by_name, sweep_edits
from aindex_assets.lib.metrics import psnr


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int64)


def photo_like(width: int = 120, height: int = 80, seed: int = 0) -> Image.Image:
    """Smooth gradients plus mild noise: something between a flat card and pure noise."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 1, width)[None, :]
    y = np.linspace(0, 1, height)[:, None]
    base = np.stack([200 * x + 0 * y, 200 * y + 0 * x, 100 + 80 * x * y], axis=2)
    noisy = base + rng.normal(0, 8, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


def test_paper_edits_in_the_papers_order():
    assert list(PAPER_EDITS) == [
        "none",
        "contrast_0.5",
        "contrast_2",
        "brightness_0.5",
        "brightness_2",
        "hue_0.2",
        "blur_11",
        "jpeg_50",
        "rotate_25",
        "rotate_90",
        "center_crop_0.5",
        "resize_0.5",
        "meme",
        "overlay_screenshot",
        "auto",
    ]
    assert PAPER_EDITS["jpeg_50"].to_dict() == {
        "name": "jpeg_50",
        "kind": "jpeg",
        "params": {"quality": 50.0},
    }


def test_edit_validation():
    with pytest.raises(ValueError, match="unknown"):
        Edit("sepia", 1.0)
    with pytest.raises(ValueError, match="degrees"):
        Edit("rotate")
    with pytest.raises(ValueError):
        Edit("meme", 3.0)
    assert Edit("blur", 11) == Edit("blur", 11.0)
    assert list(edits_by_name(["rotate_90", "none"])) == ["none", "rotate_90"]
    with pytest.raises(KeyError, match="rotate_45"):
        edits_by_name(["rotate_45"])


@pytest.mark.parametrize("size", [(16, 16), (123, 77)])
def test_every_paper_edit_returns_rgb_and_is_deterministic(size):
    image = photo_like(*size)
    for name, edit in PAPER_EDITS.items():
        first, second = edit(image, seed=5), edit(image, seed=5)
        assert first.mode == "RGB", name
        assert np.array_equal(pixels(first), pixels(second)), name
    assert np.array_equal(pixels(PAPER_EDITS["none"](image)), pixels(image))


def test_center_crop_keeps_half_the_area_in_the_middle():
    image = photo_like(400, 100)
    cropped = PAPER_EDITS["center_crop_0.5"](image)
    # Sides scaled by sqrt(0.5): 400 -> 282, 100 -> 70; margins (400-282)/2 = 59, (100-70)/2 = 15.
    assert cropped.size == (282, 70)
    assert np.array_equal(pixels(cropped), pixels(image)[15:85, 59:341])


def test_resize_keeps_half_the_area():
    resized = PAPER_EDITS["resize_0.5"](photo_like(400, 100))
    assert resized.size == (282, 70)
    assert resized.width * resized.height / (400 * 100) == pytest.approx(0.5, abs=0.01)


def test_rotations():
    image = photo_like(120, 80)
    quarter = PAPER_EDITS["rotate_90"](image)
    assert np.array_equal(pixels(quarter), np.rot90(pixels(image)))  # counter-clockwise
    tilted = PAPER_EDITS["rotate_25"](image)
    angle = math.radians(25)
    expected = (
        120 * math.cos(angle) + 80 * math.sin(angle),
        120 * math.sin(angle) + 80 * math.cos(angle),
    )
    assert abs(tilted.width - expected[0]) <= 2 and abs(tilted.height - expected[1]) <= 2
    assert (pixels(tilted)[0, 0] == 0).all()  # expanded canvas: black corners


def test_brightness_and_contrast():
    image = photo_like()
    darker = PAPER_EDITS["brightness_0.5"](image)
    assert np.abs(pixels(darker) - pixels(image) * 0.5).max() <= 1
    brighter = PAPER_EDITS["brightness_2"](image)
    assert np.abs(pixels(brighter) - np.minimum(pixels(image) * 2, 255)).max() <= 1
    flat = PAPER_EDITS["contrast_0.5"](image)
    steep = PAPER_EDITS["contrast_2"](image)
    assert pixels(flat).std() < pixels(image).std() < pixels(steep).std()


def test_hue_shift_turns_red_by_72_degrees():
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    shifted = pixels(PAPER_EDITS["hue_0.2"](red))[0, 0]
    expected = [round(255 * c) for c in colorsys.hsv_to_rgb(0.2, 1.0, 1.0)]  # (204, 255, 0)
    assert np.abs(shifted - expected).max() <= 3


def test_blur_and_jpeg():
    image = photo_like()
    blurred = PAPER_EDITS["blur_11"](image)
    assert blurred.size == image.size
    assert np.diff(pixels(blurred), axis=1).std() < np.diff(pixels(image), axis=1).std() / 2
    compressed = PAPER_EDITS["jpeg_50"](image)
    assert compressed.size == image.size
    assert 25 < psnr(np.asarray(image), np.asarray(compressed)) < float("inf")


def test_meme_adds_a_white_caption_band_with_black_text():
    image = photo_like(300, 200)
    framed = pixels(PAPER_EDITS["meme"](image))
    assert framed.shape == (450, 300, 3)
    band = framed[:250]
    assert (band == 255).all(axis=2).mean() > 0.7
    assert (band < 50).all(axis=2).sum() > 500  # the caption's black strokes
    assert np.array_equal(framed[250:], pixels(image))


def test_overlay_screenshot_places_the_image_inside_the_template():
    image = Image.new("RGB", (200, 100), (250, 10, 10))
    shot = pixels(PAPER_EDITS["overlay_screenshot"](image))
    assert shot.shape == (736, 1200, 3)
    # web.png's slot is (254, 424)-(783, 710): 529x286; 200x100 scales by 2.645 to 529x264.
    inside = shot[440:690, 300:740]
    assert np.abs(inside - [250, 10, 10]).max() <= 2


@pytest.mark.skipif(importlib.util.find_spec("magic") is None, reason="augly needs libmagic")
def test_overlay_screenshot_matches_augly_pixel_for_pixel():
    functional = pytest.importorskip("augly.image.functional")
    for image in (photo_like(300, 200), photo_like(60, 90, seed=1)):
        ours = pixels(PAPER_EDITS["overlay_screenshot"](image))
        theirs = pixels(functional.overlay_onto_screenshot(image))
        assert np.array_equal(ours, theirs)


def test_auto_is_seeded_and_applies_one_to_four_edits():
    image = photo_like(64, 48)
    counts = set()
    outputs = []
    for seed in range(60):
        edited, applied = auto_edit(image, seed)
        again, applied_again = auto_edit(image, seed)
        assert applied == applied_again
        assert np.array_equal(pixels(edited), pixels(again))
        assert 1 <= len(applied) <= 4
        names = [step["name"] for step in applied]
        if "crop" in names:
            assert names[0] == "crop"
        if "convert_color" in names:
            assert names[-1] == "convert_color"
        counts.add(len(applied))
        outputs.append(pixels(edited))
    assert counts == {1, 2, 3, 4}
    distinct = {(o.shape, o.tobytes()) for o in outputs}
    assert len(distinct) > 50
    assert np.array_equal(
        pixels(PAPER_EDITS["auto"](image, seed=7)), pixels(auto_edit(image, 7)[0])
    )


def test_auto_survives_tiny_images():
    tiny = photo_like(16, 16)
    for seed in range(150):
        edited, _ = auto_edit(tiny, seed)
        assert edited.mode == "RGB" and min(edited.size) >= 1


def test_sweeps_cover_the_papers_ranges():
    expected = {
        "rotate": (-90, 90),
        "center_crop": (0.1, 1.0),
        "resize": (0.1, 1.0),
        "blur": (3, 29),
        "jpeg": (10, 100),
        "contrast": (0.5, 1.9),
        "brightness": (0.5, 1.9),
        "hue": (-0.5, 0.5),
    }
    small = photo_like(40, 30)
    for full in (False, True):
        sweep = sweep_edits(full=full)
        assert set(sweep) == set(expected)
        for kind, edits in sweep.items():
            values = [edit.value for edit in edits]
            assert (min(values), max(values)) == pytest.approx(expected[kind]), kind
            assert len(values) >= 6 and all(edit.kind == kind for edit in edits)
            assert len({edit.name for edit in edits}) == len(edits)
            for edit in edits:
                assert edit(small).mode == "RGB"
    assert len(sweep_edits(full=True)["rotate"]) == 19
