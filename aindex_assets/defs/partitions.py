"""Partitions and names shared by assets, checks, sensors and the command line."""

import dagster as dg

# Re-exported: the Dagster glue takes every shared name from here.
from aindex_assets.storage.keys import DISTRACTOR_BATCH as DISTRACTOR_BATCH
from aindex_assets.storage.keys import DISTRACTOR_ID_BASE as DISTRACTOR_ID_BASE

# One partition per ingestion batch (never per image: Dagster advises at most ~100k partitions).
INGEST_BATCHES = dg.DynamicPartitionsDefinition(name="ingest_batches")
# One partition per batch of suspicious images claimed from the query inbox.
QUERY_BATCHES = dg.DynamicPartitionsDefinition(name="query_batches")

# Pools keep heavy steps from oversubscribing a machine or a GPU across concurrent runs.
ACTIVATION_POOL = "aindex_activation"
INDEX_TRAINING_POOL = "aindex_index_training"
INDEX_WRITER_POOL = "aindex_index_writer"
