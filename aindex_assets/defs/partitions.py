"""Partitions and names shared by assets, checks, sensors and the command line."""

import dagster as dg

# One partition per ingestion batch (never per image: Dagster advises at most ~100k partitions).
INGEST_BATCHES = dg.DynamicPartitionsDefinition(name="ingest_batches")

# Pools keep heavy steps from oversubscribing a machine or a GPU across concurrent runs.
ACTIVATION_POOL = "aindex_activation"
INDEX_TRAINING_POOL = "aindex_index_training"
INDEX_WRITER_POOL = "aindex_index_writer"

DISTRACTOR_BATCH = "distractors"
# FAISS ids of distractors live far above any catalog image id.
DISTRACTOR_ID_BASE = 1 << 62
