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

activate_batch_job = dg.define_asset_job(
    "activate_batch",
    selection=BATCH_SELECTION,
    description=(
        "One ingestion batch from the inbox to activated images, its shard, the served index "
        "and its report."
    ),
)

bootstrap_job = dg.define_asset_job(
    "bootstrap_and_activate_batch",
    selection=BOOTSTRAP_SELECTION | BATCH_SELECTION,
    description="The first batch: trains the index (and its distractors), then runs the batch.",
)

retrain_index_job = dg.define_asset_job(
    "retrain_index",
    selection=BOOTSTRAP_SELECTION | dg.AssetSelection.assets("search_index"),
    config={"ops": {"trained_index": {"config": {"retrain": True}}}},
    description=(
        "Explicitly trains a new index version and retires the old one. Released images keep "
        "their activation records; backfill `index_shard` to re-index older batches."
    ),
)

detect_copies_job = dg.define_asset_job(
    "detect_copies",
    selection=dg.AssetSelection.assets("copy_detections"),
    description=(
        "One batch of suspicious images from the query inbox: copy / not-a-copy verdicts "
        "against the served index."
    ),
)

compare_indexes_job = dg.define_asset_job(
    "compare_indexes",
    selection=dg.AssetSelection.assets("index_comparison"),
    description=(
        "On demand: one batch evaluated for several index factory strings, passive vs active "
        "(set the factories, edits and iterations in the launchpad)."
    ),
)

ALL_JOBS = [
    activate_batch_job,
    bootstrap_job,
    retrain_index_job,
    detect_copies_job,
    compare_indexes_job,
]
