"""The copy / not-a-copy threshold, set for a target false-positive rate on unrelated photos.

Calibration queries, all deterministic:

- matching: the activated (released) images of the served index, at most
  `max_matching` of them (evenly spread over image ids), each edited `edits_per_image`
  times with the paper's edits taken in turn (the random "auto" edit seeded per image);
- non-matching: the images under `negatives/` in the object store if any
  (a bank's own unrelated images: put them there in production), otherwise the packaged
  photos meant for ingestion that are not in the index, each edited `edits_per_negative`
  times (by default every calibration edit once). A packaged
  photo counts as indexed, and is skipped, when its bytes are registered or when its
  descriptor is within cosine `DUPLICATE_COSINE` of an indexed image's original
  descriptor (a resized or re-encoded copy). The held-out photos are never used: the
  default distractors are crops of them, so their results would be crowded by their own
  crops and look falsely easy.

Every query is scored as `aindex query` scores it (`detection.top_matches`: the index's
top k re-ranked on the original descriptors). The threshold lets at most `target_fpr` of
the non-matching queries through (`lib.copydetection.calibrate_for_fpr`); the true- and
false-positive rates measured at it are recorded with it. Fewer than 1/`target_fpr`
non-matching queries cannot resolve the rate: the record, its note and everything that
shows it say so.

Detection never calibrates: `current_threshold` returns the latest threshold recorded for
the current served index and setting, or raises `NoThreshold` saying how to make one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from aindex_assets.lib.copydetection import calibrate_for_fpr
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
from aindex_assets.services.packaged import PackagedPhotos
from aindex_assets.storage.arrays import decode_descriptors
from aindex_assets.storage.catalog import (
    ActivationRecord,
    Catalog,
    CopyThresholdRecord,
    ServedIndexRecord,
)
from aindex_assets.storage.keys import DISTRACTOR_BATCH, NEGATIVES_PREFIX, embeddings_key
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore

# Cosine similarity above which a packaged photo is taken for a copy of an indexed image:
# a 160 px re-encode of a photo sits above 0.8 of its 384 px version, distinct photos below 0.55.
DUPLICATE_COSINE = 0.65
NEGATIVE_MAX_SIDE = 384
EMBED_CHUNK = 32  # edited copies embedded at a time
# The paper's edits but "none": each calibration image receives them in turn.
CALIBRATION_EDITS: tuple[Edit, ...] = tuple(e for n, e in PAPER_EDITS.items() if n != "none")


class NoThreshold(LookupError):
    """No copy threshold is recorded for the current served index and search setting."""


def edited_copies(
    images: Sequence[Image.Image],
    keys: Sequence[int],
    role: int,
    setting: DetectionSetting,
    per_image: int | None = None,
) -> Iterator[tuple[int, Image.Image]]:
    """(position, edited copy): each image gets the next `per_image` calibration edits.

    `per_image` defaults to the setting's `edits_per_image`.
    """
    per_image = setting.edits_per_image if per_image is None else per_image
    for position, (image, key) in enumerate(zip(images, keys, strict=True)):
        for turn in range(per_image):
            edit = CALIBRATION_EDITS[(position * per_image + turn) % len(CALIBRATION_EDITS)]
            seed = np.random.SeedSequence([setting.seed, role, int(key) & 0xFFFFFFFF, turn])
            yield position, edit(image, seed=int(seed.generate_state(1)[0]))


def spread(items: list[Any], limit: int) -> list[Any]:
    """At most `limit` items evenly spread over the list (deterministic)."""
    if len(items) <= limit:
        return items
    picks = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in sorted(set(picks.tolist()))]


def served_activations(catalog: Catalog, served: ServedSearch) -> dict[int, ActivationRecord]:
    """{image id: activation} of the released images the served indexes hold: activated
    for a live version whose served index has merged the image's batch."""
    batches = served.served_batches()
    found = {}
    for version_id in batches:
        for activation in catalog.activations(index_version=version_id):
            found[activation.image_id] = activation
    images = catalog.images_by_ids(sorted(found))
    return {i.id: found[i.id] for i in images if i.batch_id in batches[found[i.id].index_version]}


def matching_queries(
    store: ObjectStore,
    catalog: Catalog,
    served: ServedSearch,
    extractor: Extractor,
    setting: DetectionSetting,
) -> tuple[list[int], np.ndarray]:
    """(true image id, descriptor) of the edited activated images."""
    by_id = served_activations(catalog, served)
    chosen = spread(sorted(by_id), setting.max_matching)
    images = [
        decode_image(store.get_bytes(by_id[i].object_key), by_id[i].object_key).image
        for i in chosen
    ]
    positions, vectors = embed_copies(extractor, edited_copies(images, chosen, 0, setting))
    return [chosen[position] for position in positions], vectors


def embed_copies(
    extractor: Extractor, copies: Iterator[tuple[int, Image.Image]], chunk: int = EMBED_CHUNK
) -> tuple[list[int], np.ndarray]:
    """(positions, descriptors) of edited copies, `chunk` at a time: a negative edited 14
    times at full resolution need not sit in memory with all the others."""
    positions: list[int] = []
    parts: list[np.ndarray] = []
    batch: list[Image.Image] = []
    for position, image in copies:
        positions.append(position)
        batch.append(image)
        if len(batch) == chunk:
            parts.append(np.asarray(extractor.embed_images(batch), dtype=np.float32))
            batch = []
    if batch:
        parts.append(np.asarray(extractor.embed_images(batch), dtype=np.float32))
    vectors = np.concatenate(parts) if parts else np.zeros((0, extractor.dim), np.float32)
    return positions, vectors


def negative_images(
    store: ObjectStore,
    catalog: Catalog,
    served: ServedSearch,
    extractor: Extractor,
    setting: DetectionSetting,
    packaged: PackagedPhotos,
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
    packaged.require(NEGATIVES_PREFIX)
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
    for batch_id in sorted(served.batch_ids):
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
    packaged: PackagedPhotos,
) -> CopyThresholdRecord:
    """Set the threshold for `setting.target_fpr` on the served index and record it."""
    check_extractor(extractor, served)
    truth, matching_vectors = matching_queries(store, catalog, served, extractor, setting)
    negatives, source = negative_images(store, catalog, served, extractor, setting, packaged)
    edited = edited_copies(negatives, range(len(negatives)), 1, setting, setting.edits_per_negative)
    _, negative_vectors = embed_copies(extractor, edited)
    originals = OriginalDescriptors(store, catalog, extractor.identity)
    found = top_matches(matching_vectors, served, originals, setting)[0]
    result = calibrate_for_fpr(
        list(zip(truth, found, strict=True)),
        top_matches(negative_vectors, served, originals, setting)[0],
        target_fpr=setting.target_fpr,
        higher_is_better=served.higher_is_better,
    )
    return catalog.record_copy_threshold(
        index_version=served.version.id,
        served_index_id=served.served.id,
        metric=served.version.metric,
        k=setting.k,
        nprobe=setting.nprobe,
        target_fpr=setting.target_fpr,
        threshold=result.threshold,
        resolved=result.resolved,
        tpr=result.tpr,
        fpr=result.fpr,
        precision=result.precision,
        n_matching=result.n_matching,
        n_non_matching=result.n_non_matching,
        details={
            "note": result.note,
            "negatives": source,
            "seed": setting.seed,
            "edits_per_image": setting.edits_per_image,
            "edits_per_negative": setting.edits_per_negative,
            "edits": [e.name for e in CALIBRATION_EDITS],
            "extractor": extractor.identity,
            "score": "squared L2 to the original descriptor of the top catalog match"
            if not served.higher_is_better
            else "inner product with the original descriptor of the top catalog match",
        },
    )


def has_threshold(
    catalog: Catalog, served_index_id: int, setting: DetectionSetting | None = None
) -> bool:
    """Whether a threshold is recorded for this served index and setting (default: defaults)."""
    setting = setting or DetectionSetting()
    found = catalog.copy_threshold(served_index_id, setting.k, setting.nprobe, setting.target_fpr)
    return found is not None


def current_threshold(
    catalog: Catalog, served: ServedSearch, setting: DetectionSetting
) -> CopyThresholdRecord:
    """The latest threshold recorded for this served index and setting; never calibrates.

    Raises `NoThreshold`, saying how to record one, when there is none.
    """
    return recorded_threshold(catalog, served.served, setting)


def require_threshold(catalog: Catalog, setting: DetectionSetting) -> None:
    """Raise `NoThreshold` unless the current served index has a threshold for `setting`.

    A cheap check from the catalog alone (no index is loaded), made before query files are
    claimed so that a batch without a threshold leaves them in the inbox. Without a served
    index it says nothing: loading the index will.
    """
    served = catalog.current_served_index()
    if served is not None:
        recorded_threshold(catalog, served, setting)


def recorded_threshold(
    catalog: Catalog, served: ServedIndexRecord, setting: DetectionSetting
) -> CopyThresholdRecord:
    recorded = catalog.copy_threshold(served.id, setting.k, setting.nprobe, setting.target_fpr)
    if recorded is None:
        raise NoThreshold(no_threshold_message(served, setting))
    return recorded


def no_threshold_message(served: ServedIndexRecord, setting: DetectionSetting) -> str:
    """What is missing and how to make it (with the config a non-default setting needs)."""
    searched = {"k": setting.k, "nprobe": setting.nprobe, "target_fpr": setting.target_fpr}
    defaults = DetectionSetting()
    changed = {name: value for name, value in searched.items() if getattr(defaults, name) != value}
    config = (
        " --config-json '" + json.dumps({"ops": {"copy_threshold": {"config": changed}}}) + "'"
        if changed
        else ""
    )
    return (
        f"no copy threshold recorded for served index {served.id} (index version "
        f"{served.index_version}) with k={setting.k}, nprobe={setting.nprobe}, target FPR "
        f"{setting.target_fpr:g}: materialize `copy_threshold` (the automation sensor does it "
        "after each new served index), or run `dagster asset materialize -m "
        f"aindex_assets.definitions --select copy_threshold{config}`"
    )


def threshold_document(record: CopyThresholdRecord) -> dict[str, Any]:
    """The threshold as shown in JSON outputs (`aindex query --json`, query batch results)."""
    return {
        "id": record.id,
        "value": record.threshold,
        "metric": record.metric,
        "target_fpr": record.target_fpr,
        "resolved": record.resolved,
        "tpr": record.tpr,
        "fpr": record.fpr,
        "n_matching": record.n_matching,
        "n_non_matching": record.n_non_matching,
        "note": record.details.get("note"),
    }


def threshold_summary(record: CopyThresholdRecord) -> str:
    """One line saying what the threshold is, for which index and what it gives."""
    side = ">=" if record.metric == "ip" else "<="
    head = (
        f"copy when top-match score {side} {record.threshold:.4f} ({record.metric}, index "
        f"version {record.index_version}, served index {record.served_index_id})"
    )
    if record.target_fpr is None:  # recorded before migration 0004: a precision target
        return f"{head}: {record.details.get('note', '')}"
    flag = "" if record.resolved else "UNRESOLVED false-positive rate: "
    return f"{head}: {flag}{record.details.get('note', '')}"
