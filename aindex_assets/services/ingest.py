"""Ingestion: a batch's inbox objects become validated, content-addressed originals."""

from __future__ import annotations

from dataclasses import dataclass, field

from aindex_assets.lib.images import ImageRejected, content_hash, decode_image
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import BatchManifest
from aindex_assets.storage.keys import INBOX_PREFIX, InvalidKey, original_key
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore


@dataclass
class IngestOutcome:
    """What happened to each file of a batch."""

    files: int = 0
    registered: list[int] = field(default_factory=list)
    duplicates: list[tuple[str, int, str]] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


def ingest_batch(store: ObjectStore, catalog: Catalog, manifest: BatchManifest) -> IngestOutcome:
    """Every file the batch claimed: registered, listed as a duplicate, or rejected."""
    batch_id = manifest.batch_id
    n_files = len(manifest.source_keys) + len(manifest.rejected)
    catalog.create_batch(batch_id, kind="ingest", source_prefix=INBOX_PREFIX, n_files=n_files)
    outcome = IngestOutcome(files=n_files)
    for name, reason in manifest.rejected:
        catalog.reject_file(batch_id, name, reason)
        outcome.rejected.append((name, reason))
    for inbox_key, read_key in manifest.members():
        ingest_object(store, catalog, batch_id, inbox_key, outcome, read_key)
    return outcome


def ingest_object(
    store: ObjectStore,
    catalog: Catalog,
    batch_id: str,
    source_key: str,
    outcome: IngestOutcome,
    read_key: str | None = None,
) -> None:
    """Validate one claimed object; keep and register it, or record why it was refused.

    `source_key` is the inbox key the user knows the file by; `read_key`, where the claim
    moved it (the inbox key itself for a batch claimed before files were moved).
    """
    try:
        data = store.get_bytes(read_key or source_key)
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
