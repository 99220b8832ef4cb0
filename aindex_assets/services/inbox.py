"""Intake: which inbox objects form a batch, and claiming each of them for exactly one batch.

Nothing here depends on key names or on the order in which uploads complete:

- Planning only reads. :func:`plan_batches` lists what is under an inbox prefix, leaves
  out the keys an open claim holds (being moved, or refused) and those the caller asks to
  skip (a sensor's recent proposals whose runs have not finished), and groups the rest
  into batches. A sensor evaluation, a preview, `aindex demo` and the tests may call it
  as often as they like: it writes nothing, so an evaluation that launches nothing claims
  nothing.
- Claiming happens in the batch's run. :func:`claim_batch_members` claims each key by an
  atomic catalog insert (at most one open claim per inbox key: a partial unique index),
  the winner copies the object to ``batches/<batch>/files/...`` and deletes it from the
  inbox, then marks the claim moved; a loser skips the key (another batch has it). The
  inbox therefore holds exactly what no batch has taken, whatever the names, however many
  uploaders and claimers, and no cursor is needed.
- Crashes are safe to re-run: the claim row names the batch that owns a key and where
  its object goes, so re-running that batch finishes the move (an object already moved
  is found at its claimed key). A batch re-run without its keys (a backfill from the UI)
  rebuilds its members from its claim rows.
- Names the store cannot address (not UTF-8 in a local folder, unsafe keys written
  straight through the S3 API) are claimed as ``rejected`` with a reason that names the
  file (escaped), so they never stop the others. They cannot be moved through the store,
  so they stay in the inbox, held by that claim, and are never proposed again.

Known limit: an object overwritten under the same key while its claim is being moved may
lose the overwritten version (S3 has no conditional delete); `aindex ingest` never reuses
a key.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice

from aindex_assets.storage.catalog import Catalog, InboxClaimRecord
from aindex_assets.storage.inbox import (
    BatchManifest,
    claimed_key,
    new_batch_id,
    printable_key,
    read_manifest,
    unsafe_reason,
    write_manifest,
)
from aindex_assets.storage.keys import INBOX_PREFIX, QUERY_INBOX_PREFIX
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore, copy_object

BATCH_SIZE = 64
MAX_BATCHES_PER_TICK = 4
# Keys examined per plan: what open claims and recent proposals hold is skipped, so a
# queue of pending runs longer than this delays new files instead of slowing every tick.
SCAN_LIMIT = 20_000
# The catalog is asked about listed keys this many at a time.
LOOKUP_CHUNK = 500
INBOXES = {"ingest": INBOX_PREFIX, "query": QUERY_INBOX_PREFIX}


def inbox_prefix(kind: str) -> str:
    """The prefix of an inbox kind (``ingest``: ``inbox/``, ``query``: ``queries/inbox/``)."""
    try:
        return INBOXES[kind]
    except KeyError:
        raise ValueError(f"unknown inbox kind {kind!r}: one of {sorted(INBOXES)}") from None


@dataclass(frozen=True)
class PlannedBatch:
    """A batch proposed from the current inbox content; nothing is claimed yet.

    ``keys`` are the objects to claim; ``unsafe`` maps names the store cannot address
    (printable form) to the reason they will be refused.
    """

    batch_id: str
    kind: str
    keys: tuple[str, ...]
    unsafe: tuple[tuple[str, str], ...] = ()

    @property
    def members(self) -> tuple[str, ...]:
        """Every inbox name of the batch, printable."""
        return self.keys + tuple(key for key, _ in self.unsafe)


def plan_batches(
    store: ObjectStore,
    catalog: Catalog,
    *,
    kind: str,
    max_batches: int,
    batch_size: int = BATCH_SIZE,
    skip: Collection[str] = (),
    now: datetime | None = None,
) -> list[PlannedBatch]:
    """At most ``max_batches`` batches of the unclaimed inbox objects; a pure read.

    ``skip`` holds printable keys already proposed to a run that has not claimed them yet.
    """
    names = unclaimed_keys(store, catalog, kind, batch_size * max_batches, skip)
    stamp = now or datetime.now(UTC)
    return [
        _planned(kind, names[start : start + batch_size], stamp)
        for start in range(0, len(names), batch_size)
    ]


def unclaimed_keys(
    store: ObjectStore, catalog: Catalog, kind: str, limit: int, skip: Collection[str] = ()
) -> list[str]:
    """Up to ``limit`` listed inbox keys that no open claim holds and ``skip`` leaves out.

    Keys come as listed (a local name that is not UTF-8 keeps its surrogate escapes), in
    listing order; nothing in the order matters to correctness.
    """
    found: list[str] = []
    listed = (info.key for info in store.list(inbox_prefix(kind)))
    for chunk in _chunks(islice(listed, SCAN_LIMIT), LOOKUP_CHUNK):
        shown = {key: printable_key(key) for key in chunk}
        fresh = [key for key in chunk if shown[key] not in skip]
        held = catalog.open_inbox_claims(kind, [shown[key] for key in fresh])
        found += [key for key in fresh if shown[key] not in held]
        if len(found) >= limit:
            return found[:limit]
    return found


def _chunks(keys: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(islice(keys, size)):
        yield chunk


def _planned(kind: str, names: Sequence[str], now: datetime) -> PlannedBatch:
    reasons = {name: unsafe_reason(name) for name in names}
    keys = tuple(name for name in names if reasons[name] is None)
    unsafe = tuple((printable_key(n), r) for n, r in reasons.items() if r is not None)
    members = keys + tuple(key for key, _ in unsafe)
    return PlannedBatch(new_batch_id(members, now), kind, keys, unsafe)


def claim_planned(store: ObjectStore, catalog: Catalog, batch: PlannedBatch) -> BatchManifest:
    """Claim a planned batch outside Dagster (`aindex demo`, tests): see claim_batch_members."""
    return claim_batch_members(
        store, catalog, batch.batch_id, batch.kind, batch.keys, dict(batch.unsafe)
    )


def claim_batch_members(
    store: ObjectStore,
    catalog: Catalog,
    batch_id: str,
    kind: str,
    keys: Sequence[str] = (),
    unsafe: Mapping[str, str] | None = None,
) -> BatchManifest:
    """Claim ``keys`` (and refuse ``unsafe``) for this batch; its manifest, also written.

    Called by the run's first step. Each key is claimed by a catalog insert that only one
    batch can win; the winner moves the object out of the inbox, a loser leaves it to the
    batch that has it. Safe to repeat: a re-run (with or without ``keys``) finishes the
    moves its claims started, and the manifest always lists every file the batch holds.
    """
    prefix = inbox_prefix(kind)
    safe, refused = _sorted_members(keys, unsafe or {})
    for key in safe:
        catalog.claim_inbox_key(kind, key, batch_id, claimed_key(batch_id, key, prefix))
    for key, reason in refused.items():
        catalog.claim_inbox_key(kind, key, batch_id, None, reason=reason)
    for claim in catalog.inbox_claims(batch_id):
        if claim.status == "claimed":
            _finish_move(store, catalog, claim)
    claims = catalog.inbox_claims(batch_id)
    if not claims and not keys and not unsafe:
        return read_manifest(store, batch_id)  # a batch planned before claims moved files
    manifest = _manifest(batch_id, kind, claims)
    write_manifest(store, manifest)
    return manifest


def _sorted_members(
    keys: Sequence[str], unsafe: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """Keys the store can move, and refused names (printable) with their reasons.

    Keys are checked again here: a run's keys may have been typed into the launchpad.
    """
    safe, refused = [], dict(unsafe)
    for key in keys:
        reason = unsafe_reason(key)
        if reason is None:
            safe.append(key)
        else:
            refused[printable_key(key)] = reason
    return safe, refused


def _finish_move(store: ObjectStore, catalog: Catalog, claim: InboxClaimRecord) -> None:
    """Copy the object to its claimed key, delete it from the inbox, record the move.

    Every step may be repeated after a crash: the copy is redone while the inbox object
    exists, and an object gone from the inbox but present at its claimed key was moved.
    """
    target = claim.claimed_key
    if target is None:  # only refused names have none, and they are never moved
        return
    try:
        copy_object(store, store, claim.source_key, target)
    except ObjectNotFound:
        if not store.exists(target):
            # Removed from the inbox before anyone copied it: nothing to claim any more.
            catalog.release_inbox_claim(claim.inbox, claim.source_key, claim.batch_id)
            return
    store.delete(claim.source_key)
    catalog.finish_inbox_claim(claim.inbox, claim.source_key, claim.batch_id)


def _manifest(batch_id: str, kind: str, claims: Sequence[InboxClaimRecord]) -> BatchManifest:
    moved = [c for c in claims if c.status == "moved" and c.claimed_key]
    rejected = [c for c in claims if c.status == "rejected"]
    created = min((c.created_at for c in claims), default=datetime.now(UTC))
    return BatchManifest(
        batch_id=batch_id,
        kind=kind,
        source_keys=tuple(str(c.claimed_key) for c in moved),
        created_at=created.isoformat(),
        inbox_keys=tuple(c.source_key for c in moved),
        rejected=tuple((c.source_key, c.reason or "refused") for c in rejected),
    )
