"""Checks of the index: each shard holds its batch, the served index holds every shard."""

import dagster as dg

from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.index.assets import index_shard, search_index
from aindex_assets.defs.partitions import DISTRACTOR_BATCH
from aindex_assets.defs.resources import StorageResource
from aindex_assets.lib import index as faiss_index
from aindex_assets.services.index import require_active_version

SHARD_IDS_CHECK = "shard_holds_batch_activations"
SERVED_COUNT_CHECK = "served_count_matches_catalog"


@dg.asset_check(asset=index_shard, name=SHARD_IDS_CHECK, blocking=True)
def shard_holds_batch_activations(
    context: dg.AssetCheckExecutionContext, storage: StorageResource
) -> dg.AssetCheckResult:
    """The batch's shard holds exactly the ids of its activated images, no more, no fewer."""
    store, catalog = storage.store(), storage.catalog()
    with domain_failures():
        version = require_active_version(catalog)
    [shard] = [s for s in catalog.shards(version.id) if s.batch_id == context.partition_key]
    expected = {a.image_id for a in catalog.activations(batch_id=context.partition_key)}
    held = set(
        faiss_index.stored_ids(faiss_index.deserialize_index(store.get_bytes(shard.object_key)))
    )
    return dg.AssetCheckResult(
        passed=held == expected,
        metadata={
            "expected": len(expected),
            "held": len(held),
            "missing": dg.MetadataValue.json(sorted(expected - held)[:100]),
            "unexpected": dg.MetadataValue.json(sorted(held - expected)[:100]),
        },
    )


@dg.asset_check(asset=search_index, name=SERVED_COUNT_CHECK)
def served_count_matches_catalog(storage: StorageResource) -> dg.AssetCheckResult:
    """The served index holds as many vectors as the catalog counts indexed images plus distractors.

    A shortfall after a retrain means older batches still need their shards rebuilt for
    the new index version (backfill `index_shard`).
    """
    catalog = storage.catalog()
    with domain_failures():
        version = require_active_version(catalog)
    served = catalog.current_served_index(version.id)
    shards = catalog.shards(version.id)
    expected = catalog.count_images(status="indexed") + sum(
        s.n_vectors for s in shards if s.batch_id == DISTRACTOR_BATCH
    )
    ntotal = served.ntotal if served else 0
    return dg.AssetCheckResult(
        passed=ntotal == expected,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"served": ntotal, "expected": expected, "index_version": version.id},
    )
