"""Copy detection on the served index, shared by the `copy_detections` asset and `aindex query`.

Moves bytes between the object store, the catalog, the extractor and `lib.copydetection`:

- `open_served` loads the current served index of the active index version.
- `calibrate` builds the calibration queries and records a threshold in the catalog for
  that served index and search setting; `current_threshold` returns the recorded one, or
  calibrates when the served index changed since (so a verdict never uses a threshold
  calibrated for another index).
- `detect` decodes query files safely (a bad file gets a verdict with its reason, never an
  exception), embeds them, searches the top k and decides with the threshold.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from PIL import Image

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.copydetection import (
    DEFAULT_TARGET_PRECISION,
    TopMatch,
    calibrate_threshold,
    passes,
    reranked_top_match,
)
from aindex_assets.lib.edits import PAPER_EDITS, Edit
from aindex_assets.lib.extractors import Extractor
from aindex_assets.lib.images import ImageRejected, content_hash, decode_image
from aindex_assets.lib.photos import shrunk_photo, split_demo_photos
from aindex_assets.storage.arrays import decode_descriptors
from aindex_assets.storage.catalog import (
    Catalog,
    CopyThresholdRecord,
    ImageRecord,
    IndexVersionRecord,
    ServedIndexRecord,
)
from aindex_assets.storage.keys import (
    DISTRACTOR_BATCH,
    DISTRACTOR_ID_BASE,
    NEGATIVES_PREFIX,
    embeddings_key,
)
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore

# Cosine similarity above which a packaged photo is taken for a copy of an indexed image:
# a 160 px re-encode of a photo sits above 0.8 of its 384 px version, distinct photos below 0.55.
DUPLICATE_COSINE = 0.65
NEGATIVE_MAX_SIDE = 384
# The paper's edits but "none": each calibration image receives them in turn.
CALIBRATION_EDITS: tuple[Edit, ...] = tuple(e for n, e in PAPER_EDITS.items() if n != "none")


class NoServedIndex(LookupError):
    """Nothing to search: no active index version, or no served index for it yet."""


class ExtractorMismatch(ValueError):
    """The configured extractor is not the one the served index was built with."""


@dataclass(frozen=True)
class DetectionSetting:
    """How queries are searched and how the threshold is calibrated for them."""

    k: int = 10
    nprobe: int = 1
    target_precision: float = DEFAULT_TARGET_PRECISION
    seed: int = 0
    edits_per_image: int = 2
    max_matching: int = 48
    max_negatives: int = 16


@dataclass
class ServedSearch:
    """The loaded served index of the active version, with its catalog records."""

    version: IndexVersionRecord
    served: ServedIndexRecord
    index: faiss.Index

    @property
    def higher_is_better(self) -> bool:
        return self.version.metric == "ip"

    def search(
        self, vectors: np.ndarray, setting: DetectionSetting
    ) -> tuple[np.ndarray, np.ndarray]:
        """(index scores, ids) of the top k of each vector; empty arrays for no vectors."""
        if len(vectors) == 0:
            return np.zeros((0, setting.k), np.float32), np.zeros((0, setting.k), np.int64)
        return faiss_index.search(self.index, vectors, k=setting.k, nprobe=setting.nprobe)


class OriginalDescriptors:
    """Stored original descriptors of catalog images, read per batch file and cached."""

    def __init__(self, store: ObjectStore, catalog: Catalog, extractor_identity: str) -> None:
        self.store, self.catalog, self.identity = store, catalog, extractor_identity
        self.vectors: dict[int, np.ndarray] = {}
        self.loaded: set[str] = set()

    def of(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """{id: descriptor} of the catalog ids among `ids` (distractors and padding ignored)."""
        wanted = {int(i) for i in ids.reshape(-1).tolist() if 0 <= i < DISTRACTOR_ID_BASE}
        missing = sorted(wanted - self.vectors.keys())
        for image in self.catalog.images_by_ids(missing) if missing else []:
            if image.batch_id not in self.loaded:
                key = embeddings_key(self.identity, image.batch_id)
                batch_ids, vectors = decode_descriptors(self.store.get_bytes(key))
                self.vectors.update(zip(batch_ids.tolist(), vectors, strict=True))
                self.loaded.add(image.batch_id)
        return {i: self.vectors[i] for i in wanted if i in self.vectors}


def top_matches(
    vectors: np.ndarray,
    served: ServedSearch,
    originals: OriginalDescriptors,
    setting: DetectionSetting,
) -> tuple[list[TopMatch | None], np.ndarray, np.ndarray]:
    """Each vector's re-ranked top catalog match, and the index's (scores, ids) of its top k."""
    scores, ids = served.search(vectors, setting)
    known = originals.of(ids)
    matches = [
        reranked_top_match(v, row, known, DISTRACTOR_ID_BASE, served.higher_is_better)
        for v, row in zip(vectors, ids, strict=True)
    ]
    return matches, scores, ids


@dataclass(frozen=True)
class QueryFile:
    """A query to judge: its key or path, its bytes (None when unreadable) and why not."""

    key: str
    data: bytes | None
    unreadable_reason: str = "could not be read"


@dataclass(frozen=True)
class Verdict:
    """The decision for one query file, with its top-k results (distractors have no id)."""

    query_key: str
    is_copy: bool
    threshold: float
    query_hash: str | None = None
    image_id: int | None = None
    source_key: str | None = None
    score: float | None = None
    rank: int | None = None
    matches: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def open_served(store: ObjectStore, catalog: Catalog) -> ServedSearch:
    """The current served index of the active index version, loaded."""
    version = catalog.active_index_version()
    if version is None:
        raise NoServedIndex("no trained index yet: ingest images first (or run `aindex demo`)")
    served = catalog.current_served_index(version.id)
    if served is None:
        raise NoServedIndex(f"index version {version.id} has no served index yet")
    index = faiss_index.deserialize_index(store.get_bytes(served.object_key))
    return ServedSearch(version=version, served=served, index=index)


def check_extractor(extractor: Extractor, served: ServedSearch) -> None:
    """Queries must be embedded by the extractor the index was built with."""
    if extractor.identity != served.version.extractor_identity:
        raise ExtractorMismatch(
            f"the configured extractor ({extractor.identity[:12]}) is not the one index version "
            f"{served.version.id} was built with ({served.version.extractor_identity[:12]}): "
            "set AINDEX_EXTRACTOR back, or retrain the index"
        )


# ---------------------------------------------------------------------------- detection


def decode_queries(
    queries: Sequence[QueryFile],
) -> tuple[list[tuple[int, str, Image.Image]], dict[int, tuple[str | None, str]]]:
    """(position, hash, image) of the usable queries; {position: (hash, reason)} of the rest."""
    usable, refused = [], {}
    for position, query in enumerate(queries):
        if query.data is None:
            refused[position] = (None, query.unreadable_reason)
            continue
        digest = content_hash(query.data) if query.data else None
        try:
            usable.append((position, digest, decode_image(query.data, query.key).image))
        except ImageRejected as exc:
            refused[position] = (digest, exc.reason)
    return usable, refused


def result_rows(
    scores: np.ndarray, ids: np.ndarray, sources: dict[int, str]
) -> list[dict[str, Any]]:
    """One query's top-k results as JSON rows (index scores); distractors are marked as such."""
    rows = []
    for rank, (score, found) in enumerate(zip(scores.tolist(), ids.tolist(), strict=True)):
        if found < 0:
            continue
        catalog_image = found < DISTRACTOR_ID_BASE
        rows.append(
            {
                "rank": rank,
                "image_id": int(found) if catalog_image else None,
                "source_key": sources.get(int(found)) if catalog_image else None,
                "index_score": float(score),
                "distractor": not catalog_image,
            }
        )
    return rows


def source_keys(catalog: Catalog, ids: np.ndarray) -> dict[int, str]:
    """Source keys of the catalog images among search results (unknown ids are left out)."""
    wanted = sorted({int(i) for i in ids.reshape(-1).tolist() if 0 <= i < DISTRACTOR_ID_BASE})
    try:
        return {image.id: image.source_key for image in catalog.images_by_ids(wanted)}
    except LookupError:  # an id the catalog lost: look them up one by one
        found = (catalog.image(i) for i in wanted)
        return {image.id: image.source_key for image in found if image is not None}


def detect(
    queries: Sequence[QueryFile],
    store: ObjectStore,
    extractor: Extractor,
    served: ServedSearch,
    catalog: Catalog,
    threshold: CopyThresholdRecord,
    setting: DetectionSetting,
) -> list[Verdict]:
    """A verdict per query file, in the order given; bad files get their reason.

    The top match is re-ranked on the original descriptors of the top-k catalog images
    (see `lib.copydetection.reranked_top_match`); `matches` keep the index's own scores.
    """
    check_extractor(extractor, served)
    usable, refused = decode_queries(queries)
    vectors = extractor.embed_images([image for _, _, image in usable])
    originals = OriginalDescriptors(store, catalog, extractor.identity)
    tops, scores, ids = top_matches(vectors, served, originals, setting)
    sources = source_keys(catalog, ids)
    verdicts: dict[int, Verdict] = {}
    for row, (position, digest, _) in enumerate(usable):
        top = tops[row]
        verdicts[position] = Verdict(
            query_key=queries[position].key,
            is_copy=passes(
                top.score if top else None, threshold.threshold, served.higher_is_better
            ),
            threshold=threshold.threshold,
            query_hash=digest,
            image_id=top.image_id if top else None,
            source_key=sources.get(top.image_id) if top else None,
            score=top.score if top else None,
            rank=top.rank if top else None,
            matches=result_rows(scores[row], ids[row], sources),
        )
    for position, (digest, reason) in refused.items():
        verdicts[position] = Verdict(
            query_key=queries[position].key,
            is_copy=False,
            threshold=threshold.threshold,
            query_hash=digest,
            reason=reason,
        )
    return [verdicts[position] for position in range(len(queries))]


# ---------------------------------------------------------------------------- calibration


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


# ---------------------------------------------------------------------------- ad hoc queries


def query_paths(
    paths: Sequence[Path],
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    setting: DetectionSetting,
) -> tuple[dict[str, Any], str]:
    """Judge local files against the served index without touching the inbox: (payload, text).

    The threshold is the one recorded for the current served index, calibrated (and
    recorded) first when there is none.
    """
    served = open_served(store, catalog)
    threshold, calibrated_now = current_threshold(store, catalog, extractor, served, setting)
    queries = [QueryFile(str(path), path.read_bytes()) for path in paths]
    verdicts = detect(queries, store, extractor, served, catalog, threshold, setting)
    payload = {
        "index_version": served.version.id,
        "served_index": served.served.id,
        "threshold": {
            "id": threshold.id,
            "value": threshold.threshold,
            "metric": threshold.metric,
            "target_precision": threshold.target_precision,
            "reached": threshold.reached,
            "calibrated_now": calibrated_now,
        },
        "results": [v.to_dict() for v in verdicts],
    }
    lines = [threshold_summary(threshold)] + [verdict_line(v, threshold) for v in verdicts]
    if calibrated_now:
        lines.insert(0, "no threshold was recorded for this served index: calibrated one first")
    return payload, "\n".join(lines)


def verdict_line(verdict: Verdict, threshold: CopyThresholdRecord) -> str:
    """`path: copy of image 12 (source key), score ... <= threshold ...` and the like."""
    if verdict.reason:
        return f"{verdict.query_key}: rejected: {verdict.reason}"
    if verdict.image_id is None:
        return f"{verdict.query_key}: not a copy (no catalog image among the top results)"
    side = (">=" if verdict.is_copy else "<") if threshold.metric == "ip" else None
    side = side or ("<=" if verdict.is_copy else ">")
    what = "COPY of" if verdict.is_copy else "not a copy; closest is"
    return (
        f"{verdict.query_key}: {what} image {verdict.image_id} ({verdict.source_key}), "
        f"score {verdict.score:.4f} {side} threshold {threshold.threshold:.4f}"
    )
