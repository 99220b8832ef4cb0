"""What the catalog returns: frozen dataclasses detached from any session."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aindex_assets.storage.catalog.models import (
    Base,
)


@dataclass(frozen=True)
class BatchRecord:
    id: str
    kind: str
    status: str
    n_files: int
    source_prefix: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ImageRecord:
    id: int
    content_hash: str
    source_key: str
    original_key: str
    batch_id: str
    size_bytes: int
    format: str
    width: int
    height: int
    status: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class RejectedFileRecord:
    batch_id: str
    source_key: str
    content_hash: str | None
    reason: str
    created_at: datetime


@dataclass(frozen=True)
class ExtractorRecord:
    identity: str
    spec: str
    dim: int
    input_size: int
    details: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class IndexVersionRecord:
    id: int
    factory: str
    metric: str
    dim: int
    extractor_identity: str
    n_train: int
    training_set: dict[str, Any]
    object_key: str | None
    created_at: datetime
    activated_at: datetime | None
    retired_at: datetime | None
    retired_by: int | None
    is_active: bool


@dataclass(frozen=True)
class ActivationRecord:
    image_id: int
    index_version: int
    extractor_identity: str
    params: dict[str, Any]
    psnr: float
    ssim: float
    linf: float
    distance_before: float
    distance_after: float
    object_key: str
    created_at: datetime


@dataclass(frozen=True)
class ShardRecord:
    batch_id: str
    index_version: int
    object_key: str
    n_vectors: int
    ids_checksum: str
    created_at: datetime


@dataclass(frozen=True)
class ServedIndexRecord:
    id: int
    index_version: int
    object_key: str
    ntotal: int
    batch_ids: list[str]
    created_at: datetime
    is_current: bool


@dataclass(frozen=True)
class ReportRowRecord:
    edit: str
    variant: str
    n: int
    recall_at_1: float
    recall_at_10: float | None = None
    mrr: float | None = None
    micro_ap: float | None = None


@dataclass(frozen=True)
class ReportRecord:
    id: int
    batch_id: str
    kind: str
    payload: dict[str, Any]
    object_key: str | None
    created_at: datetime
    rows: tuple[ReportRowRecord, ...]


@dataclass(frozen=True)
class CopyDetectionRecord:
    id: int
    batch_id: str
    query_key: str
    query_hash: str | None
    image_id: int | None
    score: float | None
    is_copy: bool
    threshold: float
    index_version: int | None
    created_at: datetime
    rank: int | None
    matches: list[Any] | None
    reason: str | None
    threshold_id: int | None


@dataclass(frozen=True)
class CopyThresholdRecord:
    id: int
    index_version: int
    served_index_id: int
    metric: str
    k: int
    nprobe: int
    target_precision: float | None
    threshold: float
    reached: bool
    precision: float | None
    recall: float | None
    n_matching: int
    n_non_matching: int
    details: dict[str, Any]
    created_at: datetime
    target_fpr: float | None = None
    tpr: float | None = None
    fpr: float | None = None

    @property
    def resolved(self) -> bool:
        """Whether the target false-positive rate was resolved (False for precision rows)."""
        return self.target_fpr is not None and self.reached


@dataclass(frozen=True)
class InboxClaimRecord:
    inbox: str
    source_key: str
    batch_id: str
    claimed_key: str | None
    status: str
    reason: str | None
    created_at: datetime
    updated_at: datetime


R = TypeVar("R")


def _record(cls: type[R], row: Base, **extra: Any) -> R:
    values = {f.name: getattr(row, f.name) for f in dataclasses.fields(cls) if f.name not in extra}  # type: ignore[arg-type]
    for name, value in values.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            values[name] = value.replace(tzinfo=UTC)  # SQLite drops the zone; values are UTC
    return cls(**values, **extra)
