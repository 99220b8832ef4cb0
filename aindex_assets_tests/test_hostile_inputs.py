"""Nothing lost, nothing stalled: resource bombs, duplicates, MPO, hostile names in the status.

Each file here is generated: a progressive JPEG that repeats its last scan (decoding time
grows with the scans, the bytes hardly), a multi-picture JPEG, re-uploads, and stored
keys that carry terminal escapes.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aindex_assets import cli
from aindex_assets.lib import images as images_module
from aindex_assets.lib.images import (
    DEFAULT_MAX_JPEG_SCANS,
    MAX_FILE_BYTES,
    ImageRejected,
    decode_image,
    jpeg_scan_count,
)
from aindex_assets.lib.photos import demo_photos
from aindex_assets.services import ingest as ingest_module
from aindex_assets.services.ingest import ingest_batch
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, BatchManifest
from aindex_assets.storage.objectstore import LocalObjectStore
from aindex_assets_tests.hostile_files import encoded, photo_crops

SOS, EOI = 0xDA, 0xD9


# -- generators ---------------------------------------------------------------------------


def progressive_jpeg(side: int, flat: bool = True) -> bytes:
    """A progressive JPEG; a flat grey picture makes every refinement scan a few bytes."""
    if flat:
        pixels = np.full((side, side, 3), 128, np.uint8)
    else:
        pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encoded(Image.fromarray(pixels), "JPEG", progressive=True, quality=90)


def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each segment after SOI; an SOS runs to the end of its data."""
    segments, position = [], 2
    while position < len(data):
        assert data[position] == 0xFF, f"no marker at {position}"
        marker = data[position + 1]
        if marker == EOI:
            segments.append((marker, position, position + 2))
            return segments
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == SOS:  # entropy data: up to the next marker that is not 0xFF00 or RSTn
            while True:
                end = data.index(b"\xff", end)
                follower = data[end + 1]
                if follower == 0 or 0xD0 <= follower <= 0xD7:
                    end += 2
                    continue
                break
        segments.append((marker, position, end))
        position = end
    raise AssertionError("no EOI")


def repeat_last_scan(data: bytes, times: int) -> bytes:
    """Byte surgery: the final SOS segment and its entropy data `times` more before EOI.

    A refinement scan decoded again changes nothing visible but costs a full pass over
    every coefficient, so decoding time grows with `times` while the file barely does.
    """
    segments = jpeg_segments(data)
    _, start, end = [s for s in segments if s[0] == SOS][-1]
    eoi = segments[-1][1]
    return data[:eoi] + data[start:end] * times + data[eoi:]


def scan_bomb() -> bytes:
    """Like the reported 186 KB file: thousands of repeated scans (4,000 here)."""
    return repeat_last_scan(progressive_jpeg(1024), 3990)


def mpo(first: Image.Image, second: Image.Image) -> bytes:
    """A multi-picture JPEG (a stereo pair), as cameras and phones write them."""
    return encoded(first, "MPO", save_all=True, append_images=[second], quality=95)


# -- progressive JPEG scans ---------------------------------------------------------------


def test_scan_bomb_is_refused_in_milliseconds_with_a_reason_naming_the_scans() -> None:
    bomb = scan_bomb()
    assert len(bomb) < 200_000 and jpeg_scan_count(bomb) == 4000
    started = time.perf_counter()
    with pytest.raises(ImageRejected) as caught:
        decode_image(bomb, "slow.jpg")
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0, f"refusing took {elapsed:.1f} s: the file was decoded"
    reason = caught.value.reason
    assert "4000 scans" in reason and f"limit of {DEFAULT_MAX_JPEG_SCANS} scans" in reason


def test_a_large_picture_gets_fewer_scans_than_a_small_one() -> None:
    # 16.8 megapixels x 110 scans: each pass costs as much as 110 of a 0.15 MP thumbnail.
    large = repeat_last_scan(progressive_jpeg(4096), 100)
    with pytest.raises(ImageRejected) as caught:
        decode_image(large, "large.jpg")
    assert "110 scans of 4096x4096 pixels" in caught.value.reason
    assert "at most 95 scans at this size" in caught.value.reason
    small = repeat_last_scan(progressive_jpeg(384), 100)  # 110 scans of a small picture
    assert decode_image(small, "small.jpg").image.size == (384, 384)


def test_ordinary_jpegs_keep_far_below_the_scan_limit() -> None:
    name, data = demo_photos()[0]
    photo = decode_image(data, name).image
    exif = Image.Exif()
    exif[0x0112] = 1
    for options in ({}, {"progressive": True}, {"progressive": True, "optimize": True}):
        jpeg = encoded(photo, "JPEG", quality=90, exif=exif.tobytes(), **options)
        assert jpeg_scan_count(jpeg) <= 10
        assert decode_image(jpeg, "photo.jpg").image.size == photo.size
    assert jpeg_scan_count(encoded(photo.convert("L"), "JPEG", progressive=True)) == 6


def test_scan_count_skips_segment_payloads_and_stops_at_the_first_picture() -> None:
    data = progressive_jpeg(64, flat=False)
    # An APP segment whose payload holds SOS markers (as EXIF or ICC bytes may) counts none.
    payload = b"\xff\xda" * 300
    app = b"\xff\xe9" + (len(payload) + 2).to_bytes(2, "big") + payload
    padded = data[:2] + app + data[2:]
    assert jpeg_scan_count(padded) == jpeg_scan_count(data) == 10
    assert decode_image(padded, "app.jpg").image.size == (64, 64)
    # Scans after EOI (an MPO's second picture, or trailing junk) are never decoded.
    assert jpeg_scan_count(data + repeat_last_scan(data, 500)) == 10


def test_scan_limits_are_parameters() -> None:
    data = progressive_jpeg(64)
    with pytest.raises(ImageRejected, match="10 scans is above the limit of 9 scans"):
        decode_image(data, "x.jpg", max_jpeg_scans=9)
    with pytest.raises(ImageRejected, match="decoding budget"):
        decode_image(data, "x.jpg", max_jpeg_scan_pixels=64 * 64 * 9)


# -- size limit -----------------------------------------------------------------------------


def test_decoder_refuses_files_above_the_size_limit_before_parsing() -> None:
    assert MAX_FILE_BYTES == 64 * 1024 * 1024
    data = encoded(photo_crops(1, seed=3)[0], "PNG")
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, "big.png", max_bytes=len(data) - 1)
    assert caught.value.reason.startswith(f"file too large: {len(data)} bytes")
    assert decode_image(data, "big.png", max_bytes=len(data)).image.size == (96, 96)


# -- ingestion: read once, bounded, decoded once, duplicates recorded -----------------------


def drop(store: LocalObjectStore, files: list[tuple[str, bytes]], batch: str) -> BatchManifest:
    keys = []
    for name, data in files:
        key = f"{INBOX_PREFIX}{batch}/{name}"
        store.put_bytes(key, data)
        keys.append(key)
    return BatchManifest(batch, "ingest", tuple(keys), "2024-01-01T00:00:00Z")


def test_ingestion_refuses_the_bomb_and_decodes_each_file_once(
    local_store: LocalObjectStore, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog.open(sqlite_url)
    good = [(f"ok {i}.jpg", encoded(c, "JPEG")) for i, c in enumerate(photo_crops(3, seed=11))]
    manifest = drop(local_store, [*good, ("slow.jpg", scan_bomb())], "batch-a")
    decoded: list[str] = []

    def counting_decode(data: bytes, name: str, **limits: object) -> object:
        decoded.append(name)
        return decode_image(data, name, **limits)

    monkeypatch.setattr(ingest_module, "decode_image", counting_decode)
    started = time.perf_counter()
    outcome = ingest_batch(local_store, catalog, manifest)
    assert time.perf_counter() - started < 10
    assert sorted(decoded) == sorted(manifest.source_keys)  # once per file
    assert len(outcome.registered) == 3
    [(key, reason)] = outcome.rejected
    assert key.endswith("slow.jpg") and "4000 scans" in reason
    assert catalog.status_counts() == {"batch-a": {"registered": 3, "rejected": 1}}


def test_ingestion_refuses_an_oversized_object_without_reading_it_whole(
    local_store: LocalObjectStore, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog.open(sqlite_url)
    small = encoded(photo_crops(1, seed=12)[0], "PNG")
    large = small + b"\0" * 5000  # any object written straight through the S3 API
    manifest = drop(local_store, [("small.png", small), ("large.png", large)], "batch-b")
    monkeypatch.setattr(ingest_module, "MAX_FILE_BYTES", len(small))
    monkeypatch.setattr(ingest_module, "READ_CHUNK", 1000)
    monkeypatch.setattr(local_store, "get_bytes", lambda key: pytest.fail(f"{key} was read whole"))
    outcome = ingest_batch(local_store, catalog, manifest)
    assert len(outcome.registered) == 1
    [(key, reason)] = outcome.rejected
    assert key.endswith("large.png")
    limit = f"above the limit of {len(small)} bytes"
    assert reason.startswith(f"file too large: {len(large)} bytes, {limit}")


def test_duplicates_are_recorded_per_batch_and_shown_by_status(
    local_store: LocalObjectStore, catalog: Catalog
) -> None:
    crops = [encoded(c, "PNG") for c in photo_crops(2, seed=13)]
    first = drop(local_store, [("a.png", crops[0]), ("b.png", crops[1])], "batch-1")
    ingest_batch(local_store, catalog, first)
    [image_a, _] = catalog.images_in_batch("batch-1")
    # A batch of re-uploads only, one of them twice under two names.
    again = drop(local_store, [("a again.png", crops[0]), ("a copy.png", crops[0])], "batch-2")
    outcome = ingest_batch(local_store, catalog, again)
    assert outcome.registered == [] and len(outcome.duplicates) == 2
    # Within one batch, a second name of the same bytes is a duplicate too.
    new = encoded(photo_crops(1, seed=14)[0], "PNG")
    inner = drop(local_store, [("c.png", new), ("c2.png", new), ("d.png", crops[1])], "batch-3")
    ingest_batch(local_store, catalog, inner)
    ingest_batch(local_store, catalog, inner)  # a re-run records nothing twice

    counts = catalog.status_counts()
    assert counts["batch-1"] == {"registered": 2}
    assert counts["batch-2"] == {"duplicate": 2}
    assert counts["batch-3"] == {"registered": 1, "duplicate": 2}
    reasons = {r.source_key: r.reason for r in catalog.rejected_in_batch("batch-2")}
    assert reasons[f"{INBOX_PREFIX}batch-2/a again.png"] == (
        f"duplicate of image {image_a.id} (first ingested as {image_a.source_key}, "
        "in batch batch-1)"
    )
    [c_image] = catalog.images_in_batch("batch-3")
    inner_reason = {r.source_key: r.reason for r in catalog.rejected_in_batch("batch-3")}
    assert inner_reason[f"{INBOX_PREFIX}batch-3/c2.png"].endswith(", in this batch)")

    payload = cli.status_payload(catalog, 0, runs=[])
    by_batch = {b["batch_id"]: b for b in payload["batches"]}
    assert by_batch["batch-2"]["rejected"] == []
    assert [d["image_id"] for d in by_batch["batch-2"]["duplicates"]] == [image_a.id] * 2
    text = cli.status_text(payload)
    assert "batch-2: ingested (duplicate=2)" in text
    assert (
        f"    duplicate {INBOX_PREFIX}batch-2/a copy.png: duplicate of image {image_a.id}" in text
    )
    assert c_image.id not in [d["image_id"] for d in by_batch["batch-2"]["duplicates"]]


# -- MPO --------------------------------------------------------------------------------------


def test_multi_picture_jpeg_is_indexed_as_its_first_picture(
    local_store: LocalObjectStore, sqlite_url: str
) -> None:
    left, right = photo_crops(2, seed=15)
    data = mpo(left, right)
    assert Image.open(io.BytesIO(data)).format == "MPO"
    decoded = decode_image(data, "stereo.jpg")
    assert decoded.format == "JPEG" and decoded.image.size == left.size
    first = np.asarray(decoded.image, dtype=np.int16)
    assert np.abs(first - np.asarray(left, dtype=np.int16)).mean() < 4
    assert np.abs(first - np.asarray(right, dtype=np.int16)).mean() > 10

    catalog = Catalog.open(sqlite_url)
    outcome = ingest_batch(local_store, catalog, drop(local_store, [("s.jpg", data)], "mpo"))
    assert outcome.rejected == [] and len(outcome.registered) == 1
    [image] = catalog.images_in_batch("mpo")
    assert image.format == "JPEG" and image.original_key.endswith(".jpg")
    assert local_store.get_bytes(image.original_key) == data  # the file is kept as uploaded


def test_an_animated_gif_is_still_refused() -> None:
    frames = [Image.new("RGB", (32, 32), (v, 0, 0)) for v in (0, 255)]
    data = encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageRejected, match="animated image"):
        decode_image(data, "clip.gif")


# -- hostile names in `aindex status` -------------------------------------------------------

HOSTILE_NAMES = [
    "inbox/\x1b]0;owned\x07\x1b[2Jphoto.jpg",  # OSC title + clear screen
    "inbox/x.jpg: ok\n    rejected inbox/forged.jpg",  # a forged second line
    "inbox/\x9b31mred.jpg",  # C1 CSI
    "inbox/\u202egpj.exe",  # right-to-left override
    "inbox/a\u2028b.jpg",  # line separator
]


def test_status_text_escapes_every_stored_key_and_reason(
    local_store: LocalObjectStore, sqlite_url: str
) -> None:
    catalog = Catalog.open(sqlite_url)
    catalog.create_batch("hostile", kind="ingest")
    for name in HOSTILE_NAMES:
        catalog.reject_file("hostile", name, f"not an image: {name}")
    text = cli.status_text(cli.status_payload(catalog, 0, runs=[]))
    lines = text.split("\n")
    # index, inbox, runs and batch lines, then one per file
    assert len(lines) == 4 + len(HOSTILE_NAMES), lines
    assert all(line.startswith("    rejected inbox/") for line in lines[4:])
    assert all(ch.isprintable() for line in lines for ch in line)
    assert "\\x1b]0;owned\\x07\\x1b[2J" in text and "\\x9b31m" in text
    assert "\\u202e" in text and "\\u2028" in text
    assert "forged.jpg" in text and "\n    rejected inbox/forged.jpg" not in text


def test_shown_keeps_ordinary_names_as_they_are() -> None:
    for name in ["inbox/写真 été.png", "inbox/a-b_c.d.jpg", "inbox/Ünïcödé/ok.webp"]:
        assert cli.shown(name) == name
    assert cli.shown("a\tb") == "a\\x09b"
    assert cli.shown("inbox/\udcff.jpg") == "inbox/\\xff.jpg"  # a local name, not UTF-8


def test_each_file_above_the_upload_limit_is_named_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "fine.jpg").write_bytes(b"x" * 10)
    (folder / "huge\x1b[1m.tif").write_bytes(b"x" * 11)
    monkeypatch.setattr(cli, "MAX_FILE_BYTES", 10)
    message = cli.oversized(cli.collect_files([str(folder)]))
    assert message is not None and "nothing was uploaded" in message
    assert "huge\\x1b[1m.tif: file too large: 11 bytes" in message and "fine.jpg" not in message
    assert images_module.too_large_reason(11, 10) in message
