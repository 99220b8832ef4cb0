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


def training_images(store: ObjectStore, source: CropSource) -> tuple[list[Image.Image], str]:
    """Images under `training/images/` if any, else random crops of held-out packaged photos."""
    keys = [info.key for info in store.list(TRAINING_IMAGES_PREFIX)]
    if keys:
        return load_images(store, keys), f"{len(keys)} images under {TRAINING_IMAGES_PREFIX}"
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
    """Train a new index version on the stored training descriptors and make it active."""
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
) -> tuple[IndexVersionRecord, str, list[int]]:
    """The batch's shard: the ORIGINAL descriptors of its activated images, then `indexed`."""
    version = require_active_version(catalog)
    descriptors = load_batch_descriptors(store, extractor.identity, batch_id)
    activated = sorted({a.image_id for a in catalog.activations(batch_id=batch_id)})
    vectors = np.zeros((0, extractor.dim), np.float32)
    if activated:
        vectors = np.stack([descriptors[i] for i in activated])
    key = write_shard(store, catalog, version, batch_id, np.array(activated, np.int64), vectors)
    catalog.set_status(activated, "indexed")
    return version, key, activated


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
    return merged.ntotal


def publish_served_index(
    store: ObjectStore, catalog: Catalog, on_retry: Callable[[str], None] = lambda _: None
) -> tuple[IndexVersionRecord, ServedIndexRecord, int]:
    """Merge and publish until no shard landed meanwhile: the served index misses no batch."""
    version = require_active_version(catalog)
    while True:
        before = {s.batch_id for s in catalog.shards(version.id)}
        merge_served_index(store, catalog, version)
        if {s.batch_id for s in catalog.shards(version.id)} == before:
            break
        on_retry("a shard landed during the merge: merging again")
    return version, catalog.current_served_index(version.id), len(before)


@dataclass
class ServedSearch:
    """The loaded served index of the active version, with its catalog records."""

    version: IndexVersionRecord
    served: ServedIndexRecord
    index: faiss.Index

    @property
    def higher_is_better(self) -> bool:
        return self.version.metric == "ip"

    def search(self, vectors: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """(index scores, ids) of the top k of each vector; empty arrays for no vectors."""
        if len(vectors) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        return faiss_index.search(self.index, vectors, k=k, nprobe=nprobe)


def open_served(store: ObjectStore, catalog: Catalog) -> ServedSearch:
    """The current served index of the active index version, loaded: the one loader."""
    version = require_active_version(catalog)
    served = catalog.current_served_index(version.id)
    if served is None:
        raise NoIndex(
            f"index version {version.id} has no served index yet: materialize `search_index`"
        )
    index = faiss_index.deserialize_index(store.get_bytes(served.object_key))
    return ServedSearch(version=version, served=served, index=index)
