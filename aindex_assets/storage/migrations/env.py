"""Alembic environment: runs on the connection the catalog hands over (see __init__.py)."""

from __future__ import annotations

from alembic import context

from aindex_assets.storage.catalog import Base, create_catalog_engine

config = context.config
target_metadata = Base.metadata


def run_with(connection: object) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    # The alembic command line: sqlalchemy.url in the given config file.
    engine = create_catalog_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as fresh:
        run_with(fresh)
        fresh.commit()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported: run them on a database")
run_migrations_online()
