"""The query sensor: suspicious images dropped in the query inbox get judged."""

import dagster as dg

from aindex_assets.defs.claims import propose_batches
from aindex_assets.defs.jobs import detect_copies_job
from aindex_assets.defs.partitions import QUERY_BATCHES
from aindex_assets.defs.resources import StorageResource
from aindex_assets.services.copy_detection.calibration import has_threshold
from aindex_assets.services.inbox import MAX_BATCHES_PER_TICK

# The asset whose run step claims the batch's files (its config includes InboxBatchConfig).
CLAIMING_ASSET = "copy_detections"


@dg.sensor(
    name="query_sensor",
    jobs=[detect_copies_job],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def query_sensor(
    context: dg.SensorEvaluationContext, storage: StorageResource
) -> dg.SensorResult | dg.SkipReason:
    """Groups unclaimed objects under `queries/inbox/` into query batches, one detection run each.

    Works like the inbox sensor, with its own cursor: it only reads, forms batches of at
    most 64 files (any names, in any order), at most 4 per tick, registers a partition of
    `copy_detections` per batch and requests a run of `detect_copies` with the files named
    in its run config; the run's `copy_detections` step claims them, moving them out of
    the query inbox. Nothing is proposed while no served index exists, or while no copy
    threshold is recorded for the current one (with the default setting the runs use), so
    queries wait for the first indexed batch and for `copy_threshold` instead of failing.
    """
    catalog = storage.catalog()
    served = catalog.current_served_index()
    if served is None:
        return dg.SkipReason("no served index yet: queries wait for the first indexed batch")
    if not has_threshold(catalog, served.id):
        return dg.SkipReason(
            f"no copy threshold recorded for served index {served.id} yet: queries wait until "
            "`copy_threshold` is materialized (the automation sensor does it after each new "
            "served index)"
        )
    return propose_batches(
        context,
        storage,
        kind="query",
        job_name=detect_copies_job.name,
        op_name=CLAIMING_ASSET,
        partitions=QUERY_BATCHES,
        max_batches=MAX_BATCHES_PER_TICK,
    )
