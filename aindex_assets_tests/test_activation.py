"""Activation engine: determinism, mixed sizes, reported quality, and retrieval on real photos."""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageFilter

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib import photos
from aindex_assets.lib.activation import ActivationParams, activate
from aindex_assets.lib.extractors import load_extractor
from aindex_assets.lib.metrics import psnr
from aindex_assets_tests.whole_batch import activate_whole_batch

# The unedited-copy guarantee is tested on its own; here it would hide the perturbation.
FAST = ActivationParams(iterations=3, batch_size=4, keep_first=False)


@pytest.fixture(scope="module")
def extractor():
    return load_extractor("efficientnet_lite0", device="cpu")


def decode(data: bytes, width: int) -> Image.Image:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    return image.resize((width, max(16, image.height * width // image.width)), Image.BICUBIC)


@pytest.fixture(scope="module")
def small_photos() -> list[Image.Image]:
    named = dict(photos.demo_photos())
    names = ["skimage/astronaut.png", "skimage/chelsea.png", "skimage/coffee.png"]
    return [decode(named[name], width) for name, width in zip(names, (128, 160, 144), strict=True)]


@pytest.fixture(scope="module")
def small_index(extractor):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, extractor.dim)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return faiss_index.train_index("IVF4,PQ16x4", x / np.linalg.norm(x, axis=1, keepdims=True))


def test_deterministic_mixed_sizes_and_reported_quality(extractor, small_index, small_photos):
    images = small_photos
    assert len({im.size for im in images}) == len(images)
    first = activate(images, extractor, small_index, FAST)
    second = activate(images, extractor, small_index, FAST)
    for image, a, b in zip(images, first, second, strict=True):
        assert a.image.shape == (image.height, image.width, 3) and a.image.dtype == np.uint8
        assert np.array_equal(a.image, b.image)
        assert a.psnr == pytest.approx(psnr(np.asarray(image), a.image))
        diff = np.abs(np.asarray(image).astype(int) - a.image.astype(int))
        assert a.linf == diff.max() > 0
        assert 0.9 < a.ssim <= 1.0
        assert a.distance_after < a.distance_before
    other_seed = activate(images[:1], extractor, small_index, dataclasses.replace(FAST, seed=1))
    assert not np.array_equal(other_seed[0].image, first[0].image)


def test_batching_by_pixels_gives_nearly_the_same_images(extractor, small_index, small_photos):
    images = small_photos[:2]
    together = activate(images, extractor, small_index, FAST)
    apart = activate(
        images, extractor, small_index, dataclasses.replace(FAST, max_pixels_per_batch=1)
    )
    # The loss sums over images and Adam steps per element, and every batch draws the same
    # edited views: batching changes nothing but float rounding in the batched
    # convolutions (which the edited views' resampling can carry one level further).
    for a, b in zip(together, apart, strict=True):
        assert np.mean(a.image != b.image) < 0.002
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2


def test_tensor_inputs_and_paper_preset(extractor, small_index):
    pixels = torch.rand(3, 96, 64)
    result = activate([pixels], extractor, small_index, ActivationParams.paper(iterations=2))
    assert result[0].image.shape == (96, 64, 3)
    paper = ActivationParams.paper()
    assert paper.scaling == 3.0 and paper.lambda_margin == 0.0
    assert paper.to_dict()["alpha"][0] == pytest.approx(0.072 / 0.299)
    with pytest.raises(ValueError, match="target"):
        ActivationParams(target="nowhere")


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


EDITS = {
    "none": lambda im: im,
    "contrast2": lambda im: ImageEnhance.Contrast(im).enhance(2.0),
    "brightness2": lambda im: ImageEnhance.Brightness(im).enhance(2.0),
    "brightness0.5": lambda im: ImageEnhance.Brightness(im).enhance(0.5),
    "blur": lambda im: im.filter(ImageFilter.GaussianBlur(3)),
    "jpeg30": lambda im: jpeg(im, 30),
    "saturation0": lambda im: ImageEnhance.Color(im).enhance(0.0),
}


def recall_at_1(extractor, served, released, edits) -> dict[str, float]:
    out = {}
    for name, edit in edits.items():
        queries = extractor.embed_images([edit(im) for im in released])
        _, ids = faiss_index.search(served, queries, k=1, nprobe=1)
        out[name] = float((ids[:, 0] == np.arange(len(released))).mean())
    return out


def test_activation_beats_passive_on_real_photos(extractor):
    """Queried: packaged photos; training and distractors: crops of OTHER (held-out) photos."""
    to_ingest, held_out = photos.split_demo_photos()
    queried = [decode(data, 224) for _, data in to_ingest[:16]]
    sources = [decode(data, 512) for _, data in held_out]
    crops = extractor.embed_images(photos.random_crops(sources, 1600, 128, seed=0), batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = faiss_index.train_index("IVF16,PQ8x4", crops[:600])
    database = faiss_index.empty_shard(trained)
    faiss_index.add_with_ids(database, crops[600:], 10**6 + np.arange(1000, dtype=np.int64))
    features = extractor.embed_images(queried)
    served = faiss_index.merge_shards(trained, [database])
    faiss_index.add_with_ids(served, features, np.arange(len(queried), dtype=np.int64))

    results = activate(queried, extractor, trained, ActivationParams(), features, database=database)
    released = [Image.fromarray(r.image) for r in results]
    passive = recall_at_1(extractor, served, queried, EDITS)
    active = recall_at_1(extractor, served, released, EDITS)
    assert active["none"] == 1.0 and passive["none"] == 1.0
    assert np.mean(list(active.values())) > np.mean(list(passive.values())) + 0.05, (
        passive,
        active,
    )
    assert np.mean([r.psnr for r in results]) >= 40.0


def test_psnr_floor_shrinks_the_perturbation_until_it_holds() -> None:
    from aindex_assets.lib.activation import to_uint8, within_psnr_floor
    from aindex_assets.lib.metrics import psnr

    generator = torch.Generator().manual_seed(0)
    original = torch.rand(3, 64, 64, generator=generator)
    loud = (original + 0.05 * torch.randn(3, 64, 64, generator=generator)).clamp(0, 1)
    assert psnr(to_uint8(original), to_uint8(loud)) < 35
    quiet = within_psnr_floor(original, loud, 42.0)
    achieved = psnr(to_uint8(original), to_uint8(quiet))
    assert 42.0 <= achieved < 44.0  # shrunk just enough, not wiped out


def test_psnr_floor_holds_for_the_decoded_lossy_release() -> None:
    """With a lossy format the floor is measured on the decoded file, whose encoder adds
    an error no shrinking removes: the search lands just above the floor all the same,
    and a floor the encoder alone misses is refused (a release below it would stay so)."""
    from aindex_assets.lib.activation import (
        FloorUnreachable,
        reader_pixels,
        to_uint8,
        within_psnr_floor,
    )
    from aindex_assets.lib.metrics import psnr

    rows, cols = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    original = torch.stack([cols, rows, 0.5 + 0.4 * torch.sin(6 * cols) * torch.cos(4 * rows)])
    noise = torch.randn(3, 96, 96, generator=torch.Generator().manual_seed(0))
    loud = (original + 0.03 * noise).clamp(0, 1)
    before = to_uint8(original)
    for chosen in ("jpeg", "webp"):
        develop = reader_pixels(ActivationParams(release_format=chosen))
        quiet = within_psnr_floor(original, loud, 40.0, develop=develop)
        achieved = psnr(before, develop(to_uint8(quiet)))
        assert 40.0 <= achieved < 40.5, chosen
        assert psnr(before, to_uint8(quiet)) < achieved + 3  # not wiped out
        encoder_alone = psnr(before, develop(before))
        with pytest.raises(FloorUnreachable, match="raise release_quality"):
            within_psnr_floor(original, loud, encoder_alone, develop=develop)


def test_release_format_and_quality_are_checked() -> None:
    assert ActivationParams().release_format == "png"
    with pytest.raises(ValueError, match="release_format 'gif' is not one of png, jpeg, webp"):
        ActivationParams(release_format="gif")
    with pytest.raises(ValueError, match="release_quality 0 is not within 1-100"):
        ActivationParams(release_format="jpeg", release_quality=0)


def test_antialiased_optimization_spreads_the_perturbation(extractor, small_index):
    """A 3x downscale without antialias reads one pixel in nine: only those can be perturbed."""
    named = dict(photos.demo_photos())
    image = Image.open(io.BytesIO(named["skimage/astronaut.png"])).convert("RGB").resize((672, 672))
    changed = {}
    for antialias in (False, True):
        params = dataclasses.replace(FAST, antialias=antialias, min_psnr=None)
        released = activate([image], extractor, small_index, params)[0].image
        changed[antialias] = float((released != np.asarray(image)).any(axis=2).mean())
    assert changed[False] <= 1 / 9 + 0.01
    assert changed[True] > 0.3, changed


def test_unedited_release_never_ranks_its_own_code_below_the_original(
    extractor, small_index, small_photos
) -> None:
    from aindex_assets.lib.activation import own_code_ranks, with_own_codes

    params = dataclasses.replace(FAST, keep_first=True)
    features = extractor.embed_images(small_photos)
    searched, own_ids = with_own_codes(small_index, features)
    passive = own_code_ranks(searched, features, own_ids, params.nprobe)
    results = activate(small_photos, extractor, small_index, params, original_features=features)
    released = extractor.embed_images([Image.fromarray(r.image) for r in results])
    active = own_code_ranks(searched, released, own_ids, params.nprobe)
    assert (active <= passive).all(), (passive, active)


def test_sampled_grid_gives_the_extractor_resize_and_keeps_other_pixels(extractor) -> None:
    """Without antialias only the sampled grid reaches the descriptor: optimizing it is exact."""
    from aindex_assets.lib.activation import GridCanvas

    generator = torch.Generator().manual_seed(0)
    sizes = ((1024, 768), (300, 451), (100, 150), (224, 224))
    images = [torch.rand(3, h, w, generator=generator) for h, w in sizes]
    canvas = GridCanvas(images, extractor, ActivationParams())
    expected = torch.cat([extractor.resize(image[None]) for image in images])
    assert (canvas.resize(canvas.originals) - expected).abs().max() < 1e-4
    assert canvas.original.shape[-2:] == (448, 448)  # 2 rows/columns per output at most
    for image, back in zip(images, canvas.full(canvas.originals), strict=True):
        assert torch.equal(image, back)


# --- A batch activated in pixel-budgeted chunks (services.activation) -------------------


@pytest.fixture
def embedded_batch(tmp_path, extractor):
    """A local store and SQLite catalog holding a trained index and one embedded batch of
    five real photos of different sizes (none over 256 rows: the whole-image code paths)."""
    from aindex_assets.lib.images import encode_png
    from aindex_assets.services.embeddings import embed_batch
    from aindex_assets.services.index import register_extractor, train_version
    from aindex_assets.services.ingest import ingest_batch
    from aindex_assets.storage.arrays import encode_descriptors
    from aindex_assets.storage.catalog import Catalog
    from aindex_assets.storage.inbox import BatchManifest
    from aindex_assets.storage.keys import training_embeddings_key
    from aindex_assets.storage.objectstore import LocalObjectStore

    store = LocalObjectStore(tmp_path / "objects")
    catalog = Catalog.open(f"sqlite:///{tmp_path}/catalog.db")
    rng = np.random.default_rng(0)
    training = rng.standard_normal((700, extractor.dim)).astype(np.float32)
    training /= np.linalg.norm(training, axis=1, keepdims=True)
    store.put_bytes(
        training_embeddings_key(extractor.identity),
        encode_descriptors(np.arange(len(training)), training),
    )
    register_extractor(catalog, extractor, "efficientnet_lite0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_version(store, catalog, extractor, "IVF4,PQ16x4", "l2")
    named = photos.demo_photos()
    keys = []
    for (name, data), width in zip(named[:5], (128, 160, 144, 112, 96), strict=True):
        key = f"uploads/{name.replace('/', '-')}.png"
        store.put_bytes(key, encode_png(np.asarray(decode(data, width))))
        keys.append(key)
    manifest = BatchManifest("batch-a", "ingest", tuple(keys), "2026-01-01T00:00:00Z")
    assert len(ingest_batch(store, catalog, manifest).registered) == 5
    embed_batch(store, catalog, extractor, "batch-a")
    return store, catalog


def whole_batch_as_before(store, catalog, extractor, params):
    """{image id: result} of one `activate` call on the whole batch (before chunking)."""
    _, released = activate_whole_batch(store, catalog, extractor, "batch-a", params)
    return {image.id: result for image, result in released}


def released_by_service(store, catalog):
    from aindex_assets.lib.images import decode_image

    return {
        a.image_id: (np.asarray(decode_image(store.get_bytes(a.object_key), "x").image), a)
        for a in catalog.activations(batch_id="batch-a")
    }


def test_batch_is_activated_in_chunks_within_the_pixel_budget(
    extractor, embedded_batch, monkeypatch
) -> None:
    """The service never hands `activate` more than `max_pixels_per_batch` pixels (one image
    alone excepted), and the chunked batch gives the releases of one call on the whole batch
    whose internal batches are the same chunks."""
    import aindex_assets.services.activation as service

    store, catalog = embedded_batch
    images = catalog.images_in_batch("batch-a")
    # 128x128, 160x106, 144x96, 112x97 and 96x96 pixels: chunks of 1, 1, 2 and 1 images.
    budget = 25_000
    params = dataclasses.replace(FAST, keep_first=True, max_pixels_per_batch=budget)
    expected = whole_batch_as_before(store, catalog, extractor, params)

    calls: list[list[int]] = []
    real_activate = service.activate

    def recording_activate(chunk, *args, **kwargs):
        calls.append([im.width * im.height for im in chunk])
        return real_activate(chunk, *args, **kwargs)

    monkeypatch.setattr(service, "activate", recording_activate)
    outcome = service.activate_batch(store, catalog, extractor, "batch-a", params)

    assert len(calls) >= 3 and sum(len(c) for c in calls) == len(images)
    assert all(sum(c) <= budget or len(c) == 1 for c in calls), calls
    assert len(outcome.released) == len(images)
    released = released_by_service(store, catalog)
    for image_id, result in expected.items():
        pixels, record = released[image_id]
        assert np.array_equal(pixels, result.image)
        assert record.psnr == pytest.approx(result.psnr)
    assert catalog.count_images(status="activated") == len(images)


def test_small_batch_releases_are_the_same_as_before(extractor, embedded_batch) -> None:
    """Under the pixel budget the batch is one chunk: byte for byte the previous releases."""
    from aindex_assets.services.activation import activate_batch

    store, catalog = embedded_batch
    expected = whole_batch_as_before(store, catalog, extractor, FAST)
    activate_batch(store, catalog, extractor, "batch-a", FAST)
    released = released_by_service(store, catalog)
    assert set(released) == set(expected)
    for image_id, result in expected.items():
        pixels, record = released[image_id]
        assert np.array_equal(pixels, result.image)
        assert (record.psnr, record.ssim, record.linf) == (result.psnr, result.ssim, result.linf)
        assert record.distance_after == pytest.approx(result.distance_after)


@pytest.mark.parametrize(("chosen", "container"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_release_is_stored_and_measured_as_decoded(
    extractor, embedded_batch, chosen, container
) -> None:
    """A batch released as JPEG or WebP: each object's extension and content type follow the
    format, and the recorded quality and distance are those of the decoded file, not of the
    PNG release of the same optimum (no PSNR floor here, so that the optimum is the same).
    The lossy PSNR is not always the lower: the encoder also drops part of the perturbation."""
    from aindex_assets.lib.activation import embed_released
    from aindex_assets.lib.metrics import ssim
    from aindex_assets.services.activation import activate_batch
    from aindex_assets.services.index import load_batch_descriptors, load_originals, load_trained

    store, catalog = embedded_batch
    params = dataclasses.replace(FAST, min_psnr=None, iterations=1, edited_views=0)
    as_png = whole_batch_as_before(store, catalog, extractor, params)
    lossy = dataclasses.replace(params, release_format=chosen)
    activate_batch(store, catalog, extractor, "batch-a", lossy)
    images = {i.id: i for i in catalog.images_in_batch("batch-a")}
    index = load_trained(store, catalog.active_index_version())
    descriptors = load_batch_descriptors(store, extractor.identity, "batch-a")
    extension = {"jpeg": ".jpg", "webp": ".webp"}[chosen]
    for image_id, (pixels, record) in released_by_service(store, catalog).items():
        assert record.object_key.endswith(extension)
        assert store.stat(record.object_key).content_type == f"image/{chosen}"
        assert Image.open(io.BytesIO(store.get_bytes(record.object_key))).format == container
        [original] = load_originals(store, [images[image_id]])
        assert record.psnr == pytest.approx(psnr(np.asarray(original), pixels))
        assert record.ssim == pytest.approx(ssim(np.asarray(original), pixels))
        assert record.psnr != pytest.approx(as_png[image_id].psnr)
        assert record.params["release_format"] == chosen
        assert not np.array_equal(pixels, as_png[image_id].image)
        [target] = faiss_index.activation_targets(index, descriptors[image_id][None])
        [feature] = embed_released(extractor, [pixels.copy()])  # torch wants it writable
        distance = float(((feature - target) ** 2).sum())
        assert record.distance_after == pytest.approx(distance, abs=1e-5)


def test_retry_activates_only_the_rest_and_sweeps_killed_uploads(
    extractor, embedded_batch, monkeypatch
) -> None:
    """A run killed after its first chunk: the retry keeps that chunk's releases, removes the
    temporary files the killed uploads left in the release folders (old ones only) and
    activates the rest."""
    import os
    import time

    import aindex_assets.services.activation as service
    from aindex_assets.storage.keys import activated_key

    store, catalog = embedded_batch
    images = catalog.images_in_batch("batch-a")
    params = dataclasses.replace(FAST, max_pixels_per_batch=1)  # one image per chunk
    real_activate = service.activate
    calls = []

    def killed_after_first_chunk(chunk, *args, **kwargs):
        calls.append(len(chunk))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")  # as far as the catalog can tell
        return real_activate(chunk, *args, **kwargs)

    monkeypatch.setattr(service, "activate", killed_after_first_chunk)
    with pytest.raises(KeyboardInterrupt):
        service.activate_batch(store, catalog, extractor, "batch-a", params)
    assert len(catalog.activations(batch_id="batch-a")) == 1
    monkeypatch.setattr(service, "activate", real_activate)

    version = catalog.active_index_version().id
    folder = store.root / activated_key(version, images[3].content_hash).rpartition("/")[0]
    meta_folder = store.root / ".aindex-meta" / folder.relative_to(store.root)
    old, fresh, meta = (
        folder / ".aindex-tmp-0000000000000001",
        folder / ".aindex-tmp-0000000000000002",
        meta_folder / ".aindex-tmp-0000000000000003",
    )
    for path in (old, fresh, meta):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half an upload")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))
    os.utime(meta, (an_hour_ago, an_hour_ago))

    outcome = service.activate_batch(store, catalog, extractor, "batch-a", params)
    assert len(outcome.already_activated) == 1 and len(outcome.released) == len(images) - 1
    activations = catalog.activations(batch_id="batch-a")
    assert sorted(a.image_id for a in activations) == sorted(i.id for i in images)
    assert not old.exists() and not meta.exists() and fresh.exists()  # a write in progress
    assert len(outcome.swept) == 2


@pytest.mark.parametrize("object_store", ["local", "s3"], indirect=True)
def test_sweep_removes_old_leftovers_of_interrupted_writes(object_store) -> None:
    from datetime import UTC, datetime, timedelta

    from aindex_assets.storage.objectstore import S3ObjectStore
    from aindex_assets.storage.sweep import sweep_temporaries

    folder = "activated/v1/ab/cd/"
    object_store.put_bytes(folder + "kept.png", b"a release")
    if isinstance(object_store, S3ObjectStore):
        client, bucket = object_store.client, object_store.bucket
        client.put_object(bucket, folder + ".aindex-tmp-00ff", io.BytesIO(b"tmp"), 3)
        client._create_multipart_upload(bucket, folder + "big.png", {})
        leftovers = [folder + ".aindex-tmp-00ff", "upload:" + folder + "big.png"]
    else:
        tmp = object_store.root / folder / ".aindex-tmp-00ff"
        tmp.write_bytes(b"tmp")
        leftovers = [folder + ".aindex-tmp-00ff"]
    # Fresh leftovers may belong to a write in progress: kept.
    assert sweep_temporaries(object_store, folder, timedelta(minutes=15)) == []
    later = datetime.now(UTC) + timedelta(minutes=16)
    assert sorted(sweep_temporaries(object_store, folder, timedelta(minutes=15), now=later)) == (
        sorted(leftovers)
    )
    assert sweep_temporaries(object_store, folder, timedelta(minutes=15), now=later) == []
    assert [info.key for info in object_store.list("activated/")] == [folder + "kept.png"]
    with pytest.raises(ValueError):
        sweep_temporaries(object_store, "activated/v1", timedelta(0))


def test_strip_by_strip_measures_equal_the_whole_image_ones() -> None:
    """Large images are measured, rounded and their heatmap sampled in strips of rows: the
    same figures as over the whole image (PSNR and L-inf exactly)."""
    from aindex_assets.lib.activation import (
        amplitude,
        linf_8bit,
        psnr_8bit,
        sampled_amplitude,
        sampled_grid,
        ssim_8bit,
        to_uint8,
    )
    from aindex_assets.lib.metrics import linf, ssim

    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    after = np.clip(before.astype(int) + rng.integers(-3, 4, before.shape), 0, 255).astype(np.uint8)
    for rows in (7, 64, 1000):
        assert psnr_8bit(before, after, rows) == psnr(before, after)
        assert linf_8bit(before, after, rows) == linf(before, after)
        assert ssim_8bit(before, after, rows) == pytest.approx(ssim(before, after), abs=1e-12)
    assert psnr_8bit(before, before) == float("inf")

    pixels = torch.rand(3, 300, 200, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(to_uint8(pixels), (pixels.permute(1, 2, 0) * 255).round().byte().numpy())
    grid = sampled_grid(300, 200, 64, torch.device("cpu"))
    whole = amplitude(pixels, FAST)[0][:, grid.rows][:, :, grid.cols]
    for rows in (5, 37, 100):
        strips = sampled_amplitude(pixels, FAST, grid.rows, grid.cols, strip_rows=rows)
        assert (strips - whole).abs().max() < 1e-6 * whole.abs().max()
