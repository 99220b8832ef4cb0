"""The `Catalog` repository: every method one transaction (see the package docstring)."""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

from aindex_assets.settings import normalize_database_url, redact_url
from aindex_assets.storage.catalog.models import (
    _ADVISORY_NAMESPACE,
    BATCH_STATUSES,
    DUPLICATE_REASON_PREFIX,
    FAILED_BATCH,
    IMAGE_STATUSES,
    REPORT_VARIANTS,
    SQLITE_BUSY_TIMEOUT_MS,
    Activation,
    Base,
    Batch,
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
    _record,
)
from aindex_assets.storage.keys import check_batch_id


def ids_checksum(ids: Iterable[int]) -> str:
    """SHA-256 of the ids as little-endian int64, in the order given."""
    digest = hashlib.sha256()
    for value in ids:
        digest.update(int(value).to_bytes(8, "little", signed=True))
    return digest.hexdigest()


def _key_hash(source_key: str) -> str:
    """The indexed form of an inbox key (keys are compared by their SHA-256)."""
    return hashlib.sha256(source_key.encode("utf-8")).hexdigest()


def _row_values(row: Any) -> dict[str, Any]:
    """A report row given as a mapping, a dataclass or any object with the attributes."""
    names = [f.name for f in dataclasses.fields(ReportRowRecord)]
    if isinstance(row, Mapping):
        values = {name: row.get(name) for name in names}
    else:
        values = {name: getattr(row, name, None) for name in names}
    if values["variant"] not in REPORT_VARIANTS:
        raise ValueError(f"report row variant must be one of {REPORT_VARIANTS}: {values}")
    if values["edit"] is None or values["n"] is None or values["recall_at_1"] is None:
        raise ValueError(f"report row needs edit, n and recall_at_1: {values}")
    return values


# ---------------------------------------------------------------------------- engine


def create_catalog_engine(url: str) -> Engine:
    """An engine with the settings concurrency needs (WAL and busy timeout on SQLite)."""
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        path = sa.make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Pooled connections cross threads (a code server's sensor ticks share one cached
        # catalog); the pool hands each to one thread at a time.
        engine = sa.create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        )
        _configure_sqlite(engine)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event own transaction start (see below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # A deferred transaction that reads then writes can fail with SQLITE_BUSY without
        # waiting; writers take the lock up front instead (readers never block in WAL).
        immediate = connection.get_execution_options().get("aindex_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Catalog:
    """Repository over the catalog database; open it with :meth:`open`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(aindex_write=True)

    @classmethod
    def open(cls, url: str, migrate: bool = True) -> Catalog:
        """Connect, and bring the schema to the latest migration (idempotent, race-safe)."""
        catalog = cls(create_catalog_engine(url))
        if migrate:
            catalog.migrate()
        return catalog

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def describe(self) -> str:
        return f"{self.dialect} catalog {redact_url(self.engine.url.render_as_string(False))}"

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        """Apply pending Alembic migrations; concurrent callers wait for each other."""
        from aindex_assets.storage.migrations import upgrade_to_head

        with self._writer.connect() as connection, connection.begin():
            self._lock(connection, "migrate")
            upgrade_to_head(connection)

    def schema_revision(self) -> str | None:
        from aindex_assets.storage.migrations import current_revision

        with self.engine.connect() as connection:
            return current_revision(connection)

    # -- transactions -----------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    def _lock(self, target: Session | Connection, name: str) -> None:
        """Serialise a critical section across processes (SQLite writers already are)."""
        if self.dialect == "postgresql":
            key = (_ADVISORY_NAMESPACE << 32) | zlib.crc32(name.encode())
            target.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def _insert(self, model: type[Base]) -> Any:
        dialect_insert = postgresql.insert if self.dialect == "postgresql" else sqlite.insert
        return dialect_insert(model)

    # -- batches ----------------------------------------------------------------------

    def create_batch(
        self, batch_id: str, kind: str, source_prefix: str = "", n_files: int = 0
    ) -> None:
        """Record a batch; a no-op if it exists (re-runs keep the first record)."""
        check_batch_id(batch_id)
        statement = (
            self._insert(Batch)
            .values(
                id=batch_id,
                kind=kind,
                status="open",
                n_files=n_files,
                source_prefix=source_prefix,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        with self._write() as session:
            session.execute(statement)

    def batch(self, batch_id: str) -> BatchRecord | None:
        with self._read() as session:
            row = session.get(Batch, batch_id)
            return _record(BatchRecord, row) if row else None

    def batches(self, kind: str | None = None) -> list[BatchRecord]:
        query = sa.select(Batch).order_by(Batch.id)
        if kind is not None:
            query = query.where(Batch.kind == kind)
        with self._read() as session:
            return [_record(BatchRecord, row) for row in session.scalars(query)]

    def advance_batch_status(self, batch_id: str, status: str, from_failed: bool = True) -> bool:
        """Move a batch forward along BATCH_STATUSES, or to `failed`; True if it moved.

        A step re-run on a batch that went further (a re-materialized report, a run retried
        from its failed step) never moves it back; a failed batch moves on when a step of
        its own re-run succeeds (`from_failed=False`: work done for other batches, which
        must not hide the failure). One UPDATE, so concurrent steps cannot interleave.
        """
        if status not in BATCH_STATUSES:
            raise ValueError(f"batch status {status!r} is not one of {BATCH_STATUSES}")
        if status == FAILED_BATCH:
            earlier = [s for s in BATCH_STATUSES if s != FAILED_BATCH]
        else:
            earlier = list(BATCH_STATUSES[: BATCH_STATUSES.index(status)])
            earlier += [FAILED_BATCH] if from_failed else []
        statement = (
            sa.update(Batch)
            .where(Batch.id == batch_id, Batch.status.in_(earlier))
            .values(status=status, updated_at=utcnow())
        )
        with self._write() as session:
            return session.execute(statement).rowcount > 0

    # -- images -----------------------------------------------------------------------

    def register_image(
        self,
        content_hash: str,
        source_key: str,
        original_key: str,
        batch_id: str,
        size_bytes: int,
        format: str,
        width: int,
        height: int,
    ) -> tuple[int, bool]:
        """(image id, created): the same bytes registered again keep their first id."""
        now = utcnow()
        statement = (
            self._insert(Image)
            .values(
                content_hash=content_hash,
                source_key=source_key,
                original_key=original_key,
                batch_id=batch_id,
                size_bytes=size_bytes,
                format=format,
                width=width,
                height=height,
                status="registered",
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["content_hash"])
        )
        with self._write() as session:
            created = session.execute(statement).rowcount == 1
            image_id = session.scalar(sa.select(Image.id).where(Image.content_hash == content_hash))
        if image_id is None:  # pragma: no cover - the row exists whichever insert won
            raise RuntimeError(f"image {content_hash} vanished during registration")
        return int(image_id), created

    def image(self, image_id: int) -> ImageRecord | None:
        with self._read() as session:
            row = session.get(Image, image_id)
            return _record(ImageRecord, row) if row else None

    def image_by_hash(self, content_hash: str) -> ImageRecord | None:
        with self._read() as session:
            row = session.scalar(sa.select(Image).where(Image.content_hash == content_hash))
            return _record(ImageRecord, row) if row else None

    def images_by_ids(self, ids: Sequence[int]) -> list[ImageRecord]:
        """The images with these ids, in the order given (unknown ids raise LookupError)."""
        wanted = [int(i) for i in ids]
        with self._read() as session:
            rows = {
                row.id: row for row in session.scalars(sa.select(Image).where(Image.id.in_(wanted)))
            }
            missing = sorted(set(wanted) - rows.keys())
            if missing:
                raise LookupError(f"no images with ids {missing[:20]} in the catalog")
            return [_record(ImageRecord, rows[i]) for i in wanted]

    def images_in_batch(self, batch_id: str, status: str | None = None) -> list[ImageRecord]:
        """Images first registered by this batch, in id order."""
        query = sa.select(Image).where(Image.batch_id == batch_id).order_by(Image.id)
        if status is not None:
            query = query.where(Image.status == self._check_status(status))
        with self._read() as session:
            return [_record(ImageRecord, row) for row in session.scalars(query)]

    @staticmethod
    def _check_status(status: str) -> str:
        if status not in IMAGE_STATUSES:
            raise ValueError(f"image status {status!r} is not one of {IMAGE_STATUSES}")
        return status

    def set_status(self, image_ids: Sequence[int], status: str) -> int:
        """Set the status of these images in one transaction; returns the rows changed."""
        ids = [int(i) for i in image_ids]
        if not ids:
            return 0
        statement = (
            sa.update(Image)
            .where(Image.id.in_(ids))
            .values(status=self._check_status(status), updated_at=utcnow())
        )
        with self._write() as session:
            return session.execute(statement).rowcount

    def count_images(self, status: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(Image)
        if status is not None:
            query = query.where(Image.status == self._check_status(status))
        with self._read() as session:
            return int(session.scalar(query) or 0)

    def status_counts(self) -> dict[str, dict[str, int]]:
        """{batch id: {status: number of images}}: rejected files counted as ``rejected``,
        files whose bytes an earlier file registered as ``duplicate``."""
        counts: dict[str, dict[str, int]] = {}
        images = sa.select(Image.batch_id, Image.status, sa.func.count()).group_by(
            Image.batch_id, Image.status
        )
        is_duplicate = RejectedFile.reason.startswith(DUPLICATE_REASON_PREFIX, autoescape=True)
        rejected = sa.select(RejectedFile.batch_id, is_duplicate, sa.func.count()).group_by(
            RejectedFile.batch_id, is_duplicate
        )
        with self._read() as session:
            for batch_id, status, n in session.execute(images):
                counts.setdefault(batch_id, {})[status] = int(n)
            for batch_id, duplicate, n in session.execute(rejected):
                per_batch = counts.setdefault(batch_id, {})
                status = "duplicate" if duplicate else "rejected"
                per_batch[status] = per_batch.get(status, 0) + int(n)
        return counts

    # -- rejected files ---------------------------------------------------------------

    def reject_file(
        self, batch_id: str, source_key: str, reason: str, content_hash: str | None = None
    ) -> None:
        """Record why a file was refused; a re-run updates the reason instead of duplicating."""
        statement = self._insert(RejectedFile).values(
            batch_id=batch_id,
            source_key=source_key,
            content_hash=content_hash,
            reason=reason,
            created_at=utcnow(),
        )
        statement = statement.on_conflict_do_update(
            index_elements=["batch_id", "source_key"],
            set_={
                "reason": statement.excluded.reason,
                "content_hash": statement.excluded.content_hash,
            },
        )
        with self._write() as session:
            session.execute(statement)

    def record_duplicate(
        self, batch_id: str, source_key: str, image: ImageRecord, content_hash: str
    ) -> str:
        """Record that this batch's `source_key` holds the bytes of `image`; the reason.

        Kept with the rejected files (one row per batch and name, a re-run updates it), with
        a reason starting "duplicate of image <id>" that `status_counts` counts apart.
        """
        first = f"first ingested as {image.source_key}"
        where = "in this batch" if image.batch_id == batch_id else f"in batch {image.batch_id}"
        reason = f"{DUPLICATE_REASON_PREFIX}{image.id} ({first}, {where})"
        self.reject_file(batch_id, source_key, reason, content_hash=content_hash)
        return reason

    def rejected_in_batch(self, batch_id: str) -> list[RejectedFileRecord]:
        query = (
            sa.select(RejectedFile)
            .where(RejectedFile.batch_id == batch_id)
            .order_by(RejectedFile.source_key)
        )
        with self._read() as session:
            return [_record(RejectedFileRecord, row) for row in session.scalars(query)]

    # -- extractors -------------------------------------------------------------------

    def upsert_extractor(
        self,
        identity: str,
        spec: str,
        dim: int,
        input_size: int,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        statement = self._insert(Extractor).values(
            identity=identity,
            spec=spec,
            dim=dim,
            input_size=input_size,
            details=dict(details or {}),
            created_at=utcnow(),
        )
        statement = statement.on_conflict_do_update(
            index_elements=["identity"],
            set_={"spec": statement.excluded.spec, "details": statement.excluded.details},
        )
        with self._write() as session:
            session.execute(statement)

    def extractor(self, identity: str) -> ExtractorRecord | None:
        with self._read() as session:
            row = session.get(Extractor, identity)
            return _record(ExtractorRecord, row) if row else None

    # -- index versions ---------------------------------------------------------------

    def create_index_version(
        self,
        factory: str,
        metric: str,
        dim: int,
        extractor_identity: str,
        n_train: int,
        training_set: Mapping[str, Any] | None = None,
        object_key: str | None = None,
    ) -> int:
        """A new, inactive index version; :meth:`activate_index_version` makes it current."""
        row = IndexVersion(
            factory=factory,
            metric=metric,
            dim=dim,
            extractor_identity=extractor_identity,
            n_train=n_train,
            training_set=dict(training_set or {}),
            object_key=object_key,
            is_active=False,
            created_at=utcnow(),
        )
        with self._write() as session:
            session.add(row)
            session.flush()
            return int(row.id)

    def activate_index_version(self, version_id: int, object_key: str | None = None) -> None:
        """Make this version the active one and retire the previous, in one transaction.

        ``object_key`` (the trained index file) may be given here when it was written
        after the version row was created; a version without one cannot be activated.
        """
        now = utcnow()
        with self._write() as session:
            self._lock(session, "index_versions")
            row = session.get(IndexVersion, version_id)
            if row is None:
                raise LookupError(f"no index version {version_id} in the catalog")
            if object_key is not None:
                row.object_key = object_key
            if row.object_key is None:
                raise ValueError(f"index version {version_id} has no stored index object")
            if row.is_active:
                return
            if row.retired_at is not None:
                raise ValueError(
                    f"index version {version_id} was retired on {row.retired_at:%Y-%m-%d}: "
                    "train a new version instead of reviving an old one"
                )
            session.execute(
                sa.update(IndexVersion)
                .where(IndexVersion.is_active.is_(True))
                .values(is_active=False, retired_at=now, retired_by=version_id)
            )
            session.flush()
            row.is_active = True
            row.activated_at = now

    def active_index_version(self) -> IndexVersionRecord | None:
        query = sa.select(IndexVersion).where(IndexVersion.is_active.is_(True))
        with self._read() as session:
            row = session.scalar(query)
            return _record(IndexVersionRecord, row) if row else None

    def index_version(self, version_id: int) -> IndexVersionRecord | None:
        with self._read() as session:
            row = session.get(IndexVersion, version_id)
            return _record(IndexVersionRecord, row) if row else None

    def index_versions(self) -> list[IndexVersionRecord]:
        with self._read() as session:
            rows = session.scalars(sa.select(IndexVersion).order_by(IndexVersion.id))
            return [_record(IndexVersionRecord, row) for row in rows]

    # -- activations ------------------------------------------------------------------

    def record_activation(
        self,
        image_id: int,
        index_version: int,
        extractor_identity: str,
        params: Mapping[str, Any],
        psnr: float,
        ssim: float,
        linf: float,
        distance_before: float,
        distance_after: float,
        object_key: str,
    ) -> None:
        """Insert, or replace, the activation of an image for an index version."""
        values = {
            "extractor_identity": extractor_identity,
            "params": dict(params),
            "psnr": float(psnr),
            "ssim": float(ssim),
            "linf": float(linf),
            "distance_before": float(distance_before),
            "distance_after": float(distance_after),
            "object_key": object_key,
        }
        statement = self._insert(Activation).values(
            image_id=int(image_id), index_version=int(index_version), created_at=utcnow(), **values
        )
        statement = statement.on_conflict_do_update(
            index_elements=["image_id", "index_version"], set_=values
        )
        with self._write() as session:
            session.execute(statement)

    def activations(
        self, batch_id: str | None = None, index_version: int | None = None
    ) -> list[ActivationRecord]:
        """Activations, optionally of one batch's images and/or one index version, by image id."""
        query = sa.select(Activation).order_by(Activation.image_id, Activation.index_version)
        if batch_id is not None:
            query = query.join(Image, Image.id == Activation.image_id).where(
                Image.batch_id == batch_id
            )
        if index_version is not None:
            query = query.where(Activation.index_version == index_version)
        with self._read() as session:
            return [_record(ActivationRecord, row) for row in session.scalars(query)]

    # -- shards and the served index --------------------------------------------------

    def record_shard(
        self, batch_id: str, index_version: int, object_key: str, ids: Iterable[int]
    ) -> ShardRecord:
        """Record the shard of a batch for a version (a rebuild replaces the record)."""
        id_list = [int(i) for i in ids]
        values = {
            "object_key": object_key,
            "n_vectors": len(id_list),
            "ids_checksum": ids_checksum(id_list),
            "created_at": utcnow(),
        }
        statement = self._insert(IndexShard).values(
            batch_id=batch_id, index_version=int(index_version), **values
        )
        statement = statement.on_conflict_do_update(
            index_elements=["batch_id", "index_version"], set_=values
        )
        with self._write() as session:
            session.execute(statement)
        return ShardRecord(batch_id, int(index_version), **values)

    def shards(self, index_version: int) -> list[ShardRecord]:
        query = (
            sa.select(IndexShard)
            .where(IndexShard.index_version == index_version)
            .order_by(IndexShard.batch_id)
        )
        with self._read() as session:
            return [_record(ShardRecord, row) for row in session.scalars(query)]

    def _next_id(self, session: Session, name: str, table: type[Base]) -> int:
        """Allocate the next id of a counter, never below the table's largest id."""
        self._lock(session, f"counter:{name}")
        session.execute(self._insert(IdCounter).values(name=name, value=0).on_conflict_do_nothing())
        highest = session.scalar(sa.select(sa.func.max(table.id))) or 0  # type: ignore[attr-defined]
        current = session.scalar(sa.select(IdCounter.value).where(IdCounter.name == name)) or 0
        allocated = max(int(current), int(highest)) + 1
        session.execute(sa.update(IdCounter).where(IdCounter.name == name).values(value=allocated))
        return allocated

    def next_served_index_id(self) -> int:
        """Reserve an id for a served index whose object is about to be written."""
        with self._write() as session:
            return self._next_id(session, "served_indexes", ServedIndex)

    def set_served_index(
        self,
        index_version: int,
        object_key: str,
        ntotal: int,
        batch_ids: Sequence[str],
        served_id: int | None = None,
    ) -> int:
        """Record a new served index and make it current for its version, in one transaction."""
        with self._write() as session:
            self._lock(session, "served_indexes")
            if served_id is None:
                served_id = self._next_id(session, "served_indexes", ServedIndex)
            session.execute(
                sa.update(ServedIndex)
                .where(ServedIndex.index_version == index_version, ServedIndex.is_current.is_(True))
                .values(is_current=False)
            )
            session.add(
                ServedIndex(
                    id=int(served_id),
                    index_version=int(index_version),
                    object_key=object_key,
                    ntotal=int(ntotal),
                    batch_ids=list(batch_ids),
                    is_current=True,
                    created_at=utcnow(),
                )
            )
        return int(served_id)

    def current_served_index(self, index_version: int | None = None) -> ServedIndexRecord | None:
        """The served index in use for a version (default: the active version)."""
        with self._read() as session:
            if index_version is None:
                index_version = session.scalar(
                    sa.select(IndexVersion.id).where(IndexVersion.is_active.is_(True))
                )
                if index_version is None:
                    return None
            row = session.scalar(
                sa.select(ServedIndex).where(
                    ServedIndex.index_version == index_version, ServedIndex.is_current.is_(True)
                )
            )
            return _record(ServedIndexRecord, row) if row else None

    def served_indexes(self, index_version: int) -> list[ServedIndexRecord]:
        query = (
            sa.select(ServedIndex)
            .where(ServedIndex.index_version == index_version)
            .order_by(ServedIndex.id)
        )
        with self._read() as session:
            return [_record(ServedIndexRecord, row) for row in session.scalars(query)]

    # -- reports ----------------------------------------------------------------------

    def next_report_id(self) -> int:
        """Reserve an id for a report whose document is about to be written."""
        with self._write() as session:
            return self._next_id(session, "reports", Report)

    def record_report(
        self,
        batch_id: str,
        kind: str,
        payload: Mapping[str, Any],
        object_key: str | None,
        rows: Iterable[Any] = (),
        report_id: int | None = None,
    ) -> int:
        """Store an immutable report and its rows (mappings or objects with the row fields)."""
        row_values = [_row_values(row) for row in rows]
        with self._write() as session:
            if report_id is None:
                report_id = self._next_id(session, "reports", Report)
            elif session.get(Report, report_id) is not None:
                raise ValueError(f"report {report_id} already exists: reports are immutable")
            session.add(
                Report(
                    id=int(report_id),
                    batch_id=batch_id,
                    kind=kind,
                    payload=dict(payload),
                    object_key=object_key,
                    created_at=utcnow(),
                )
            )
            session.flush()
            session.add_all(ReportRow(report_id=report_id, **values) for values in row_values)
        return int(report_id)

    def report(self, report_id: int) -> ReportRecord | None:
        with self._read() as session:
            row = session.get(Report, report_id)
            return self._report_record(session, row) if row else None

    def reports(self, batch_id: str | None = None, kind: str | None = None) -> list[ReportRecord]:
        query = sa.select(Report).order_by(Report.id)
        if batch_id is not None:
            query = query.where(Report.batch_id == batch_id)
        if kind is not None:
            query = query.where(Report.kind == kind)
        with self._read() as session:
            return [self._report_record(session, row) for row in session.scalars(query).all()]

    @staticmethod
    def _report_record(session: Session, row: Report) -> ReportRecord:
        rows = session.scalars(
            sa.select(ReportRow).where(ReportRow.report_id == row.id).order_by(ReportRow.id)
        )
        return _record(ReportRecord, row, rows=tuple(_record(ReportRowRecord, r) for r in rows))

    # -- copy detections --------------------------------------------------------------

    def copy_detections(self, batch_id: str) -> list[CopyDetectionRecord]:
        query = (
            sa.select(CopyDetection)
            .where(CopyDetection.batch_id == batch_id)
            .order_by(CopyDetection.query_key)
        )
        with self._read() as session:
            return [_record(CopyDetectionRecord, row) for row in session.scalars(query)]

    def replace_copy_detections(
        self, batch_id: str, detections: Sequence[Mapping[str, Any]]
    ) -> int:
        """Replace every verdict of a query batch in one transaction (a re-run never duplicates).

        Each mapping holds ``query_key``, ``is_copy`` and ``threshold`` and optionally
        ``query_hash``, ``image_id``, ``score``, ``rank``, ``matches``, ``reason``,
        ``index_version`` and ``threshold_id``.
        """
        optional = ("query_hash", "image_id", "score", "rank", "matches", "reason")
        optional += ("index_version", "threshold_id")
        now = utcnow()
        rows = [
            CopyDetection(
                batch_id=batch_id,
                query_key=d["query_key"],
                is_copy=bool(d["is_copy"]),
                threshold=float(d["threshold"]),
                created_at=now,
                **{name: d.get(name) for name in optional},
            )
            for d in detections
        ]
        with self._write() as session:
            session.execute(sa.delete(CopyDetection).where(CopyDetection.batch_id == batch_id))
            session.add_all(rows)
        return len(rows)

    # -- copy thresholds --------------------------------------------------------------

    def record_copy_threshold(
        self,
        index_version: int,
        served_index_id: int,
        metric: str,
        k: int,
        nprobe: int,
        target_fpr: float,
        threshold: float,
        resolved: bool,
        tpr: float | None,
        fpr: float | None,
        precision: float | None,
        n_matching: int,
        n_non_matching: int,
        details: Mapping[str, Any] | None = None,
    ) -> CopyThresholdRecord:
        """Record a calibration; the latest one for a served index and setting is the one used.

        `resolved`: whether `n_non_matching` resolves `target_fpr` (stored as `reached`).
        """

        def number(value: float | None) -> float | None:
            return None if value is None else float(value)

        row = CopyThreshold(
            index_version=int(index_version),
            served_index_id=int(served_index_id),
            metric=metric,
            k=int(k),
            nprobe=int(nprobe),
            target_precision=None,
            target_fpr=float(target_fpr),
            threshold=float(threshold),
            reached=bool(resolved),
            tpr=number(tpr),
            fpr=number(fpr),
            precision=number(precision),
            recall=number(tpr),
            n_matching=int(n_matching),
            n_non_matching=int(n_non_matching),
            details=dict(details or {}),
            created_at=utcnow(),
        )
        with self._write() as session:
            session.add(row)
            session.flush()
            return _record(CopyThresholdRecord, row)

    def copy_threshold(
        self, served_index_id: int, k: int, nprobe: int, target_fpr: float
    ) -> CopyThresholdRecord | None:
        """The latest threshold for this served index, search setting and target FPR, if any."""
        query = (
            sa.select(CopyThreshold)
            .where(
                CopyThreshold.served_index_id == served_index_id,
                CopyThreshold.k == k,
                CopyThreshold.nprobe == nprobe,
                CopyThreshold.target_fpr == float(target_fpr),
            )
            .order_by(CopyThreshold.id.desc())
            .limit(1)
        )
        with self._read() as session:
            row = session.scalar(query)
            return _record(CopyThresholdRecord, row) if row else None

    def copy_thresholds(self) -> list[CopyThresholdRecord]:
        with self._read() as session:
            rows = session.scalars(sa.select(CopyThreshold).order_by(CopyThreshold.id))
            return [_record(CopyThresholdRecord, row) for row in rows]

    # -- inbox claims -----------------------------------------------------------------

    def claim_inbox_key(
        self,
        inbox: str,
        source_key: str,
        batch_id: str,
        claimed_key: str | None,
        reason: str | None = None,
    ) -> InboxClaimRecord | None:
        """Claim an inbox key for a batch; returns the claim that holds it now.

        The record's ``batch_id`` says who won: this batch, or another one whose open claim
        was there first (the insert of a loser does nothing, in one transaction on both
        dialects). ``reason`` claims it as ``rejected``. A key this batch already moved is
        not claimed again: a re-upload under that name is left to a later batch. None: the
        key was claimed and moved by another batch in the meantime.
        """
        digest = _key_hash(source_key)
        now = utcnow()
        mine = sa.select(InboxClaim).where(
            InboxClaim.inbox == inbox,
            InboxClaim.key_hash == digest,
            InboxClaim.batch_id == batch_id,
            InboxClaim.status == "moved",
        )
        insert = self._insert(InboxClaim).values(
            inbox=inbox,
            source_key=source_key,
            key_hash=digest,
            batch_id=check_batch_id(batch_id),
            claimed_key=claimed_key,
            status="rejected" if reason is not None else "claimed",
            reason=reason,
            created_at=now,
            updated_at=now,
        )
        with self._write() as session:
            done = session.scalars(mine.limit(1)).first()
            if done is not None:
                return _record(InboxClaimRecord, done)
            session.execute(insert.on_conflict_do_nothing())
            row = session.scalar(self._open_claim(inbox, digest))
            return _record(InboxClaimRecord, row) if row is not None else None

    @staticmethod
    def _open_claim(inbox: str, digest: str) -> sa.Select:
        return sa.select(InboxClaim).where(
            InboxClaim.inbox == inbox, InboxClaim.key_hash == digest, InboxClaim.status != "moved"
        )

    def finish_inbox_claim(self, inbox: str, source_key: str, batch_id: str) -> bool:
        """Mark this batch's claim moved (its object left the inbox); False if it held none."""
        return self._change_open_claim(inbox, source_key, batch_id, delete=False)

    def release_inbox_claim(self, inbox: str, source_key: str, batch_id: str) -> bool:
        """Drop this batch's unfinished claim (its object vanished before it could be moved)."""
        return self._change_open_claim(inbox, source_key, batch_id, delete=True)

    def _change_open_claim(self, inbox: str, source_key: str, batch_id: str, delete: bool) -> bool:
        where = (
            InboxClaim.inbox == inbox,
            InboxClaim.key_hash == _key_hash(source_key),
            InboxClaim.batch_id == batch_id,
            InboxClaim.status == "claimed",
        )
        statement = (
            sa.delete(InboxClaim).where(*where)
            if delete
            else sa.update(InboxClaim).where(*where).values(status="moved", updated_at=utcnow())
        )
        with self._write() as session:
            return session.execute(statement).rowcount == 1

    def inbox_claims(self, batch_id: str) -> list[InboxClaimRecord]:
        """Every claim of a batch, in the order it made them."""
        query = sa.select(InboxClaim).where(InboxClaim.batch_id == batch_id).order_by(InboxClaim.id)
        with self._read() as session:
            return [_record(InboxClaimRecord, row) for row in session.scalars(query)]

    def inbox_key_claims(self, inbox: str, source_key: str) -> list[InboxClaimRecord]:
        """The history of one inbox key: every batch that claimed it, oldest first."""
        query = (
            sa.select(InboxClaim)
            .where(InboxClaim.inbox == inbox, InboxClaim.key_hash == _key_hash(source_key))
            .order_by(InboxClaim.id)
        )
        with self._read() as session:
            return [_record(InboxClaimRecord, row) for row in session.scalars(query)]

    def open_inbox_claims(self, inbox: str, source_keys: Iterable[str]) -> set[str]:
        """Those of ``source_keys`` held by an open claim (being moved, or rejected)."""
        by_hash = {_key_hash(key): key for key in source_keys}
        held: set[str] = set()
        hashes = list(by_hash)
        with self._read() as session:
            for start in range(0, len(hashes), 500):  # bounded IN lists on both dialects
                chunk = hashes[start : start + 500]
                query = sa.select(InboxClaim.key_hash).where(
                    InboxClaim.inbox == inbox,
                    InboxClaim.key_hash.in_(chunk),
                    InboxClaim.status != "moved",
                )
                held.update(by_hash[h] for h in session.scalars(query))
        return held


__all__ = [
    "IMAGE_STATUSES",
    "ActivationRecord",
    "BatchRecord",
    "Catalog",
    "CopyDetectionRecord",
    "CopyThresholdRecord",
    "ExtractorRecord",
    "ImageRecord",
    "InboxClaimRecord",
    "IndexVersionRecord",
    "RejectedFileRecord",
    "ReportRecord",
    "ReportRowRecord",
    "ServedIndexRecord",
    "ShardRecord",
    "create_catalog_engine",
    "ids_checksum",
]
