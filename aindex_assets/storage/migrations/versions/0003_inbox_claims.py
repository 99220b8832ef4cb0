"""Inbox claims: every inbox key a batch claimed, where its object went, or why it was refused.

Replaces the key-order cursors (the ``cursors`` table stays, unused, for older code).
At most one open claim (``status <> 'moved'``) may exist per inbox key: two claimers
racing for one file are decided by this partial unique index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# BIGINT on PostgreSQL; on SQLite only INTEGER PRIMARY KEY aliases the rowid.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
OPEN_CLAIM = sa.text("status <> 'moved'")

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "inbox_claims",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("inbox", sa.String(length=32), nullable=False),
        sa.Column("source_key", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("batch_id", sa.String(length=128), nullable=False),
        sa.Column("claimed_key", sa.String(length=1024), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("inbox_claims", schema=None) as batch_op:
        batch_op.create_index("ix_inbox_claims_batch", ["batch_id"], unique=False)
        batch_op.create_index(
            "uq_inbox_claims_one_open",
            ["inbox", "key_hash"],
            unique=True,
            postgresql_where=OPEN_CLAIM,
            sqlite_where=OPEN_CLAIM,
        )


def downgrade() -> None:
    with op.batch_alter_table("inbox_claims", schema=None) as batch_op:
        batch_op.drop_index("uq_inbox_claims_one_open")
        batch_op.drop_index("ix_inbox_claims_batch")
    op.drop_table("inbox_claims")
