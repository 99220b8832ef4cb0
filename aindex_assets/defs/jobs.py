"""Jobs: what one ingestion batch runs, how the index is bootstrapped, and the explicit retrain."""

import dagster as dg

from aindex_assets.defs.activation import activated_images
from aindex_assets.defs.embeddings import image_embeddings, training_embeddings
from aindex_assets.defs.index import index_distractors, index_shard, search_index, trained_index
from aindex_assets.defs.ingest import raw_images
from aindex_assets.defs.queries import copy_detections
from aindex_assets.defs.reports import robustness_report

BATCH_ASSETS = [
    raw_images,
    image_embeddings,
    activated_images,
    index_shard,
    search_index,
    robustness_report,
]
BOOTSTRAP_ASSETS = [training_embeddings, trained_index, index_distractors]

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
    selection=BOOTSTRAP_SELECTION | dg.AssetSelection.assets(search_index),
    config={"ops": {"trained_index": {"config": {"retrain": True}}}},
    description=(
        "Explicitly trains a new index version and retires the old one. Released images keep "
        "their activation records; backfill `index_shard` to re-index older batches."
    ),
)

detect_copies_job = dg.define_asset_job(
    "detect_copies",
    selection=dg.AssetSelection.assets(copy_detections),
    description=(
        "One batch of suspicious images from the query inbox: copy / not-a-copy verdicts "
        "against the served index."
    ),
)
