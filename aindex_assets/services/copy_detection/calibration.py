"""The copy / not-a-copy threshold, calibrated on edited copies and unrelated photos.

Calibration queries, all deterministic:

- matching: the activated (released) images of the served index, at most
  `max_matching` of them (evenly spread over image ids), each edited `edits_per_image`
  times with the paper's edits taken in turn (the random "auto" edit seeded per image);
- non-matching: the images under `negatives/` in the object store if any
  (a bank's own unrelated images: put them there in production), otherwise the packaged
  photos meant for ingestion that are not in the index, edited the same way. A packaged
  photo counts as indexed, and is skipped, when its bytes are registered or when its
  descriptor is within cosine `DUPLICATE_COSINE` of an indexed image's original
  descriptor (a resized or re-encoded copy). The held-out photos are never used: the
  default distractors are crops of them, so their results would be crowded by their own
  crops and look falsely easy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from aindex_assets.lib.copydetection import calibrate_threshold
from aindex_assets.lib.edits import PAPER_EDITS, Edit
from aindex_assets.lib.extractors import Extractor
from aindex_assets.lib.images import ImageRejected, content_hash, decode_image
from aindex_assets.lib.photos import shrunk_photo, split_demo_photos
from aindex_assets.services.copy_detection.detection import (
    DetectionSetting,
    OriginalDescriptors,
    check_extractor,
    top_matches,
)
from aindex_assets.services.index import ServedSearch
from aindex_assets.storage.arrays import decode_descriptors
from aindex_assets.storage.catalog import Catalog, CopyThresholdRecord, ImageRecord
from aindex_assets.storage.keys import DISTRACTOR_BATCH, NEGATIVES_PREFIX, embeddings_key
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore

# Cosine similarity above which a packaged photo is taken for a copy of an indexed image:
# a 160 px re-encode of a photo sits above 0.8 of its 384 px version, distinct photos below 0.55.
DUPLICATE_COSINE = 0.65
NEGATIVE_MAX_SIDE = 384
# The paper's edits but "none": each calibration image receives them in turn.
CALIBRATION_EDITS: tuple[Edit, ...] = tuple(e for n, e in PAPER_EDITS.items() if n != "none")


def edited_copies(
    images: Sequence[Image.Image], keys: Sequence[int], role: int, setting: DetectionSetting
) -> Iterator[tuple[int, Image.Image]]:
    """(position, edited copy): each image gets the next `edits_per_image` calibration edits."""
    for position, (image, key) in enumerate(zip(images, keys, strict=True)):
        for turn in range(setting.edits_per_image):
            edit = CALIBRATION_EDITS[
                (position * setting.edits_per_image + turn) % len(CALIBRATION_EDITS)
            ]
            seed = np.random.SeedSequence([setting.seed, role, int(key) & 0xFFFFFFFF, turn])
            yield position, edit(image, seed=int(seed.generate_state(1)[0]))


def spread(items: list[Any], limit: int) -> list[Any]:
    """At most `limit` items evenly spread over the list (deterministic)."""
    if len(items) <= limit:
        return items
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def served_images(catalog: Catalog, served: ServedSearch) -> list[ImageRecord]:
    """The catalog images in the served index: activated for its version, batch merged in."""
    activations = catalog.activations(index_version=served.version.id)
    batches = set(served.served.batch_ids)
    images = catalog.images_by_ids([a.image_id for a in activations])
    return [image for image in images if image.batch_id in batches]


def matching_queries(
    store: ObjectStore,
    catalog: Catalog,
    served: ServedSearch,
    extractor: Extractor,
    setting: DetectionSetting,
) -> tuple[list[int], np.ndarray]:
    """(true image id, descriptor) of the edited activated images."""
    by_id = {a.image_id: a for a in catalog.activations(index_version=served.version.id)}
    chosen = spread(sorted(i.id for i in served_images(catalog, served)), setting.max_matching)
    images = [
        decode_image(store.get_bytes(by_id[i].object_key), by_id[i].object_key).image
        for i in chosen
    ]
    copies = list(edited_copies(images, chosen, 0, setting))
    vectors = extractor.embed_images([image for _, image in copies])
    return [chosen[position] for position, _ in copies], vectors


def negative_images(
    store: ObjectStore,
    catalog: Catalog,
    served: ServedSearch,
    extractor: Extractor,
    setting: DetectionSetting,
) -> tuple[list[Image.Image], str]:
    """Unrelated images for the non-matching queries, and where they came from."""
    keys = [info.key for info in store.list(NEGATIVES_PREFIX)]
    if keys:
        images = []
        for key in keys[: setting.max_negatives]:
            try:
                images.append(decode_image(store.get_bytes(key), key).image)
            except (ImageRejected, ObjectNotFound):
                continue
        return images, f"{len(images)} images under {NEGATIVES_PREFIX}"
    images = packaged_negatives(store, catalog, served, extractor, setting.max_negatives)
    return images, f"{len(images)} packaged photos not in the index"


def packaged_negatives(
    store: ObjectStore,
    catalog: Catalog,
    served: ServedSearch,
    extractor: Extractor,
    limit: int,
) -> list[Image.Image]:
    """Up to `limit` packaged photos (to ingest, never held out) that are not indexed."""
    indexed = indexed_descriptors(store, served, extractor)
    to_ingest, _ = split_demo_photos()
    candidates = [
        (name, data)
        for name, data in to_ingest
        if catalog.image_by_hash(content_hash(data)) is None
    ]
    chosen: list[Image.Image] = []
    for start in range(0, len(candidates), 8):
        chunk = [shrunk_photo(data, NEGATIVE_MAX_SIDE) for _, data in candidates[start : start + 8]]
        vectors = extractor.embed_images(chunk)
        near = (vectors @ indexed.T).max(axis=1) if len(indexed) else np.zeros(len(chunk))
        chosen += [
            image for image, cos in zip(chunk, near.tolist(), strict=True) if cos < DUPLICATE_COSINE
        ]
        if len(chosen) >= limit:
            break
    return chosen[:limit]


def indexed_descriptors(
    store: ObjectStore, served: ServedSearch, extractor: Extractor
) -> np.ndarray:
    """The original descriptors of every batch merged into the served index (no distractors)."""
    parts = []
    for batch_id in served.served.batch_ids:
        if batch_id == DISTRACTOR_BATCH:
            continue
        key = embeddings_key(extractor.identity, batch_id)
        if store.exists(key):
            parts.append(decode_descriptors(store.get_bytes(key))[1])
    return np.concatenate(parts) if parts else np.zeros((0, extractor.dim), np.float32)


def calibrate(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    served: ServedSearch,
    setting: DetectionSetting,
) -> CopyThresholdRecord:
    """Calibrate the threshold for the served index and record it in the catalog."""
    check_extractor(extractor, served)
    truth, matching_vectors = matching_queries(store, catalog, served, extractor, setting)
    negatives, source = negative_images(store, catalog, served, extractor, setting)
    edited = [image for _, image in edited_copies(negatives, range(len(negatives)), 1, setting)]
    negative_vectors = extractor.embed_images(edited)
    originals = OriginalDescriptors(store, catalog, extractor.identity)
    found = top_matches(matching_vectors, served, originals, setting)[0]
    result = calibrate_threshold(
        list(zip(truth, found, strict=True)),
        top_matches(negative_vectors, served, originals, setting)[0],
        higher_is_better=served.higher_is_better,
        target_precision=setting.target_precision,
    )
    return catalog.record_copy_threshold(
        index_version=served.version.id,
        served_index_id=served.served.id,
        metric=served.version.metric,
        k=setting.k,
        nprobe=setting.nprobe,
        target_precision=setting.target_precision,
        threshold=result.threshold,
        reached=result.reached,
        precision=result.precision,
        recall=result.recall,
        n_matching=result.n_matching,
        n_non_matching=result.n_non_matching,
        details={
            "note": result.note,
            "negatives": source,
            "seed": setting.seed,
            "edits_per_image": setting.edits_per_image,
            "edits": [e.name for e in CALIBRATION_EDITS],
            "extractor": extractor.identity,
        },
    )


def current_threshold(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    served: ServedSearch,
    setting: DetectionSetting,
) -> tuple[CopyThresholdRecord, bool]:
    """(threshold recorded for this served index and setting, whether it was calibrated now)."""
    recorded = catalog.copy_threshold(
        served.served.id, setting.k, setting.nprobe, setting.target_precision
    )
    if recorded is not None:
        return recorded, False
    return calibrate(store, catalog, extractor, served, setting), True


def threshold_summary(record: CopyThresholdRecord) -> str:
    """One line saying what the threshold is and how it was obtained."""
    side = ">=" if record.metric == "ip" else "<="
    return (
        f"copy when top-match score {side} {record.threshold:.4f} ({record.metric}, index "
        f"version {record.index_version}, served index {record.served_index_id}): "
        f"{record.details.get('note', '')}"
    )
