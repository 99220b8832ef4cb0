"""Index assets: versioned training, immutable per-batch shards and the merged served index."""

from typing import Literal

import dagster as dg
import numpy as np

from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.metadata import stored_object
from aindex_assets.defs.partitions import (
    DISTRACTOR_BATCH,
    DISTRACTOR_ID_BASE,
    INDEX_TRAINING_POOL,
    INDEX_WRITER_POOL,
    INGEST_BATCHES,
)
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.services.embeddings import embed_training_set
from aindex_assets.services.index import (
    CropSource,
    publish_served_index,
    register_extractor,
    require_active_version,
    train_version,
    training_images,
    write_batch_shard,
    write_shard,
)
from aindex_assets.storage.catalog import IndexVersionRecord


class TrainingConfig(dg.Config, CropSource):
    """Where training descriptors come from when `training/images/` holds no images."""


class DistractorConfig(dg.Config, CropSource):
    """Distractors stand for the rest of a real database; seeded apart from the training crops."""

    crops: int = 2000
    seed: int = 1


class IndexConfig(dg.Config):
    """The index to train. Changing it, or `retrain: true`, creates a new recorded index version."""

    factory: str = "IVF32,PQ8x8"
    metric: Literal["l2", "ip"] = "l2"
    retrain: bool = False


def version_metadata(version: IndexVersionRecord) -> dict[str, dg.MetadataValue]:
    return {
        "index_version": dg.MetadataValue.int(version.id),
        "factory": dg.MetadataValue.text(version.factory),
    }


@dg.asset(group_name="index", kinds={"pytorch", "numpy"})
def training_embeddings(
    config: TrainingConfig, storage: StorageResource, extractor: ExtractorResource
) -> dg.MaterializeResult:
    """Descriptors the FAISS index is trained on (not indexed themselves).

    Taken from the images under `training/images/` in the object store when there
    are any; otherwise, on the embedded default or with `AINDEX_PACKAGED_PHOTOS=allow`
    only, from seeded random crops of the real photos that ship inside the installed
    packages, so the demo trains a working index offline. Elsewhere the asset fails and
    says what to put under `training/images/`.
    """
    store, model = storage.store(), extractor.load()
    with domain_failures():
        key, count, source = embed_training_set(
            store, model, config, storage.packaged_photo_policy()
        )
    return dg.MaterializeResult(
        metadata={
            "vectors": dg.MetadataValue.int(count),
            "source": dg.MetadataValue.text(source),
            "extractor": dg.MetadataValue.text(model.identity),
            "object_key": stored_object(store, key),
        }
    )


@dg.asset(deps=[training_embeddings], group_name="index", kinds={"faiss"}, pool=INDEX_TRAINING_POOL)
def trained_index(
    context: dg.AssetExecutionContext,
    config: IndexConfig,
    storage: StorageResource,
    extractor: ExtractorResource,
) -> dg.MaterializeResult:
    """The trained (empty) FAISS index every shard is built from, versioned in the catalog.

    Retraining is an explicit, recorded act: while an active version matches the
    requested factory string and extractor, materializing this asset keeps it. A new
    factory string or `retrain: true` trains a new version for the images activated from
    then on. Images released for an older version stay in that version's served index and
    every query searches all live versions, so a retrain never makes a released image
    unfindable; for that reason a new version must keep the extractor and metric.
    """
    store, catalog, model = storage.store(), storage.catalog(), extractor.load()
    register_extractor(catalog, model, extractor.spec)
    active = catalog.active_index_version()
    wanted = (config.factory, config.metric, model.identity)
    current = active and (active.factory, active.metric, active.extractor_identity)
    if active and not config.retrain and wanted == current:
        context.log.info(f"keeping index version {active.id} ({active.factory})")
        return dg.MaterializeResult(metadata={**version_metadata(active), "trained": False})
    with domain_failures():
        version, n_train = train_version(store, catalog, model, config.factory, config.metric)
    return dg.MaterializeResult(
        metadata={
            **version_metadata(version),
            "trained": True,
            "training_vectors": dg.MetadataValue.int(n_train),
            "retired_version": dg.MetadataValue.int(active.id if active else 0),
            "object_key": stored_object(store, version.object_key),
        }
    )


@dg.asset(deps=[trained_index], group_name="index", kinds={"faiss"})
def index_distractors(
    config: DistractorConfig, storage: StorageResource, extractor: ExtractorResource
) -> dg.MaterializeResult:
    """A shard of distractor descriptors, so that search and reports face a realistic crowd.

    Images under `training/images/` or (embedded default, or `AINDEX_PACKAGED_PHOTOS=allow`)
    seeded random crops of the packaged photos, embedded with the same extractor and
    stored with ids above 2^62 so they can never be mistaken for a catalog image.
    """
    store, catalog = storage.store(), storage.catalog()
    with domain_failures():
        version = require_active_version(catalog)
    catalog.create_batch(DISTRACTOR_BATCH, kind="distractors", source_prefix="", n_files=0)
    with domain_failures():
        images, source = training_images(store, config, storage.packaged_photo_policy())
    vectors = extractor.load().embed_images(images)
    ids = DISTRACTOR_ID_BASE + np.arange(len(vectors), dtype=np.int64)
    key = write_shard(store, catalog, version, DISTRACTOR_BATCH, ids, vectors)
    return dg.MaterializeResult(
        metadata={
            **version_metadata(version),
            "distractors": dg.MetadataValue.int(len(ids)),
            "source": dg.MetadataValue.text(source),
            "object_key": stored_object(store, key),
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
    """The batch's own index shard: this batch's codes only, in the index version its images
    were activated for.

    Built from that version's trained index and the ORIGINAL descriptors of the batch's
    activated images (active indexing changes the released pixels, the index stores the
    usual features). Shards are immutable objects keyed by index version and batch, so
    adding a batch never rewrites another batch's data and two batches can run at once.
    """
    store = storage.store()
    with domain_failures():
        written = write_batch_shard(
            store, storage.catalog(), extractor.load(), context.partition_key
        )
    return dg.MaterializeResult(
        metadata={
            "index_versions": dg.MetadataValue.json([v.id for v, _, _ in written]),
            "vectors": dg.MetadataValue.int(sum(len(ids) for _, _, ids in written)),
            "object_keys": dg.MetadataValue.json([store.uri(key) for _, key, _ in written]),
        }
    )


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
    """The served index: all shards of the active index version merged into one FAISS file
    (and of a retired version, when a batch activated for it landed late).

    A new object is written first, then the catalog's pointer switches to it in one
    transaction, so a crash never leaves a half-written index in use and readers always
    load a complete one. If a shard lands while merging, the merge is repeated so the
    served index never misses a batch.
    """
    store = storage.store()
    with domain_failures():
        published = publish_served_index(store, storage.catalog(), context.log.info)
    version, served, batches = published[0]
    return dg.MaterializeResult(
        metadata={
            **version_metadata(version),
            "ntotal": dg.MetadataValue.int(served.ntotal),
            "batches": dg.MetadataValue.int(batches),
            "object_key": stored_object(store, served.object_key),
            "republished_retired_versions": dg.MetadataValue.json(
                [v.id for v, _, _ in published[1:]]
            ),
        }
    )
