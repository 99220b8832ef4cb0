"""Copy thresholds set for a target false-positive rate: the target, and the measured
true- and false-positive rates; the precision target becomes optional.

Rows recorded before keep their `target_precision` and have no FPR columns: detection
looks thresholds up by target FPR, so it never uses them (materialize `copy_threshold`
once after upgrading).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


@contextmanager
def verdict_links_set_aside() -> Iterator[None]:
    """On SQLite, unlink verdicts from their thresholds while the table is recreated.

    SQLite cannot change a column's NULL constraint in place: the batch operation copies
    `copy_thresholds` into a new table and drops the old one, and with foreign keys on
    (the catalog turns them on, and a pragma cannot change inside the migration's
    transaction) dropping a table that verdicts point to fails. Ids are kept by the copy,
    so the links are put back afterwards. PostgreSQL alters the table in place.
    """
    if op.get_bind().dialect.name != "sqlite":
        yield
        return
    op.execute(
        sa.text(
            "CREATE TEMPORARY TABLE verdict_threshold_links AS SELECT id, threshold_id "
            "FROM copy_detections WHERE threshold_id IS NOT NULL"
        )
    )
    op.execute(sa.text("UPDATE copy_detections SET threshold_id = NULL"))
    yield
    op.execute(
        sa.text(
            "UPDATE copy_detections SET threshold_id = (SELECT l.threshold_id FROM "
            "verdict_threshold_links AS l WHERE l.id = copy_detections.id) "
            "WHERE id IN (SELECT id FROM verdict_threshold_links)"
        )
    )
    op.execute(sa.text("DROP TABLE verdict_threshold_links"))


def upgrade() -> None:
    with (
        verdict_links_set_aside(),
        op.batch_alter_table("copy_thresholds", schema=None) as batch_op,
    ):
        batch_op.add_column(sa.Column("target_fpr", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("tpr", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("fpr", sa.Double(), nullable=True))
        batch_op.alter_column("target_precision", existing_type=sa.Double(), nullable=True)


def downgrade() -> None:
    # Thresholds set for an FPR have no precision target: they and their verdicts' links go.
    op.execute(
        sa.text(
            "UPDATE copy_detections SET threshold_id = NULL WHERE threshold_id IN "
            "(SELECT id FROM copy_thresholds WHERE target_precision IS NULL)"
        )
    )
    op.execute(sa.text("DELETE FROM copy_thresholds WHERE target_precision IS NULL"))
    with (
        verdict_links_set_aside(),
        op.batch_alter_table("copy_thresholds", schema=None) as batch_op,
    ):
        batch_op.alter_column("target_precision", existing_type=sa.Double(), nullable=False)
        batch_op.drop_column("fpr")
        batch_op.drop_column("tpr")
        batch_op.drop_column("target_fpr")
