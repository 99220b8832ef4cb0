"""Alembic migrations of the catalog, run from code (no alembic.ini needed).

``upgrade_to_head(connection)`` applies what is missing inside the caller's
transaction (the catalog takes a lock around it); the ``alembic`` command line
works too with ``-c`` pointing at a config whose ``script_location`` is this folder.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

MIGRATIONS_DIR = Path(__file__).parent


def alembic_config(connection: Connection | None = None) -> Config:
    """A Config built in code, so migrations run from an installed package."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its versions
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade_to_head(connection: Connection) -> None:
    """Apply pending migrations on ``connection`` (in its open transaction)."""
    if current_revision(connection) == head_revision():
        return
    command.upgrade(alembic_config(connection), "head")
