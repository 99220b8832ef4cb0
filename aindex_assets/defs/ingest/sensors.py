"""The inbox sensor: new uploads become ingestion batches without anyone clicking."""

import dagster as dg

from aindex_assets.defs.claims import MAX_PENDING_BATCHES, propose_batches
from aindex_assets.defs.jobs import activate_batch_job, bootstrap_job
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.resources import StorageResource
from aindex_assets.services.inbox import MAX_BATCHES_PER_TICK

# The asset whose run step claims the batch's files (its config is InboxBatchConfig).
CLAIMING_ASSET = "raw_images"


@dg.sensor(
    name="inbox_sensor",
    jobs=[activate_batch_job, bootstrap_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def inbox_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource
) -> dg.SensorResult | dg.SkipReason:
    """Groups unclaimed objects under `inbox/` into ingestion batches, one run per batch.

    Only reads: it lists the inbox (any names, in any order), leaves out files a batch
    already holds or that a recent tick proposed to a run that has not finished (its
    cursor), forms batches of at most 64 files, at most 4 per tick, registers their
    partitions and requests their runs with the files named in the run config. Each run's
    `raw_images` step claims its files, moving them out of the inbox, so a preview or a
    tick that launches nothing claims nothing. Until an index exists, one batch at a time
    runs with the index bootstrap (training descriptors, trained index, distractors).
    """
    needs_bootstrap = storage.catalog().active_index_version() is None
    return propose_batches(
        context,
        storage,
        kind="ingest",
        job_name=(bootstrap_job if needs_bootstrap else activate_batch_job).name,
        op_name=CLAIMING_ASSET,
        partitions=INGEST_BATCHES,
        max_batches=1 if needs_bootstrap else MAX_BATCHES_PER_TICK,
        max_pending=1 if needs_bootstrap else MAX_PENDING_BATCHES,
    )


@dg.run_failure_sensor(
    name="failed_batch_sensor",
    monitored_jobs=[activate_batch_job, bootstrap_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
def failed_batch_sensor(context: dg.RunFailureSensorContext, storage: StorageResource) -> None:
    """Marks the batch of a failed ingestion run `failed` in the catalog (`aindex status`
    shows it), whatever made the run fail, a worker killed mid-step included, which no
    step-level hook sees; only when that run is still the batch's latest, so that a retry
    already under way is not marked, and not for good: each step of a re-run that succeeds
    moves the batch on (ingested, embedded, activated, indexed, reported).
    """
    batch_id = context.dagster_run.tags.get("dagster/partition")
    if not batch_id:
        return
    [latest] = context.instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/partition": batch_id}), limit=1
    )
    if latest.run_id == context.dagster_run.run_id:
        storage.catalog().advance_batch_status(batch_id, "failed")
