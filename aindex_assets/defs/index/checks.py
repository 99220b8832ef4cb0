"""Checks of the index: each shard holds its batch, the served index holds every shard."""

import dagster as dg

from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.index.assets import index_shard, search_index
from aindex_assets.defs.partitions import DISTRACTOR_BATCH
from aindex_assets.defs.resources import StorageResource
from aindex_assets.lib import index as faiss_index
from aindex_assets.services.index import live_versions

SHARD_IDS_CHECK = "shard_holds_batch_activations"
SERVED_COUNT_CHECK = "served_count_matches_catalog"


@dg.asset_check(asset=index_shard, name=SHARD_IDS_CHECK, blocking=True)
def shard_holds_batch_activations(
    context: dg.AssetCheckExecutionContext, storage: StorageResource
) -> dg.AssetCheckResult:
    """The batch's shards hold exactly the ids of its activated images, each in the index
    version it was activated for: no more, no fewer."""
    store, catalog, batch_id = storage.store(), storage.catalog(), context.partition_key
    expected = {(a.index_version, a.image_id) for a in catalog.activations(batch_id=batch_id)}
    held = set()
    for version in catalog.index_versions():
        for shard in catalog.shards(version.id):
            if shard.batch_id == batch_id:
                index = faiss_index.deserialize_index(store.get_bytes(shard.object_key))
                held |= {(version.id, i) for i in faiss_index.stored_ids(index)}
    return dg.AssetCheckResult(
        passed=held == expected,
        metadata={
            "expected": len(expected),
            "held": len(held),
            "missing (version, id)": dg.MetadataValue.json(sorted(expected - held)[:100]),
            "unexpected (version, id)": dg.MetadataValue.json(sorted(held - expected)[:100]),
        },
    )


@dg.asset_check(asset=search_index, name=SERVED_COUNT_CHECK)
def served_count_matches_catalog(storage: StorageResource) -> dg.AssetCheckResult:
    """The served indexes of all live index versions hold, beside their distractors, as many
    images as the catalog counts indexed: no released image is left out of search."""
    catalog = storage.catalog()
    with domain_failures():
        versions = live_versions(catalog)
    served_images = 0
    for version in versions:
        served = catalog.current_served_index(version.id)
        if served is None:
            continue
        distractors = sum(
            s.n_vectors
            for s in catalog.shards(version.id)
            if s.batch_id == DISTRACTOR_BATCH and s.batch_id in served.batch_ids
        )
        served_images += served.ntotal - distractors
    expected = catalog.count_images(status="indexed")
    return dg.AssetCheckResult(
        passed=served_images == expected,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "served_images": served_images,
            "indexed_in_catalog": expected,
            "live_index_versions": dg.MetadataValue.json([v.id for v in versions]),
        },
    )
