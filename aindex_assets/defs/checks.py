"""Asset checks: the guarantees an auditor can read next to each materialization."""

import dagster as dg

from aindex_assets.defs.activation import activated_images
from aindex_assets.defs.index import index_shard, search_index
from aindex_assets.defs.partitions import DISTRACTOR_BATCH
from aindex_assets.defs.reports import robustness_report
from aindex_assets.defs.resources import StorageResource
from aindex_assets.defs.shared import require_active_version
from aindex_assets.lib import index as faiss_index

PSNR_FLOOR_CHECK = "psnr_above_floor"
SHARD_IDS_CHECK = "shard_holds_batch_activations"
SERVED_COUNT_CHECK = "served_count_matches_catalog"
RECALL_CHECK = "active_recall_not_below_passive"


class PsnrFloorConfig(dg.Config):
    """Lowest PSNR (dB) an activated image may have before its release is stopped."""

    floor_db: float = 40.0


@dg.asset_check(asset=activated_images, name=PSNR_FLOOR_CHECK, blocking=True)
def psnr_above_floor(
    context: dg.AssetCheckExecutionContext, config: PsnrFloorConfig, storage: StorageResource
) -> dg.AssetCheckResult:
    """Every image activated in this batch has a PSNR at or above the floor (default 40 dB).

    Blocking: a batch with a visibly altered image does not reach the index or the report.
    """
    records = storage.catalog().activations(batch_id=context.partition_key)
    below = [(r.image_id, round(r.psnr, 2)) for r in records if r.psnr < config.floor_db]
    return dg.AssetCheckResult(
        passed=not below,
        metadata={
            "floor_db": config.floor_db,
            "images": len(records),
            "below_floor": dg.MetadataValue.json(below[:100]),
            "min_psnr": min((r.psnr for r in records), default=float("nan")),
        },
    )


@dg.asset_check(asset=index_shard, name=SHARD_IDS_CHECK, blocking=True)
def shard_holds_batch_activations(
    context: dg.AssetCheckExecutionContext, storage: StorageResource
) -> dg.AssetCheckResult:
    """The batch's shard holds exactly the ids of its activated images, no more, no fewer."""
    store, catalog = storage.store(), storage.catalog()
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


@dg.asset_check(asset=robustness_report, name=RECALL_CHECK)
def active_recall_not_below_passive(
    context: dg.AssetCheckExecutionContext, storage: StorageResource
) -> dg.AssetCheckResult:
    """On the batch's latest report, average recall@1 of activated images is not below passive."""
    reports = storage.catalog().reports(batch_id=context.partition_key, kind="robustness")
    if not reports:
        return dg.AssetCheckResult(passed=True, metadata={"note": "no activated images to compare"})
    report = reports[-1]
    averages = report.payload["result"]["average"]
    passive, active = averages["passive"]["recall_at_1"], averages["active"]["recall_at_1"]
    return dg.AssetCheckResult(
        passed=active >= passive,
        metadata={"recall_at_1_passive": passive, "recall_at_1_active": active},
    )
