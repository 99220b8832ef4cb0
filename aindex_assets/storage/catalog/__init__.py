"""The metadata catalog: images, batches, index versions, activations, shards, reports.

SQLAlchemy 2 models on SQLite (embedded default) or PostgreSQL (production), with
Alembic migrations applied by :meth:`Catalog.open`. The :class:`Catalog` repository
is the only way in: every method is one transaction, writes are idempotent where a
re-run could repeat them, and results are frozen dataclasses detached from any
session, so callers never hold a connection.

Concurrency: inserts that several processes can race on use the dialect's
``INSERT ... ON CONFLICT``; pointer switches (active index version, current served
index) and id allocation are serialised (PostgreSQL advisory locks; on SQLite every
write transaction is ``BEGIN IMMEDIATE`` in WAL mode with a busy timeout) and
protected by partial unique indexes, so a race fails loudly instead of leaving two
"current" rows.

``images.id`` is the FAISS id of the image: it is never reused (SQLite
``AUTOINCREMENT``, a PostgreSQL identity sequence).
"""

from aindex_assets.storage.catalog.models import (
    BATCH_STATUSES,
    CLAIM_STATUSES,
    DUPLICATE_REASON_PREFIX,
    FAILED_BATCH,
    IMAGE_STATUSES,
    OPEN_CLAIM,
    REPORT_VARIANTS,
    SQLITE_BUSY_TIMEOUT_MS,
    Activation,
    Base,
    Batch,
    BigId,
    CopyDetection,
    CopyThreshold,
    Extractor,
    IdCounter,
    Image,
    InboxClaim,
    IndexShard,
    IndexVersion,
    RejectedFile,
    Report,
    ReportRow,
    ServedIndex,
    utcnow,
)
from aindex_assets.storage.catalog.records import (
    ActivationRecord,
    BatchRecord,
    CopyDetectionRecord,
    CopyThresholdRecord,
    ExtractorRecord,
    ImageRecord,
    InboxClaimRecord,
    IndexVersionRecord,
    RejectedFileRecord,
    ReportRecord,
    ReportRowRecord,
    ServedIndexRecord,
    ShardRecord,
)
from aindex_assets.storage.catalog.repository import (
    Catalog,
    create_catalog_engine,
    ids_checksum,
)

__all__ = [
    "BATCH_STATUSES",
    "CLAIM_STATUSES",
    "DUPLICATE_REASON_PREFIX",
    "FAILED_BATCH",
    "IMAGE_STATUSES",
    "OPEN_CLAIM",
    "REPORT_VARIANTS",
    "SQLITE_BUSY_TIMEOUT_MS",
    "Activation",
    "ActivationRecord",
    "Base",
    "Batch",
    "BatchRecord",
    "BigId",
    "Catalog",
    "CopyDetection",
    "CopyDetectionRecord",
    "CopyThreshold",
    "CopyThresholdRecord",
    "Extractor",
    "ExtractorRecord",
    "IdCounter",
    "Image",
    "ImageRecord",
    "InboxClaim",
    "InboxClaimRecord",
    "IndexShard",
    "IndexVersion",
    "IndexVersionRecord",
    "RejectedFile",
    "RejectedFileRecord",
    "Report",
    "ReportRecord",
    "ReportRow",
    "ReportRowRecord",
    "ServedIndex",
    "ServedIndexRecord",
    "ShardRecord",
    "create_catalog_engine",
    "ids_checksum",
    "utcnow",
]
