"""The catalog's tables as SQLAlchemy 2 models (the migrations create the same schema)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

IMAGE_STATUSES = ("registered", "rejected", "embedded", "activated", "indexed")
# A batch's stages in order; `failed` marks the last run of it that failed.
BATCH_STATUSES = ("open", "ingested", "embedded", "activated", "indexed", "reported", "failed")
FAILED_BATCH = "failed"
REPORT_VARIANTS = ("passive", "active")
# Reason of a rejected-file row that records a duplicate upload ("duplicate of image 12 ...").
DUPLICATE_REASON_PREFIX = "duplicate of image "
SQLITE_BUSY_TIMEOUT_MS = 30_000
# pg_advisory_xact_lock keys: a fixed namespace plus a CRC of the lock name.
_ADVISORY_NAMESPACE = 0x41494458  # "AIDX"

# BIGINT on PostgreSQL; INTEGER on SQLite, where only "INTEGER PRIMARY KEY" aliases the rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy's declared class attribute)
        dict[str, Any]: sa.JSON(),
        list[Any]: sa.JSON(),
        datetime: sa.DateTime(timezone=True),
    }


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    status: Mapped[str] = mapped_column(sa.String(32), default="open")
    n_files: Mapped[int] = mapped_column(default=0)
    source_prefix: Mapped[str] = mapped_column(sa.String(1024), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        sa.Index("ix_images_batch_status", "batch_id", "status"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    content_hash: Mapped[str] = mapped_column(sa.String(128), unique=True)
    source_key: Mapped[str] = mapped_column(sa.String(1024))
    original_key: Mapped[str] = mapped_column(sa.String(1024))
    batch_id: Mapped[str] = mapped_column(sa.ForeignKey("batches.id"))
    size_bytes: Mapped[int] = mapped_column(sa.BigInteger)
    format: Mapped[str] = mapped_column(sa.String(16))
    width: Mapped[int]
    height: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(16), default="registered")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class RejectedFile(Base):
    __tablename__ = "rejected_files"
    __table_args__ = (sa.UniqueConstraint("batch_id", "source_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(sa.ForeignKey("batches.id"))
    source_key: Mapped[str] = mapped_column(sa.String(1024))
    content_hash: Mapped[str | None] = mapped_column(sa.String(128))
    reason: Mapped[str] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Extractor(Base):
    __tablename__ = "extractors"

    identity: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    spec: Mapped[str] = mapped_column(sa.String(1024))
    dim: Mapped[int]
    input_size: Mapped[int]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IndexVersion(Base):
    __tablename__ = "index_versions"
    __table_args__ = (
        # At most one active version, enforced by the database itself.
        sa.Index(
            "uq_index_versions_one_active",
            "is_active",
            unique=True,
            postgresql_where=sa.text("is_active"),
            sqlite_where=sa.text("is_active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    factory: Mapped[str] = mapped_column(sa.String(256))
    metric: Mapped[str] = mapped_column(sa.String(16))
    dim: Mapped[int]
    extractor_identity: Mapped[str] = mapped_column(sa.ForeignKey("extractors.identity"))
    n_train: Mapped[int]
    training_set: Mapped[dict[str, Any]] = mapped_column(default=dict)
    object_key: Mapped[str | None] = mapped_column(sa.String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    activated_at: Mapped[datetime | None]
    retired_at: Mapped[datetime | None]
    retired_by: Mapped[int | None] = mapped_column(sa.ForeignKey("index_versions.id"))
    is_active: Mapped[bool] = mapped_column(default=False)


class Activation(Base):
    __tablename__ = "activations"
    __table_args__ = (sa.UniqueConstraint("image_id", "index_version"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(sa.ForeignKey("images.id"))
    index_version: Mapped[int] = mapped_column(sa.ForeignKey("index_versions.id"))
    extractor_identity: Mapped[str] = mapped_column(sa.String(128))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    psnr: Mapped[float]
    ssim: Mapped[float]
    linf: Mapped[float]
    distance_before: Mapped[float]
    distance_after: Mapped[float]
    object_key: Mapped[str] = mapped_column(sa.String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IndexShard(Base):
    __tablename__ = "index_shards"
    __table_args__ = (sa.UniqueConstraint("batch_id", "index_version"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(sa.ForeignKey("batches.id"))
    index_version: Mapped[int] = mapped_column(sa.ForeignKey("index_versions.id"))
    object_key: Mapped[str] = mapped_column(sa.String(1024))
    n_vectors: Mapped[int]
    ids_checksum: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ServedIndex(Base):
    __tablename__ = "served_indexes"
    __table_args__ = (
        sa.Index(
            "uq_served_indexes_one_current",
            "index_version",
            unique=True,
            postgresql_where=sa.text("is_current"),
            sqlite_where=sa.text("is_current"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    index_version: Mapped[int] = mapped_column(sa.ForeignKey("index_versions.id"))
    object_key: Mapped[str] = mapped_column(sa.String(1024))
    ntotal: Mapped[int] = mapped_column(sa.BigInteger)
    batch_ids: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    is_current: Mapped[bool] = mapped_column(default=False)


class Report(Base):
    __tablename__ = "reports"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    batch_id: Mapped[str] = mapped_column(sa.ForeignKey("batches.id"), index=True)
    kind: Mapped[str] = mapped_column(sa.String(32))
    payload: Mapped[dict[str, Any]]
    object_key: Mapped[str | None] = mapped_column(sa.String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReportRow(Base):
    __tablename__ = "report_rows"
    __table_args__ = (sa.UniqueConstraint("report_id", "edit", "variant"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    report_id: Mapped[int] = mapped_column(sa.ForeignKey("reports.id"))
    edit: Mapped[str] = mapped_column(sa.String(128))
    variant: Mapped[str] = mapped_column(sa.String(16))
    n: Mapped[int]
    recall_at_1: Mapped[float]
    recall_at_10: Mapped[float | None]
    mrr: Mapped[float | None]
    micro_ap: Mapped[float | None]


class CopyDetection(Base):
    __tablename__ = "copy_detections"
    __table_args__ = (sa.UniqueConstraint("batch_id", "query_key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(sa.ForeignKey("batches.id"))
    query_key: Mapped[str] = mapped_column(sa.String(1024))
    query_hash: Mapped[str | None] = mapped_column(sa.String(128))
    image_id: Mapped[int | None] = mapped_column(sa.ForeignKey("images.id"))
    score: Mapped[float | None]
    is_copy: Mapped[bool]
    threshold: Mapped[float]
    index_version: Mapped[int | None] = mapped_column(sa.ForeignKey("index_versions.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Added by migration 0002: the top-k results, a rejected file's reason, the calibration.
    rank: Mapped[int | None]
    matches: Mapped[list[Any] | None]
    reason: Mapped[str | None] = mapped_column(sa.Text)
    threshold_id: Mapped[int | None] = mapped_column(sa.ForeignKey("copy_thresholds.id"))


class CopyThreshold(Base):
    """A copy / not-a-copy threshold calibrated for one served index and search setting.

    Since migration 0004 a threshold is set for a target false-positive rate
    (`target_fpr`) with the measured `tpr` and `fpr`; `reached` then says whether the rate
    was resolved (enough non-matching queries), `recall` repeats the TPR and `precision`
    is that of the calibration pool. Rows recorded before it have a `target_precision`
    and no FPR columns; detection never uses them (it looks thresholds up by target FPR).
    """

    __tablename__ = "copy_thresholds"
    __table_args__ = (sa.Index("ix_copy_thresholds_served", "served_index_id"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    index_version: Mapped[int] = mapped_column(sa.ForeignKey("index_versions.id"))
    served_index_id: Mapped[int] = mapped_column(sa.ForeignKey("served_indexes.id"))
    metric: Mapped[str] = mapped_column(sa.String(16))
    k: Mapped[int]
    nprobe: Mapped[int]
    target_precision: Mapped[float | None]
    threshold: Mapped[float]
    reached: Mapped[bool]
    precision: Mapped[float | None]
    recall: Mapped[float | None]
    n_matching: Mapped[int]
    n_non_matching: Mapped[int]
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Added by migration 0004: the target false-positive rate and the measured rates.
    target_fpr: Mapped[float | None]
    tpr: Mapped[float | None]
    fpr: Mapped[float | None]


class IdCounter(Base):
    """Ids handed out before their row exists (object keys carry them)."""

    __tablename__ = "id_counters"

    name: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    value: Mapped[int] = mapped_column(sa.BigInteger, default=0)


CLAIM_STATUSES = ("claimed", "moved", "rejected")
# A claim is open until its object has left the inbox: at most one open claim per inbox key.
OPEN_CLAIM = sa.text("status <> 'moved'")


class InboxClaim(Base):
    """An inbox object claimed by one batch (see `services/inbox.py` for the protocol).

    ``claimed``: the batch owns the key and is moving the object to ``claimed_key``;
    ``moved``: the object is at ``claimed_key`` and gone from the inbox (a later upload under
    the same key is a new file); ``rejected``: a name the store cannot address, kept out of
    every later batch. Keys are compared through ``key_hash`` (SHA-256 of the key), so a
    long name never overflows a PostgreSQL index entry.
    """

    __tablename__ = "inbox_claims"
    __table_args__ = (
        sa.Index(
            "uq_inbox_claims_one_open",
            "inbox",
            "key_hash",
            unique=True,
            postgresql_where=OPEN_CLAIM,
            sqlite_where=OPEN_CLAIM,
        ),
        sa.Index("ix_inbox_claims_batch", "batch_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    inbox: Mapped[str] = mapped_column(sa.String(32))
    source_key: Mapped[str] = mapped_column(sa.Text)
    key_hash: Mapped[str] = mapped_column(sa.String(64))
    batch_id: Mapped[str] = mapped_column(sa.String(128))
    claimed_key: Mapped[str | None] = mapped_column(sa.String(1024))
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# ---------------------------------------------------------------------------- records
