"""The FAISS index as stored: versions, immutable shards and the served index, one loader.

Shards are immutable objects keyed by index version and batch; the served index is every
shard of the active version merged into a new object, then published by switching the
catalog's pointer in one transaction, so a crash never leaves a half-written index in use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import faiss
import numpy as np
from PIL import Image
from pydantic import BaseModel

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.extractors import Extractor
from aindex_assets.lib.images import decode_image
from aindex_assets.lib.photos import random_crops, split_demo_photos
from aindex_assets.services.packaged import PackagedPhotos
from aindex_assets.settings import redact_extractor_spec
from aindex_assets.storage.arrays import decode_descriptors
from aindex_assets.storage.catalog import (
    Catalog,
    ImageRecord,
    IndexVersionRecord,
    ServedIndexRecord,
    ShardRecord,
)
from aindex_assets.storage.keys import (
    DISTRACTOR_BATCH,
    TRAINING_IMAGES_PREFIX,
    embeddings_key,
    served_index_key,
    shard_key,
    trained_index_key,
    training_embeddings_key,
)
from aindex_assets.storage.objectstore import ObjectStore


class NoIndex(LookupError):
    """Nothing to build on or search: no active index version, or no served index for it yet."""


class IncomparableVersion(ValueError):
    """A new index version whose scores could not be merged with the live versions'."""


class CropSource(BaseModel, frozen=True):
    """Seeded random crops of held-out packaged photos, used when `training/images/` is empty."""

    crops: int = 3000
    crop_size: int = 224
    seed: int = 0


def load_images(store: ObjectStore, keys: list[str]) -> list[Image.Image]:
    return [decode_image(store.get_bytes(key), key).image for key in keys]


def load_originals(store: ObjectStore, images: list[ImageRecord]) -> list[Image.Image]:
    return load_images(store, [i.original_key for i in images])


def load_batch_descriptors(
    store: ObjectStore, extractor_identity: str, batch_id: str
) -> dict[int, np.ndarray]:
    ids, vectors = decode_descriptors(store.get_bytes(embeddings_key(extractor_identity, batch_id)))
    return dict(zip(ids.tolist(), vectors, strict=True))


def load_training_vectors(store: ObjectStore, extractor_identity: str) -> np.ndarray:
    key = training_embeddings_key(extractor_identity)
    if not store.exists(key):
        raise NoIndex(f"no training descriptors for this extractor: materialize {key!r} first")
    return decode_descriptors(store.get_bytes(key))[1]


def training_images(
    store: ObjectStore, source: CropSource, packaged: PackagedPhotos
) -> tuple[list[Image.Image], str]:
    """Images under `training/images/` if any, else (when `packaged` allows) random crops of
    held-out packaged photos."""
    keys = [info.key for info in store.list(TRAINING_IMAGES_PREFIX)]
    if keys:
        return load_images(store, keys), f"{len(keys)} images under {TRAINING_IMAGES_PREFIX}"
    packaged.require(TRAINING_IMAGES_PREFIX)
    # Held-out photos only: a distractor cut from an indexed photo would be a near-copy of it.
    _, held_out = split_demo_photos()
    photos = [decode_image(data, name).image for name, data in held_out]
    crops = random_crops(photos, source.crops, source.crop_size, source.seed)
    return (
        crops,
        f"{len(crops)} random crops of {len(photos)} held-out packaged photos (seed {source.seed})",
    )


def register_extractor(catalog: Catalog, extractor: Extractor, spec: str) -> None:
    catalog.upsert_extractor(
        identity=extractor.identity,
        spec=redact_extractor_spec(spec),  # a model URL may hold a token
        dim=extractor.dim,
        input_size=extractor.input_size,
        details={"name": extractor.name},
    )


def require_active_version(catalog: Catalog) -> IndexVersionRecord:
    version = catalog.active_index_version()
    if version is None:
        raise NoIndex("no trained index: materialize `trained_index` first (or run `aindex demo`)")
    return version


def load_trained(store: ObjectStore, version: IndexVersionRecord) -> faiss.Index:
    return faiss_index.deserialize_index(store.get_bytes(version.object_key))


def train_version(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    factory: str,
    metric: str,
) -> tuple[IndexVersionRecord, int]:
    """Train a new index version on the stored training descriptors and make it active.

    The versions already serving released images stay live and searched: a new version
    must then use their extractor and metric, or their scores could not be compared.
    """
    refuse_incomparable(catalog, extractor.identity, metric)
    vectors = load_training_vectors(store, extractor.identity)
    index = faiss_index.train_index(factory, vectors, metric=metric)
    version_id = catalog.create_index_version(
        factory=factory,
        metric=metric,
        dim=extractor.dim,
        extractor_identity=extractor.identity,
        n_train=len(vectors),
        training_set={"object_key": training_embeddings_key(extractor.identity)},
        object_key=None,
    )
    key = trained_index_key(version_id)
    store.put_bytes(key, faiss_index.serialize_index(index))
    catalog.activate_index_version(version_id, object_key=key)
    return catalog.index_version(version_id), len(vectors)


def refuse_incomparable(catalog: Catalog, extractor_identity: str, metric: str) -> None:
    for version in catalog.index_versions():
        same = (version.extractor_identity, version.metric) == (extractor_identity, metric)
        if not same and holds_images(catalog, version.id):
            raise IncomparableVersion(
                f"index version {version.id} serves released images with extractor "
                f"{version.extractor_identity[:12]} and metric {version.metric!r}: a new "
                f"version with extractor {extractor_identity[:12]} and metric {metric!r} "
                "could not be searched beside it. Keep the extractor and metric (a new "
                "factory is fine), or start a new catalog and store for the new descriptor"
            )


def write_shard(
    store: ObjectStore,
    catalog: Catalog,
    version: IndexVersionRecord,
    batch_id: str,
    ids: np.ndarray,
    vectors: np.ndarray,
) -> str:
    """Write an immutable shard object, then record it: a crash leaves no half-recorded shard."""
    shard = faiss_index.empty_shard(load_trained(store, version))
    faiss_index.add_with_ids(shard, vectors, ids)
    key = shard_key(version.id, batch_id)
    store.put_bytes(key, faiss_index.serialize_index(shard))
    catalog.record_shard(batch_id=batch_id, index_version=version.id, object_key=key, ids=ids)
    return key


def write_batch_shard(
    store: ObjectStore, catalog: Catalog, extractor: Extractor, batch_id: str
) -> list[tuple[IndexVersionRecord, str, list[int]]]:
    """The batch's shards: the ORIGINAL descriptors of its activated images, each in the
    index version it was activated for (a retrain never moves a released image to a
    quantizer it was not optimized for). (version, key, ids) per shard written."""
    by_version: dict[int, set[int]] = {}
    for activation in catalog.activations(batch_id=batch_id):
        by_version.setdefault(activation.index_version, set()).add(activation.image_id)
    if not by_version:  # an empty shard still marks the batch as done for the active version
        by_version[require_active_version(catalog).id] = set()
    descriptors = load_batch_descriptors(store, extractor.identity, batch_id)
    written = []
    for version_id, image_ids in sorted(by_version.items()):
        version = catalog.index_version(version_id)
        ids = sorted(image_ids)
        vectors = (
            np.stack([descriptors[i] for i in ids])
            if ids
            else np.zeros((0, extractor.dim), np.float32)
        )
        key = write_shard(store, catalog, version, batch_id, np.array(ids, np.int64), vectors)
        written.append((version, key, ids))
    return written


def merge_version_shards(
    store: ObjectStore,
    catalog: Catalog,
    version: IndexVersionRecord,
    trained: faiss.Index,
    exclude_batch: str | None = None,
) -> tuple[faiss.Index, list[ShardRecord]]:
    """One index holding every recorded shard of the version (but `exclude_batch`'s)."""
    shards = [s for s in catalog.shards(version.id) if s.batch_id != exclude_batch]
    merged = faiss_index.merge_shards(
        trained, [faiss_index.deserialize_index(store.get_bytes(s.object_key)) for s in shards]
    )
    return merged, shards


def merge_served_index(store: ObjectStore, catalog: Catalog, version: IndexVersionRecord) -> int:
    """Merge every shard of the version into a new served object, then switch the pointer."""
    merged, shards = merge_version_shards(store, catalog, version, load_trained(store, version))
    served_id = catalog.next_served_index_id()
    key = served_index_key(version.id, served_id)
    store.put_bytes(key, faiss_index.serialize_index(merged))
    catalog.set_served_index(
        index_version=version.id,
        object_key=key,
        ntotal=merged.ntotal,
        batch_ids=sorted(s.batch_id for s in shards),
        served_id=served_id,
    )
    mark_indexed(catalog, version.id, [s.batch_id for s in shards])
    return merged.ntotal


def mark_indexed(catalog: Catalog, version_id: int, batch_ids: list[str]) -> None:
    """`indexed` only once a published served index holds the image, never at shard time."""
    for batch_id in batch_ids:
        if batch_id != DISTRACTOR_BATCH:
            activations = catalog.activations(batch_id=batch_id, index_version=version_id)
            catalog.set_status([a.image_id for a in activations], "indexed")
            # Every publish re-marks every batch it serves: a batch whose own run failed
            # stays `failed` until that run is re-run.
            catalog.advance_batch_status(batch_id, "indexed", from_failed=False)


def publish_served_index(
    store: ObjectStore, catalog: Catalog, on_retry: Callable[[str], None] = lambda _: None
) -> list[tuple[IndexVersionRecord, ServedIndexRecord, int]]:
    """Merge and publish every live version whose served index misses a shard (the active
    one always), until no shard landed meanwhile: no served index misses a batch."""
    published = []
    for version in live_versions(catalog):
        current = catalog.current_served_index(version.id)
        shards = {s.batch_id for s in catalog.shards(version.id)}
        if published and current is not None and set(current.batch_ids) == shards:
            continue
        while True:
            before = {s.batch_id for s in catalog.shards(version.id)}
            merge_served_index(store, catalog, version)
            if {s.batch_id for s in catalog.shards(version.id)} == before:
                break
            on_retry(f"a shard of version {version.id} landed during the merge: merging again")
        published.append((version, catalog.current_served_index(version.id), len(before)))
    return published


@dataclass
class ServedPart:
    """One index version's current served index, loaded."""

    version: IndexVersionRecord
    served: ServedIndexRecord
    index: faiss.Index


@dataclass
class ServedSearch:
    """Every live index version's served index: the active one first, then each retired
    version that still holds released images (they stay findable for the quantizer they
    were activated for). A search fans out over all of them."""

    parts: list[ServedPart]

    @property
    def version(self) -> IndexVersionRecord:
        """The active version: the one new batches are activated for."""
        return self.parts[0].version

    @property
    def served(self) -> ServedIndexRecord:
        """The active version's served index (thresholds are recorded against it)."""
        return self.parts[0].served

    @property
    def higher_is_better(self) -> bool:
        return self.version.metric == "ip"

    @property
    def batch_ids(self) -> set[str]:
        return {b for part in self.parts for b in part.served.batch_ids}

    def served_batches(self) -> dict[int, set[str]]:
        """{index version: the batches its served index holds}."""
        return {part.version.id: set(part.served.batch_ids) for part in self.parts}

    def search(self, vectors: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(index scores, ids) of the top k of each vector over every live version; empty
        arrays for no vectors.

        Versions use different quantizers, so their scores are estimates of the same
        descriptor distance and are merged as such; an id held by several versions (the
        distractors) keeps its best score. Copy detection re-ranks the shortlist on the
        stored original descriptors, so the final score does not depend on the merge.
        """
        if len(vectors) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        found = [faiss_index.search(p.index, vectors, k=k, nprobe=nprobe) for p in self.parts]
        if len(found) == 1:
            return found[0]
        return merge_results(found, k, self.higher_is_better)


def merge_results(
    found: list[tuple[np.ndarray, np.ndarray]], k: int, higher_is_better: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The best k distinct ids per row of several (scores, ids) results (-1 ids pad)."""
    scores = np.concatenate([s for s, _ in found], axis=1)
    ids = np.concatenate([i for _, i in found], axis=1)
    worst = -np.inf if higher_is_better else np.inf
    out_scores = np.full((len(ids), k), worst, np.float32)
    out_ids = np.full((len(ids), k), -1, np.int64)
    for row in range(len(ids)):
        order = np.argsort(-scores[row] if higher_is_better else scores[row], kind="stable")
        filled = 0
        for position in order:
            candidate = ids[row, position]
            if candidate < 0 or candidate in out_ids[row, :filled]:
                continue
            out_scores[row, filled], out_ids[row, filled] = scores[row, position], candidate
            filled += 1
            if filled == k:
                break
    return out_scores, out_ids


def live_versions(catalog: Catalog) -> list[IndexVersionRecord]:
    """The active version, then every retired version with a shard of released images."""
    active = require_active_version(catalog)
    retired = [
        version
        for version in catalog.index_versions()
        if version.id != active.id and holds_images(catalog, version.id)
    ]
    return [active, *retired]


def holds_images(catalog: Catalog, version_id: int) -> bool:
    return any(s.n_vectors and s.batch_id != DISTRACTOR_BATCH for s in catalog.shards(version_id))


def open_served(store: ObjectStore, catalog: Catalog) -> ServedSearch:
    """The served index of every live index version, loaded: the one loader for searches."""
    parts = []
    for version in live_versions(catalog):
        served = catalog.current_served_index(version.id)
        if served is None:
            if parts:  # a retired version's images wait for its next merge
                continue
            raise NoIndex(
                f"index version {version.id} has no served index yet: materialize `search_index`"
            )
        index = faiss_index.deserialize_index(store.get_bytes(served.object_key))
        parts.append(ServedPart(version=version, served=served, index=index))
    return ServedSearch(parts)
