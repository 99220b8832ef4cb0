"""The inbox sensor: new uploads become ingestion batches without anyone clicking."""

import dagster as dg

from aindex_assets.defs.jobs import activate_batch_job, bootstrap_job, detect_copies_job
from aindex_assets.defs.partitions import INGEST_BATCHES, QUERY_BATCHES
from aindex_assets.defs.resources import StorageResource
from aindex_assets.storage.inbox import INBOX_PREFIX, claim_batches
from aindex_assets.storage.keys import QUERY_INBOX_PREFIX

BATCH_SIZE = 64
MAX_BATCHES_PER_TICK = 4
INBOX_CURSOR = "inbox"
QUERY_CURSOR = "queries"


def claim_and_request(
    storage: StorageResource,
    *,
    kind: str,
    prefix: str,
    cursor_name: str,
    job_name: str,
    partitions: dg.DynamicPartitionsDefinition,
    max_batches: int,
) -> dg.SensorResult | dg.SkipReason:
    """Claim new objects under `prefix` into batches; one partition and one run per batch.

    The cursor lives in the catalog and moves by compare-and-set, so two claimers (the
    sensor and `aindex`, or two daemons) never claim one file twice.
    """
    store, catalog = storage.store(), storage.catalog()
    cursor = catalog.inbox_cursor(cursor_name)
    manifests, new_cursor = claim_batches(
        store,
        kind=kind,
        prefix=prefix,
        cursor=cursor,
        batch_size=BATCH_SIZE,
        max_batches=max_batches,
    )
    if not manifests:
        return dg.SkipReason(f"no new objects under {prefix} after {cursor or 'the start'}")
    if not catalog.advance_inbox_cursor(cursor_name, expected=cursor, new=new_cursor):
        return dg.SkipReason("another process claimed these files first")
    batch_ids = [m.batch_id for m in manifests]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=b, partition_key=b, job_name=job_name) for b in batch_ids
        ],
        dynamic_partitions_requests=[partitions.build_add_request(batch_ids)],
        cursor=new_cursor,
    )


@dg.sensor(
    name="inbox_sensor",
    jobs=[activate_batch_job, bootstrap_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def inbox_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource
) -> dg.SensorResult | dg.SkipReason:
    """Groups new objects under `inbox/` into ingestion batches and requests one run per batch.

    Walks the inbox in key order after the last key claimed (the cursor, kept in the
    catalog so `aindex` and the sensor never claim a file twice, and of constant size),
    forms batches of at most 64 files, at most 4 per tick, writes each batch's manifest,
    registers its partition and requests its run. Until an index exists, one batch per
    tick runs with the index bootstrap (training descriptors, trained index, distractors).
    """
    needs_bootstrap = storage.catalog().active_index_version() is None
    return claim_and_request(
        storage,
        kind="ingest",
        prefix=INBOX_PREFIX,
        cursor_name=INBOX_CURSOR,
        job_name=(bootstrap_job if needs_bootstrap else activate_batch_job).name,
        partitions=INGEST_BATCHES,
        max_batches=1 if needs_bootstrap else MAX_BATCHES_PER_TICK,
    )


@dg.sensor(
    name="query_sensor",
    jobs=[detect_copies_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def query_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource
) -> dg.SensorResult | dg.SkipReason:
    """Groups new objects under `queries/inbox/` into query batches and requests their detection.

    Works like the inbox sensor with its own cursor (`queries`, kept in the catalog):
    files are claimed in key order after the last key claimed, at most 64 per batch and
    4 batches per tick, each batch gets a manifest, a partition of `copy_detections` and
    a run of `detect_copies`. Nothing is claimed while no served index exists, so early
    queries wait for the first indexed batch instead of failing.
    """
    if storage.catalog().current_served_index() is None:
        return dg.SkipReason("no served index yet: queries wait for the first indexed batch")
    return claim_and_request(
        storage,
        kind="query",
        prefix=QUERY_INBOX_PREFIX,
        cursor_name=QUERY_CURSOR,
        job_name=detect_copies_job.name,
        partitions=QUERY_BATCHES,
        max_batches=MAX_BATCHES_PER_TICK,
    )
