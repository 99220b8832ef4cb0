"""Every job in one place, selected by asset key so that no asset module imports another."""

import dagster as dg

BATCH_ASSETS = (
    "raw_images",
    "image_embeddings",
    "activated_images",
    "index_shard",
    "search_index",
    "robustness_report",
)
BOOTSTRAP_ASSETS = ("training_embeddings", "trained_index", "index_distractors")

BATCH_SELECTION = dg.AssetSelection.assets(*BATCH_ASSETS)
BOOTSTRAP_SELECTION = dg.AssetSelection.assets(*BOOTSTRAP_ASSETS)

# Run tags of the jobs that carry the flow of uploads. Their steps are idempotent (claims,
# released images recorded as they are stored and never redone, immutable shards), so a run
# whose worker died (kill -9, out of memory) is re-executed from its failed step, up to
# twice, by the daemon's run retries (deploy/dagster.yaml); a failing asset is not retried.
RETRIED_RUN_TAGS = {
    "dagster/max_retries": "2",
    "dagster/retry_strategy": "FROM_FAILURE",
    "dagster/retry_on_asset_or_op_failure": "false",
}
# A batch run whose worker vanished together with its code server (a restarted container)
# is failed by run monitoring after this instead of the instance's 6 hours, then retried.
# A batch of 64 photos of 12 Mpx activates in under an hour on 2 cores.
BATCH_RUN_TAGS = {**RETRIED_RUN_TAGS, "dagster/max_runtime": "7200"}

activate_batch_job = dg.define_asset_job(
    "activate_batch",
    selection=BATCH_SELECTION,
    description=(
        "One ingestion batch from the inbox to activated images, its shard, the served index "
        "and its report."
    ),
    tags=BATCH_RUN_TAGS,
)

bootstrap_job = dg.define_asset_job(
    "bootstrap_and_activate_batch",
    selection=BOOTSTRAP_SELECTION | BATCH_SELECTION,
    description="The first batch: trains the index (and its distractors), then runs the batch.",
    tags=RETRIED_RUN_TAGS,
)

retrain_index_job = dg.define_asset_job(
    "retrain_index",
    selection=BOOTSTRAP_SELECTION | dg.AssetSelection.assets("search_index"),
    config={"ops": {"trained_index": {"config": {"retrain": True}}}},
    description=(
        "Explicitly trains a new index version for the images activated from now on. Images "
        "released for older versions stay in those versions' served indexes, and queries "
        "search every live version."
    ),
)

detect_copies_job = dg.define_asset_job(
    "detect_copies",
    selection=dg.AssetSelection.assets("copy_detections"),
    description=(
        "One batch of suspicious images from the query inbox: copy / not-a-copy verdicts "
        "against the served index."
    ),
    tags=BATCH_RUN_TAGS,
)

compare_indexes_job = dg.define_asset_job(
    "compare_indexes",
    selection=dg.AssetSelection.assets("index_comparison"),
    description=(
        "On demand: one batch evaluated for several index factory strings, passive vs active "
        "(set the factories, edits and iterations in the launchpad)."
    ),
)

calibrate_job = dg.define_asset_job(
    "calibrate_copy_threshold",
    selection=dg.AssetSelection.assets("copy_threshold"),
    description=(
        "Sets the copy threshold on the served index now (the automation sensor does it after "
        "each new served index; foreground runs without the daemon call this)."
    ),
)

ALL_JOBS = [
    activate_batch_job,
    bootstrap_job,
    retrain_index_job,
    detect_copies_job,
    compare_indexes_job,
    calibrate_job,
]
