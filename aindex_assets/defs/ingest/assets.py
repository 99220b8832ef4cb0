"""Ingestion assets: a batch's inbox objects become validated, content-addressed originals."""

import dagster as dg

from aindex_assets.defs.claims import InboxBatchConfig, claim_for_run
from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.metadata import stored_object
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.services.embeddings import embed_batch
from aindex_assets.services.index import register_extractor
from aindex_assets.services.ingest import IngestOutcome, ingest_batch

TABLE_ROWS = 50


def markdown_table(header: list[str], rows: list[tuple]) -> str:
    if not rows:
        return "none"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join(f"`{c}`" if i == 0 else str(c) for i, c in enumerate(r)) + " |"
        for r in rows[:TABLE_ROWS]
    ]
    return "\n".join(lines)


def outcome_metadata(outcome: IngestOutcome) -> dict[str, dg.MetadataValue]:
    return {
        "files": dg.MetadataValue.int(outcome.files),
        "registered": dg.MetadataValue.int(len(outcome.registered)),
        "duplicates_of_earlier_batches": dg.MetadataValue.int(len(outcome.duplicates)),
        "rejected": dg.MetadataValue.int(len(outcome.rejected)),
        "rejected_files": dg.MetadataValue.md(markdown_table(["file", "reason"], outcome.rejected)),
        "duplicate_files": dg.MetadataValue.md(
            markdown_table(["file", "image id", "first seen in batch"], outcome.duplicates)
        ),
    }


@dg.asset(partitions_def=INGEST_BATCHES, group_name="ingest", kinds={"python", "image"})
def raw_images(
    context: dg.AssetExecutionContext, config: InboxBatchConfig, storage: StorageResource
) -> dg.MaterializeResult:
    """The originals of one ingestion batch, decoded, validated and registered in the catalog.

    The run first claims its inbox files (named in its config by the inbox sensor; empty
    when re-run by hand: the files it claimed before) and moves them out of the inbox, one
    catalog insert per file deciding which batch gets it. Each file is hashed, fully
    decoded (EXIF orientation applied, decompression bombs, truncated files and non-images
    refused) and stored once under its content hash. A file that cannot be used is recorded as
    rejected with its reason and never fails the batch; bytes already registered by an
    earlier batch are listed as duplicates and not processed again. Re-running the
    partition is a no-op for everything already registered.
    """
    with domain_failures():
        manifest = claim_for_run(storage, context.partition_key, "ingest", config)
        outcome = ingest_batch(storage.store(), storage.catalog(), manifest)
    for key, reason in outcome.rejected:
        context.log.warning(f"rejected {key}: {reason}")
    return dg.MaterializeResult(metadata=outcome_metadata(outcome))


@dg.asset(
    partitions_def=INGEST_BATCHES,
    deps=[raw_images],
    group_name="ingest",
    kinds={"pytorch", "numpy"},
)
def image_embeddings(
    context: dg.AssetExecutionContext, storage: StorageResource, extractor: ExtractorResource
) -> dg.MaterializeResult:
    """Descriptors of the batch's originals, one L2-normalized row per registered image.

    Computed with the configured frozen extractor (its identity, a hash of weights and
    preprocessing, is recorded in the catalog and in this materialization) and stored
    as an `.npz` of ids and float32 vectors, read back without pickle. These are the
    features the index stores for the images: activation moves the released pixels,
    never the indexed descriptors.
    """
    store, catalog, model = storage.store(), storage.catalog(), extractor.load()
    register_extractor(catalog, model, extractor.spec)
    key, count = embed_batch(store, catalog, model, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            "images": dg.MetadataValue.int(count),
            "dim": dg.MetadataValue.int(model.dim),
            "extractor": dg.MetadataValue.text(model.identity),
            "object_key": stored_object(store, key),
        }
    )
