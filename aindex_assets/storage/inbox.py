"""The inboxes: where new files land, where claimed files go, and the batch manifest.

Uploaders put objects under ``inbox/`` (images to ingest) or ``queries/inbox/`` (suspects
to judge); ``aindex ingest`` names them ``inbox/<UTC time>-<random>/<safe name>``, but
nothing relies on that: files dropped under any name are taken, in any order (see
:mod:`aindex_assets.services.inbox` for how batches are planned and claimed). A claimed
object moves to ``batches/<batch>/files/<its key below the inbox>``, next to the batch's
manifest, so the inbox only ever holds what no batch has taken. A batch is therefore a
fixed, re-readable set of objects: re-running it never picks up different files.

Names the store cannot address (not valid UTF-8 in a local folder, or not a safe key when
written straight through the S3 API) are never turned into keys: they are named in
messages by :func:`printable_key` and refused with :func:`unsafe_reason`.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath

from aindex_assets.storage.keys import (
    INBOX_PREFIX,
    InvalidKey,
    check_batch_id,
    manifest_key,
    safe_name,
    validate_key,
)
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore

MANIFEST_CONTENT_TYPE = "application/json"


@dataclass(frozen=True)
class BatchManifest:
    """The files one batch claimed from an inbox, in claim order.

    ``source_keys`` are where the files are now (read these); ``inbox_keys`` the inbox keys
    they came from, in the same order (show and record these); ``rejected`` pairs a name the
    store cannot address with the reason it was refused. A manifest written before claims
    moved files has no ``inbox_keys``: its files are still read from the inbox.
    """

    batch_id: str
    kind: str
    source_keys: tuple[str, ...]
    created_at: str
    inbox_keys: tuple[str, ...] = ()
    rejected: tuple[tuple[str, str], ...] = ()

    def members(self) -> list[tuple[str, str]]:
        """(inbox key, key to read) for every claimed file."""
        return list(zip(self.inbox_keys or self.source_keys, self.source_keys, strict=True))

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "batch_id": self.batch_id,
                "kind": self.kind,
                "source_keys": list(self.source_keys),
                "inbox_keys": list(self.inbox_keys),
                "rejected": [list(pair) for pair in self.rejected],
                "created_at": self.created_at,
            },
            indent=2,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> BatchManifest:
        raw = json.loads(data)
        return cls(
            raw["batch_id"],
            raw["kind"],
            tuple(raw["source_keys"]),
            raw["created_at"],
            tuple(raw.get("inbox_keys", ())),
            tuple((key, reason) for key, reason in raw.get("rejected", ())),
        )


def new_batch_id(source_keys: tuple[str, ...], now: datetime | None = None) -> str:
    """A time-ordered id (sorts like the batches' arrival) with a digest of its members.

    The digest covers the exact time too: the same files proposed again a moment later
    (their first run failed before claiming them) get a new batch, and a new run key.
    """
    moment = now or datetime.now(UTC)
    stamp = moment.strftime("%Y%m%dT%H%M%SZ")
    signed = "\n".join((moment.isoformat(), *source_keys)).encode("utf-8", "backslashreplace")
    return f"{stamp}-{hashlib.sha256(signed).hexdigest()[:8]}"


def upload_key(file_name: str, prefix: str = INBOX_PREFIX, now: datetime | None = None) -> str:
    """An inbox key that sorts after everything uploaded before it."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{prefix}{stamp}-{secrets.token_hex(3)}/{safe_name(PurePosixPath(file_name).name)}"


def printable_key(key: str) -> str:
    """The key as text any database, JSON document or log line takes, naming the same file.

    Bytes of a local name that is not UTF-8 (listed with surrogate escapes) and control
    characters become ``\\xNN``. A key the store can address is returned unchanged.
    """
    if not _is_utf8(key):
        escapes = "surrogateescape" if _only_escapes(key) else "backslashreplace"
        key = key.encode("utf-8", escapes).decode("utf-8", "backslashreplace")
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", key)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _is_utf8(key: str) -> bool:
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _only_escapes(key: str) -> bool:
    """True if every surrogate in ``key`` is one ``os.fsdecode`` made from a raw byte."""
    return all(0xDC80 <= ord(ch) <= 0xDCFF for ch in key if 0xD800 <= ord(ch) <= 0xDFFF)


def unsafe_reason(key: str) -> str | None:
    """Why the store cannot take ``key`` as an object (None: it can), naming the file."""
    if not _is_utf8(key):
        return (
            f"file name '{printable_key(key)}' is not valid UTF-8: rename it, or upload it "
            "with `aindex ingest`"
        )
    try:
        validate_key(key)
    except InvalidKey as exc:
        return (
            f"unsafe object name '{printable_key(key)}' ({exc.reason}); upload files with "
            "`aindex ingest`"
        )
    return None


def claimed_key(batch_id: str, inbox_key: str, prefix: str) -> str:
    """Where a claimed inbox object goes: ``batches/<batch>/files/<key below the inbox>``.

    A key too long for that place keeps only a digest and its safe last name, under
    ``batches/<batch>/renamed/``, a folder no inbox key can reach.
    """
    rest = inbox_key.removeprefix(prefix)
    try:
        return validate_key(f"batches/{check_batch_id(batch_id)}/files/{rest}")
    except InvalidKey:
        digest = hashlib.sha256(inbox_key.encode("utf-8")).hexdigest()[:16]
        return f"batches/{batch_id}/renamed/{digest}-{safe_name(rest.rsplit('/', 1)[-1])}"


def write_manifest(store: ObjectStore, manifest: BatchManifest) -> None:
    store.put_bytes(
        manifest_key(manifest.batch_id), manifest.to_json(), content_type=MANIFEST_CONTENT_TYPE
    )


def read_manifest(store: ObjectStore, batch_id: str) -> BatchManifest:
    """The manifest a batch's run wrote when it claimed its files."""
    try:
        return BatchManifest.from_json(store.get_bytes(manifest_key(batch_id)))
    except ObjectNotFound as exc:
        raise LookupError(
            f"batch {batch_id!r} has no manifest at {manifest_key(batch_id)}: "
            "batches are planned by the inbox sensors and claimed by their runs, not by hand"
        ) from exc
