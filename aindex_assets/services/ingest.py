"""Ingestion: a batch's inbox objects become validated, content-addressed originals.

Each file is read once, at most `MAX_FILE_BYTES` of it (a larger object is refused
without reading the rest), hashed and decoded once. A file whose bytes are already
registered, by an earlier batch or under another name in this one, gets a row in the
catalog's rejected files saying "duplicate of image N", so `aindex status` lists it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aindex_assets.lib.images import (
    MAX_FILE_BYTES,
    ImageRejected,
    content_hash,
    decode_image,
    too_large_reason,
)
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import BatchManifest
from aindex_assets.storage.keys import INBOX_PREFIX, InvalidKey, original_key
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore

READ_CHUNK = 1024 * 1024


@dataclass
class IngestOutcome:
    """What happened to each file of a batch."""

    files: int = 0
    registered: list[int] = field(default_factory=list)
    # (file, image id, batch that registered the image first), also in the catalog.
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
    catalog.advance_batch_status(batch_id, "ingested")
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
        data = read_at_most(store, read_key or source_key, MAX_FILE_BYTES)
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
    if data is None:  # larger than any upload may be: nothing more is read
        reason = too_large_reason(store.stat(read_key or source_key).size, MAX_FILE_BYTES)
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
    if created or (existing.batch_id == batch_id and existing.source_key == source_key):
        outcome.registered.append(image_id)  # new, or this batch's own file on a re-run
    else:
        catalog.record_duplicate(batch_id, source_key, existing, digest)
        outcome.duplicates.append((source_key, image_id, existing.batch_id))


def read_at_most(store: ObjectStore, key: str, limit: int) -> bytes | None:
    """The object's bytes, or None once more than `limit` of them came (the rest unread)."""
    parts, size = [], 0
    with store.open(key) as reader:
        while chunk := reader.read(min(READ_CHUNK, limit + 1 - size)):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return None
    return b"".join(parts)
