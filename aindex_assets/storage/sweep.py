"""What interrupted writes leave in an object store, and its removal.

A write that is killed before it completes (``kill -9``, the out-of-memory killer, a
container stopped mid-run) never becomes a visible object, but it leaves its bytes
behind: the local store a temporary ``.aindex-tmp-*`` file next to the target (and
next to its metadata sidecar), an S3 server an incomplete multipart upload (objects
above the part size go up in parts). Nothing lists them, so nothing would ever remove
them. :func:`sweep_temporaries` removes those of one folder that are older than a
given age: a write in progress keeps its temporary file's modification time fresh, so
an old one belongs to a writer that is gone.
"""

from __future__ import annotations

import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from minio.error import S3Error

from aindex_assets.storage.keys import validate_prefix
from aindex_assets.storage.objectstore import (
    META_DIR,
    TMP_PREFIX,
    LocalObjectStore,
    ObjectStore,
    S3ObjectStore,
)

# Far longer than any single write takes; a write in progress refreshes its file's time.
DEFAULT_MAX_AGE = timedelta(minutes=15)


def sweep_temporaries(
    store: ObjectStore,
    folder: str,
    older_than: timedelta = DEFAULT_MAX_AGE,
    now: datetime | None = None,
) -> list[str]:
    """Remove the leftovers of interrupted writes into `folder` (a prefix ending in '/')
    last touched more than `older_than` ago; returns what was removed (store-relative
    paths of temporary files, or ``upload:<key>`` for an aborted multipart upload).

    Only the folder itself is swept, not its subfolders: callers name the folders they
    write into, so a sweep costs one listing per folder, whatever the store holds.
    """
    if not folder.endswith("/"):
        raise ValueError(f"folder {folder!r} must end with '/'")
    validate_prefix(folder)
    cutoff = (now or datetime.now(UTC)) - older_than
    if isinstance(store, LocalObjectStore):
        return _sweep_local(store, folder, cutoff)
    if isinstance(store, S3ObjectStore):
        return _sweep_s3(store, folder, cutoff)
    return []


def _sweep_local(store: LocalObjectStore, folder: str, cutoff: datetime) -> list[str]:
    removed = []
    for base in (store.root, store.root / META_DIR):
        directory = base / folder
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if not entry.name.startswith(TMP_PREFIX) or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(FileNotFoundError):  # its writer just finished with it
                if datetime.fromtimestamp(entry.stat().st_mtime, UTC) < cutoff:
                    Path(entry.path).unlink()
                    removed.append(str(Path(entry.path).relative_to(store.root)))
    return removed


def _sweep_s3(store: S3ObjectStore, folder: str, cutoff: datetime) -> list[str]:
    removed = []
    with store._errors():
        # Objects named like local temporaries: no writer of this package makes them on
        # S3, but a copy of a local folder (mc mirror) may carry some.
        for obj in store.client.list_objects(store.bucket, prefix=folder + TMP_PREFIX):
            if obj.object_name and obj.last_modified and obj.last_modified < cutoff:
                store.client.remove_object(store.bucket, obj.object_name)
                removed.append(obj.object_name)
        # The minio client has no public call for these (MinIO itself drops them after
        # 24 h by default; AWS only with a lifecycle rule).
        try:
            uploads = store.client._list_multipart_uploads(store.bucket, prefix=folder).uploads
        except S3Error as exc:
            if exc.code in ("NotImplemented", "MethodNotAllowed"):
                return removed
            raise
        for upload in uploads:
            started = upload.initiated_time
            if started is not None and started < cutoff and upload.upload_id:
                store.client._abort_multipart_upload(
                    store.bucket, upload.object_name, upload.upload_id
                )
                removed.append(f"upload:{upload.object_name}")
    return removed
