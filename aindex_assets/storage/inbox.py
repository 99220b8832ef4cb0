"""The inbox: where new images land, and how they are grouped into ingestion batches.

Uploaders put objects under ``inbox/``; ``aindex ingest`` names them
``inbox/<UTC time>-<random>/<safe name>`` so keys sort in arrival order. Batch
formation walks the inbox in key order after a cursor (the last key claimed),
so the cursor never grows, and writes one manifest per batch listing the keys
it claimed. A batch is therefore a fixed, re-readable set of objects: re-running
it never picks up different files.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from aindex_assets.storage.keys import INBOX_PREFIX, manifest_key, safe_name
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore

MANIFEST_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class BatchManifest:
    """The objects one batch claimed from an inbox, in key order."""

    batch_id: str
    kind: str
    source_keys: tuple[str, ...]
    created_at: str

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "batch_id": self.batch_id,
                "kind": self.kind,
                "source_keys": list(self.source_keys),
                "created_at": self.created_at,
            },
            indent=2,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BatchManifest:
        raw = json.loads(data)
        return cls(raw["batch_id"], raw["kind"], tuple(raw["source_keys"]), raw["created_at"])


def new_batch_id(source_keys: tuple[str, ...], now: datetime | None = None) -> str:
    """A time-ordered id (sorts like the batches' arrival) with a digest of its members."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    digest = hashlib.sha256("\n".join(source_keys).encode()).hexdigest()[:8]
    return f"{stamp}-{digest}"


def upload_key(file_name: str, prefix: str = INBOX_PREFIX, now: datetime | None = None) -> str:
    """An inbox key that sorts after everything uploaded before it."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{prefix}{stamp}-{secrets.token_hex(3)}/{safe_name(PurePosixPath(file_name).name)}"


def pending_keys(store: ObjectStore, prefix: str, cursor: str | None, limit: int) -> list[str]:
    """Up to ``limit`` inbox keys after ``cursor``, in key order."""
    return [info.key for info in store.list(prefix, start_after=cursor, limit=limit)]


def claim_batches(
    store: ObjectStore,
    *,
    kind: str,
    prefix: str,
    cursor: str | None,
    batch_size: int,
    max_batches: int,
) -> tuple[list[BatchManifest], str | None]:
    """Group new inbox objects into at most ``max_batches`` manifests, and the new cursor.

    Manifests are written before the cursor moves, so a crash in between only
    leaves an unused manifest behind, never a lost file.
    """
    keys = pending_keys(store, prefix, cursor, batch_size * max_batches)
    manifests = []
    now = datetime.now(UTC)
    for start in range(0, len(keys), batch_size):
        members = tuple(keys[start : start + batch_size])
        manifest = BatchManifest(new_batch_id(members, now), kind, members, now.isoformat())
        store.put_bytes(
            manifest_key(manifest.batch_id), manifest.to_json(), content_type=MANIFEST_CONTENT_TYPE
        )
        manifests.append(manifest)
    return manifests, (keys[-1] if keys else cursor)


def read_manifest(store: ObjectStore, batch_id: str) -> BatchManifest:
    try:
        return BatchManifest.from_json(store.get_bytes(manifest_key(batch_id)))
    except ObjectNotFound as exc:
        raise LookupError(
            f"batch {batch_id!r} has no manifest at {manifest_key(batch_id)}: "
            "batches are created by the inbox sensor or `aindex ingest`, not by hand"
        ) from exc
