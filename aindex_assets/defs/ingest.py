"""Ingestion: a batch's inbox objects become validated, content-addressed originals."""

from dataclasses import dataclass, field

import dagster as dg

from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.resources import StorageResource
from aindex_assets.lib.images import ImageRejected, content_hash, decode_image
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import read_manifest
from aindex_assets.storage.keys import InvalidKey, original_key
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore


@dataclass
class IngestOutcome:
    """What happened to each file of a batch."""

    registered: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def ingest_object(
    store: ObjectStore, catalog: Catalog, batch_id: str, source_key: str, outcome: IngestOutcome
) -> None:
    """Validate one inbox object; keep and register it, or record why it was refused."""
    try:
        data = store.get_bytes(source_key)
    except (ObjectNotFound, InvalidKey) as exc:
        # A key written straight through the S3 API can hold what `aindex ingest` never
        # produces ('..', backslashes, reserved names): refuse the file, not the batch.
        reason = (
            "removed from the inbox before it could be ingested"
            if isinstance(exc, ObjectNotFound)
            else f"unsafe object name ({exc.reason}); upload files with `aindex ingest`"
        )
        catalog.reject_file(batch_id, source_key, reason)
        outcome.rejected.append((source_key, reason))
        return
    digest = content_hash(data) if data else None
    try:
        decoded = decode_image(data, source_key)
    except ImageRejected as exc:
        catalog.reject_file(batch_id, source_key, exc.reason, content_hash=digest)
        outcome.rejected.append((source_key, exc.reason))
        return
    key = original_key(digest, decoded.format)
    if not store.exists(key):
        store.put_bytes(key, data, content_type=f"image/{decoded.format.lower()}")
    image_id, created = catalog.register_image(
        content_hash=digest,
        source_key=source_key,
        original_key=key,
        batch_id=batch_id,
        size_bytes=len(data),
        format=decoded.format,
        width=decoded.width,
        height=decoded.height,
    )
    existing = catalog.image(image_id)
    if created or existing.batch_id == batch_id:
        outcome.registered.append(image_id)
    else:
        outcome.duplicates.append((source_key, image_id, existing.batch_id))


def outcome_metadata(outcome: IngestOutcome, n_files: int) -> dict[str, dg.MetadataValue]:
    rows = [f"| `{key}` | {reason} |" for key, reason in outcome.rejected[:50]]
    rejected_table = "\n".join(["| file | reason |", "|---|---|", *rows]) if rows else "none"
    duplicates = [
        f"| `{key}` | {image_id} | {batch} |" for key, image_id, batch in outcome.duplicates
    ]
    duplicate_table = (
        "\n".join(["| file | image id | first seen in batch |", "|---|---|---|", *duplicates[:50]])
        if duplicates
        else "none"
    )
    return {
        "files": dg.MetadataValue.int(n_files),
        "registered": dg.MetadataValue.int(len(outcome.registered)),
        "duplicates_of_earlier_batches": dg.MetadataValue.int(len(outcome.duplicates)),
        "rejected": dg.MetadataValue.int(len(outcome.rejected)),
        "rejected_files": dg.MetadataValue.md(rejected_table),
        "duplicate_files": dg.MetadataValue.md(duplicate_table),
    }


@dg.asset(
    partitions_def=INGEST_BATCHES,
    group_name="ingest",
    kinds={"python", "image"},
)
def raw_images(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """The originals of one ingestion batch, decoded, validated and registered in the catalog.

    Each inbox object named in the batch manifest is hashed, fully decoded (EXIF
    orientation applied, decompression bombs, truncated files and non-images refused)
    and stored once under its content hash. A file that cannot be used is recorded as
    rejected with its reason and never fails the batch; bytes already registered by an
    earlier batch are listed as duplicates and not processed again. Re-running the
    partition is a no-op for everything already registered.
    """
    store, catalog = storage.store(), storage.catalog()
    manifest = read_manifest(store, context.partition_key)
    catalog.create_batch(
        manifest.batch_id, kind="ingest", source_prefix="inbox/", n_files=len(manifest.source_keys)
    )
    outcome = IngestOutcome()
    for source_key in manifest.source_keys:
        ingest_object(store, catalog, manifest.batch_id, source_key, outcome)
    for key, reason in outcome.rejected:
        context.log.warning(f"rejected {key}: {reason}")
    return dg.MaterializeResult(metadata=outcome_metadata(outcome, len(manifest.source_keys)))
