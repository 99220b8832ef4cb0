"""The FAISS index: versioned training, immutable per-batch shards, and the merged served index."""

import dagster as dg
import numpy as np

from aindex_assets.defs.embeddings import (
    TrainingConfig,
    training_embeddings,
    training_images,
)
from aindex_assets.defs.partitions import (
    DISTRACTOR_BATCH,
    DISTRACTOR_ID_BASE,
    INDEX_TRAINING_POOL,
    INDEX_WRITER_POOL,
    INGEST_BATCHES,
)
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.defs.shared import (
    load_batch_descriptors,
    load_trained,
    merge_version_shards,
    register_extractor,
    require_active_version,
    version_metadata,
)
from aindex_assets.lib import index as faiss_index
from aindex_assets.storage.arrays import decode_descriptors
from aindex_assets.storage.catalog import Catalog, IndexVersionRecord
from aindex_assets.storage.keys import (
    served_index_key,
    shard_key,
    trained_index_key,
    training_embeddings_key,
)
from aindex_assets.storage.objectstore import ObjectStore


class IndexConfig(dg.Config):
    """The index to train. Changing it, or `retrain: true`, creates a new recorded index version."""

    factory: str = "IVF32,PQ8x8"
    metric: str = "l2"
    retrain: bool = False


@dg.asset(
    deps=[training_embeddings],
    group_name="index",
    kinds={"faiss"},
    pool=INDEX_TRAINING_POOL,
)
def trained_index(
    context: dg.AssetExecutionContext,
    config: IndexConfig,
    storage: StorageResource,
    extractor: ExtractorResource,
) -> dg.MaterializeResult:
    """The trained (empty) FAISS index every shard is built from, versioned in the catalog.

    Retraining is an explicit, recorded act: while an active version matches the
    requested factory string and extractor, materializing this asset keeps it. A new
    factory string or `retrain: true` trains a new version and retires the old one;
    images activated for an older version keep their activation records and are shown
    as such, never silently re-activated.
    """
    store, catalog = storage.store(), storage.catalog()
    model = extractor.load()
    register_extractor(catalog, extractor)
    active = catalog.active_index_version()
    if (
        active is not None
        and not config.retrain
        and active.factory == config.factory
        and active.metric == config.metric
        and active.extractor_identity == model.identity
    ):
        context.log.info(f"keeping index version {active.id} ({active.factory})")
        return dg.MaterializeResult(metadata={**version_metadata(active), "trained": False})
    _, vectors = decode_descriptors(store.get_bytes(training_embeddings_key(model.identity)))
    index = faiss_index.train_index(config.factory, vectors, metric=config.metric)
    version_id = catalog.create_index_version(
        factory=config.factory,
        metric=config.metric,
        dim=model.dim,
        extractor_identity=model.identity,
        n_train=len(vectors),
        training_set={"object_key": training_embeddings_key(model.identity)},
        object_key=None,
    )
    key = trained_index_key(version_id)
    store.put_bytes(key, faiss_index.serialize_index(index))
    catalog.activate_index_version(version_id, object_key=key)
    version = catalog.index_version(version_id)
    return dg.MaterializeResult(
        metadata={
            **version_metadata(version),
            "trained": True,
            "training_vectors": dg.MetadataValue.int(len(vectors)),
            "retired_version": dg.MetadataValue.int(active.id if active else 0),
            "object_key": dg.MetadataValue.text(store.uri(key)),
        }
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


class DistractorConfig(TrainingConfig):
    """Distractors stand for the rest of a real database; seeded apart from the training crops."""

    crops: int = 2000
    seed: int = 1


@dg.asset(deps=[trained_index], group_name="index", kinds={"faiss"})
def index_distractors(
    config: DistractorConfig, storage: StorageResource, extractor: ExtractorResource
) -> dg.MaterializeResult:
    """A shard of distractor descriptors, so that search and reports face a realistic crowd.

    Images under `training/images/` or, by default, seeded random crops of the packaged
    photos, embedded with the same extractor and stored with ids above 2^62 so they can
    never be mistaken for a catalog image.
    """
    store, catalog = storage.store(), storage.catalog()
    version = require_active_version(catalog)
    catalog.create_batch(DISTRACTOR_BATCH, kind="distractors", source_prefix="", n_files=0)
    images, source = training_images(store, config)
    vectors = extractor.load().embed_images(images)
    ids = DISTRACTOR_ID_BASE + np.arange(len(vectors), dtype=np.int64)
    key = write_shard(store, catalog, version, DISTRACTOR_BATCH, ids, vectors)
    return dg.MaterializeResult(
        metadata={
            **version_metadata(version),
            "distractors": dg.MetadataValue.int(len(ids)),
            "source": dg.MetadataValue.text(source),
            "object_key": dg.MetadataValue.text(store.uri(key)),
        }
    )


@dg.asset(
    partitions_def=INGEST_BATCHES,
    deps=["activated_images", trained_index],
    group_name="index",
    kinds={"faiss"},
)
def index_shard(
    context: dg.AssetExecutionContext, storage: StorageResource, extractor: ExtractorResource
) -> dg.MaterializeResult:
    """The batch's own index shard: the active index version holding this batch's codes only.

    Built from the trained index and the ORIGINAL descriptors of the batch's activated
    images (active indexing changes the released pixels, the index stores the usual
    features). Shards are immutable objects keyed by index version and batch, so adding
    a batch never rewrites another batch's data and two batches can run at once.
    """
    store, catalog = storage.store(), storage.catalog()
    version = require_active_version(catalog)
    batch_id = context.partition_key
    model = extractor.load()
    descriptors = load_batch_descriptors(store, model.identity, batch_id)
    activated = sorted({a.image_id for a in catalog.activations(batch_id=batch_id)})
    ids = np.array(activated, dtype=np.int64)
    vectors = np.zeros((0, model.dim), np.float32)
    if activated:
        vectors = np.stack([descriptors[i] for i in activated])
    key = write_shard(store, catalog, version, batch_id, ids, vectors)
    catalog.set_status(activated, "indexed")
    return dg.MaterializeResult(
        metadata={
            **version_metadata(version),
            "vectors": dg.MetadataValue.int(len(ids)),
            "object_key": dg.MetadataValue.text(store.uri(key)),
        }
    )


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


@dg.asset(
    deps=[index_shard, index_distractors],
    group_name="index",
    kinds={"faiss"},
    pool=INDEX_WRITER_POOL,
    automation_condition=dg.AutomationCondition.eager(),
)
def search_index(
    context: dg.AssetExecutionContext, storage: StorageResource
) -> dg.MaterializeResult:
    """The served index: all shards of the active index version merged into one FAISS file.

    A new object is written first, then the catalog's pointer switches to it in one
    transaction, so a crash never leaves a half-written index in use and readers always
    load a complete one. If a shard lands while merging, the merge is repeated so the
    served index never misses a batch.
    """
    store, catalog = storage.store(), storage.catalog()
    version = require_active_version(catalog)
    while True:
        before = {s.batch_id for s in catalog.shards(version.id)}
        ntotal = merge_served_index(store, catalog, version)
        if {s.batch_id for s in catalog.shards(version.id)} == before:
            break
        context.log.info("a shard landed during the merge: merging again")
    served = catalog.current_served_index(version.id)
    return dg.MaterializeResult(
        metadata={
            **version_metadata(version),
            "ntotal": dg.MetadataValue.int(ntotal),
            "batches": dg.MetadataValue.int(len(before)),
            "object_key": dg.MetadataValue.text(store.uri(served.object_key)),
        }
    )
