"""Crashes and lost connections: the served index stays complete and readable.

A child process writing a shard or the merged index is killed with SIGKILL at each
dangerous moment (mid-upload, between the object and the pointer, inside the pointer
switch); the index in use must stay the previous one, every visible index object must be
complete, and the next writer must finish the job. Runs on the folder store + SQLite and
on SeaweedFS + PostgreSQL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from aindex_assets.lib import index as faiss_index
from aindex_assets.services.index import merge_served_index, write_shard
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog, IndexVersionRecord
from aindex_assets.storage.keys import trained_index_key
from aindex_assets.storage.objectstore import ObjectStore, open_object_store
from aindex_assets_tests.index_writer_child import MOMENTS, NEW_BATCH, NEW_IDS

OLD_BATCH = "batch-a"
OLD_IDS = np.arange(1, 51, dtype=np.int64)
DIM = 16


@pytest.fixture
def stack_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Settings of the stack named by the (indirect) parameter, as environment variables."""
    env = {"AINDEX_DATA_DIR": str(tmp_path / "data")}
    if request.param == "s3-postgres":
        env.update(request.getfixturevalue("s3_store_settings"))
        env["AINDEX_DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return env


def seed_index(store: ObjectStore, catalog: Catalog) -> IndexVersionRecord:
    """A trained index version with one shard (batch-a) merged into the served index."""
    vectors = np.random.default_rng(1).standard_normal((400, DIM)).astype(np.float32)
    catalog.upsert_extractor("e" * 64, "test", DIM, 32)
    version_id = catalog.create_index_version("IVF4,Flat", "l2", DIM, "e" * 64, len(vectors))
    key = trained_index_key(version_id)
    store.put_bytes(key, faiss_index.serialize_index(faiss_index.train_index("IVF4,Flat", vectors)))
    catalog.activate_index_version(version_id, object_key=key)
    version = catalog.index_version(version_id)
    catalog.create_batch(OLD_BATCH, kind="ingest")
    write_shard(store, catalog, version, OLD_BATCH, OLD_IDS, vectors[: len(OLD_IDS)])
    merge_served_index(store, catalog, version)
    return version


def run_child_until(moment: str, env: dict[str, str], cwd: Path) -> None:
    """Start the writer, wait until it reports `moment`, then SIGKILL it there."""
    child = subprocess.Popen(
        [sys.executable, "-m", "aindex_assets_tests.index_writer_child", moment],
        env={**os.environ, **env},
        cwd=Path(__file__).parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reached = threading.Event()

    def read() -> None:
        for line in child.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.strip() == f"AT {moment}":
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert reached.wait(180), f"the writer never reached {moment}:\n{''.join(lines)}"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        reader.join(10)
    assert child.returncode == -signal.SIGKILL


def served_ids(store: ObjectStore, catalog: Catalog, version_id: int) -> list[int]:
    served = catalog.current_served_index(version_id)
    assert served is not None, "there must always be a current served index"
    index = faiss_index.deserialize_index(store.get_bytes(served.object_key))
    assert index.ntotal == served.ntotal
    return sorted(faiss_index.stored_ids(index).tolist())


# Every moment on the production stack; on the embedded default the two that differ there
# (a temp file in the folder store, a SQLite write transaction).
CASES = [
    *[pytest.param("s3-postgres", m, marks=pytest.mark.services) for m in MOMENTS],
    ("local-sqlite", "served_upload"),
    ("local-sqlite", "inside_switch"),
]


@pytest.mark.parametrize(("stack_env", "moment"), CASES, indirect=["stack_env"])
def test_writer_killed_at_the_worst_moment_leaves_the_previous_index_in_use(
    stack_env: dict[str, str], moment: str, tmp_path: Path
) -> None:
    settings = Settings.from_env(stack_env, dotenv=None)
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    version = seed_index(store, catalog)
    before = catalog.current_served_index(version.id)

    run_child_until(moment, stack_env, tmp_path)

    after = catalog.current_served_index(version.id)
    assert (after.id, after.object_key) == (before.id, before.object_key)
    assert served_ids(store, catalog, version.id) == OLD_IDS.tolist()
    for info in store.list("indexes/"):  # nothing half-written is visible
        faiss_index.deserialize_index(store.get_bytes(info.key))
    shards = {s.batch_id for s in catalog.shards(version.id)}
    assert shards == ({OLD_BATCH} if moment == "shard_upload" else {OLD_BATCH, NEW_BATCH})

    # The next writer (a re-executed run) completes the batch: no id lost, none twice.
    vectors = np.random.default_rng(2).standard_normal((len(NEW_IDS), DIM)).astype(np.float32)
    write_shard(store, catalog, version, NEW_BATCH, NEW_IDS, vectors)
    merge_served_index(store, catalog, version)
    ids = served_ids(store, catalog, version.id)
    assert ids == sorted([*OLD_IDS.tolist(), *NEW_IDS.tolist()])
    assert catalog.current_served_index(version.id).id > before.id
    catalog.close()


@pytest.mark.services
def test_catalog_survives_terminated_database_connections(postgres_url: str) -> None:
    catalog = Catalog.open(postgres_url)
    assert catalog.engine.pool._pre_ping, "stale pooled connections must be detected"
    catalog.create_batch("b1", kind="ingest")
    database = sa.make_url(postgres_url).database
    admin = sa.create_engine(sa.make_url(postgres_url).set(database="postgres"))
    with admin.connect() as connection:  # what a database restart or failover does
        killed = connection.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": database},
        ).scalar_one()
    admin.dispose()
    assert killed >= 1, "the catalog's pooled connection should have been terminated"
    catalog.create_batch("b2", kind="ingest")  # the next operation works without a retry
    assert [b.id for b in catalog.batches()] == ["b1", "b2"]
    catalog.close()
