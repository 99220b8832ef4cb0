"""Copy detection: calibrated thresholds, and the top-k matches, rank, rejection reason and
calibration of each verdict.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

THRESHOLD_FK = "fk_copy_detections_threshold_id_copy_thresholds"


def upgrade() -> None:
    op.create_table(
        "copy_thresholds",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("index_version", sa.Integer(), nullable=False),
        sa.Column("served_index_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=16), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("nprobe", sa.Integer(), nullable=False),
        sa.Column("target_precision", sa.Double(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("reached", sa.Boolean(), nullable=False),
        sa.Column("precision", sa.Double(), nullable=True),
        sa.Column("recall", sa.Double(), nullable=True),
        sa.Column("n_matching", sa.Integer(), nullable=False),
        sa.Column("n_non_matching", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["index_version"], ["index_versions.id"]),
        sa.ForeignKeyConstraint(["served_index_id"], ["served_indexes.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("copy_thresholds", schema=None) as batch_op:
        batch_op.create_index("ix_copy_thresholds_served", ["served_index_id"], unique=False)
    # Nullable columns: verdicts recorded before this migration keep working.
    with op.batch_alter_table("copy_detections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("rank", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("matches", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("threshold_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(THRESHOLD_FK, "copy_thresholds", ["threshold_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("copy_detections", schema=None) as batch_op:
        batch_op.drop_constraint(THRESHOLD_FK, type_="foreignkey")
        batch_op.drop_column("threshold_id")
        batch_op.drop_column("reason")
        batch_op.drop_column("matches")
        batch_op.drop_column("rank")
    with op.batch_alter_table("copy_thresholds", schema=None) as batch_op:
        batch_op.drop_index("ix_copy_thresholds_served")
    op.drop_table("copy_thresholds")
