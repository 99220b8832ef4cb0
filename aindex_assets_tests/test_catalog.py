"""The catalog on SQLite and PostgreSQL: migrations, idempotent writes, races, pointer switches."""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from aindex_assets.storage.catalog import Base, Catalog, IndexVersion, ids_checksum
from aindex_assets.storage.migrations import alembic_config, head_revision

BATCH = "20261127T060000Z-ab12cd"
EXTRACTOR = "e" * 64


def digest(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def register(catalog: Catalog, n: int, batch: str = BATCH) -> tuple[int, bool]:
    return catalog.register_image(
        digest(n), f"inbox/{n}.jpg", f"originals/{digest(n)}.jpg", batch, 100 + n, "JPEG", 8, 8
    )


def new_version(catalog: Catalog, key: str | None = "indexes/v/trained.faiss") -> int:
    catalog.upsert_extractor(EXTRACTOR, "efficientnet_lite0", 4, 224, {"name": "test"})
    return catalog.create_index_version("IVF4,Flat", "l2", 4, EXTRACTOR, 10, {"n": 10}, key)


def _register_range(url: str, seed: int, count: int) -> list[tuple[int, bool]]:
    catalog = Catalog.open(url)  # several processes open (and migrate) at the same moment
    order = list(range(count))
    random.Random(seed).shuffle(order)
    catalog.create_batch(BATCH, "ingest", "inbox/", count)
    results = [(n, *register(catalog, n)) for n in order]
    catalog.close()
    return results


def test_migrations_create_every_table_and_match_the_models(catalog_url):
    catalog = Catalog.open(catalog_url)
    Catalog.open(catalog_url).close()  # re-applying on an up-to-date database is a no-op
    catalog.migrate()
    assert catalog.schema_revision() == head_revision()
    tables = set(sa.inspect(catalog.engine).get_table_names())
    assert set(Base.metadata.tables) | {"alembic_version"} <= tables
    with catalog.engine.connect() as connection:
        versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert versions == [(head_revision(),)]
    assert diff == [], f"the models drifted from the migrations: {diff}"
    catalog.close()


def test_concurrent_processes_migrate_and_register_without_loss_or_duplicates(catalog_url):
    count, workers = 120, 4
    context = multiprocessing.get_context("spawn")
    # close + join, not the context manager: Pool.__exit__ terminates the workers, which
    # can deadlock on the task queue's lock while an idle worker waits on it.
    pool = context.Pool(workers)
    try:
        results = pool.starmap(
            _register_range, [(catalog_url, seed, count) for seed in range(workers)]
        )
    finally:
        pool.close()
        pool.join()
    catalog = Catalog.open(catalog_url)
    ids_by_number: dict[int, set[int]] = {}
    created = 0
    for per_process in results:
        for n, image_id, was_created in per_process:
            ids_by_number.setdefault(n, set()).add(image_id)
            created += was_created
    assert all(len(ids) == 1 for ids in ids_by_number.values()), "one id per content hash"
    assert len({next(iter(ids)) for ids in ids_by_number.values()}) == count
    assert created == count, "exactly one process created each image"
    assert catalog.count_images() == count
    assert len(catalog.images_in_batch(BATCH)) == count
    catalog.close()


def test_reregistering_the_same_bytes_keeps_the_first_id(catalog):
    catalog.create_batch(BATCH, "ingest", "inbox/", 2)
    catalog.create_batch(BATCH, "ingest", "other/", 99)  # no-op
    catalog.create_batch("20261128T000000Z-ffffff", "ingest", "inbox/", 1)
    first, created = register(catalog, 1)
    again, created_again = register(catalog, 1, batch="20261128T000000Z-ffffff")
    assert (created, created_again, again) == (True, False, first)
    assert catalog.image(first).batch_id == BATCH
    assert catalog.batch(BATCH).n_files == 2 and catalog.batch(BATCH).source_prefix == "inbox/"
    assert catalog.image(10_000) is None


def test_rejections_are_recorded_once_per_file(catalog):
    catalog.create_batch(BATCH, "ingest", "inbox/", 3)
    catalog.reject_file(BATCH, "inbox/a.txt", "not an image")
    catalog.reject_file(BATCH, "inbox/a.txt", "not an image (re-run)", content_hash=digest(9))
    catalog.reject_file(BATCH, "inbox/b.jpg", "truncated")
    register(catalog, 1)
    rejected = catalog.rejected_in_batch(BATCH)
    assert [(r.source_key, r.reason) for r in rejected] == [
        ("inbox/a.txt", "not an image (re-run)"),
        ("inbox/b.jpg", "truncated"),
    ]
    assert catalog.status_counts() == {BATCH: {"registered": 1, "rejected": 2}}


def test_status_updates_are_all_or_nothing(catalog):
    catalog.create_batch(BATCH, "ingest", "inbox/", 3)
    ids = [register(catalog, n)[0] for n in range(3)]
    assert catalog.set_status(ids[:2], "embedded") == 2
    with pytest.raises(ValueError, match="not one of"):
        catalog.set_status(ids, "bogus")
    assert [i.status for i in catalog.images_in_batch(BATCH)] == [
        "embedded",
        "embedded",
        "registered",
    ]
    assert [i.id for i in catalog.images_in_batch(BATCH, status="registered")] == [ids[2]]
    assert [i.id for i in catalog.images_by_ids([ids[2], ids[0]])] == [ids[2], ids[0]]
    assert catalog.count_images("embedded") == 2
    with pytest.raises(LookupError):
        catalog.images_by_ids([ids[0], 987654])


def test_a_batch_moves_forward_through_its_stages_and_back_from_failed(catalog):
    catalog.create_batch(BATCH, "ingest", "inbox/", 3)
    status = lambda: catalog.batch(BATCH).status  # noqa: E731
    assert status() == "open"
    assert catalog.advance_batch_status(BATCH, "activated") and status() == "activated"
    assert not catalog.advance_batch_status(BATCH, "embedded")  # a re-run step: never back
    assert status() == "activated"
    assert catalog.advance_batch_status(BATCH, "failed") and status() == "failed"
    # Work for other batches (a later publish) does not hide this batch's failure...
    assert not catalog.advance_batch_status(BATCH, "indexed", from_failed=False)
    assert status() == "failed"
    # ...a step of its own re-run that succeeds moves it on.
    assert catalog.advance_batch_status(BATCH, "reported") and status() == "reported"
    assert not catalog.advance_batch_status(BATCH, "reported")
    with pytest.raises(ValueError, match="not one of"):
        catalog.advance_batch_status(BATCH, "done")


def test_activating_a_version_retires_the_previous_one(catalog):
    first = new_version(catalog)
    assert catalog.active_index_version() is None, "creating a version does not activate it"
    catalog.activate_index_version(first)
    second = new_version(catalog, key=None)
    with pytest.raises(ValueError, match="no stored index object"):
        catalog.activate_index_version(second)
    assert catalog.active_index_version().id == first
    catalog.activate_index_version(second, object_key="indexes/v2/trained.faiss")
    old, new = catalog.index_version(first), catalog.index_version(second)
    assert (old.is_active, old.retired_by, old.retired_at is not None) == (False, second, True)
    assert (new.is_active, new.object_key) == (True, "indexes/v2/trained.faiss")
    assert catalog.active_index_version().id == second
    with pytest.raises(ValueError, match="retired"):
        catalog.activate_index_version(first)
    # The database itself refuses a second active version.
    with pytest.raises(sa.exc.IntegrityError), catalog.engine.begin() as connection:
        connection.execute(
            sa.update(IndexVersion).where(IndexVersion.id == first).values(is_active=True)
        )


def test_activations_upsert_per_image_and_version(catalog):
    catalog.create_batch(BATCH, "ingest", "inbox/", 2)
    image_ids = [register(catalog, n)[0] for n in range(2)]
    version = new_version(catalog)
    for psnr in (40.0, 42.5):
        catalog.record_activation(
            image_ids[0], version, EXTRACTOR, {"iterations": 10}, psnr, 0.99, 4.0, 0.5, 0.1, "a/k"
        )
    records = catalog.activations(batch_id=BATCH)
    assert [(r.image_id, r.psnr) for r in records] == [(image_ids[0], 42.5)]
    assert catalog.activations(batch_id="other") == []
    assert catalog.activations(index_version=version)[0].params == {"iterations": 10}


def test_served_pointer_flips_in_one_transaction(catalog):
    catalog.create_batch(BATCH, "ingest", "inbox/", 0)
    version = new_version(catalog)
    catalog.activate_index_version(version)
    shard = catalog.record_shard(BATCH, version, "indexes/v1/shards/b.faiss", [3, 1, 2])
    assert shard.ids_checksum == ids_checksum([3, 1, 2]) != ids_checksum([1, 2, 3])
    assert [s.n_vectors for s in catalog.shards(version)] == [3]
    reserved = catalog.next_served_index_id()
    first = catalog.set_served_index(version, "served/1", 3, [BATCH], served_id=reserved)
    second = catalog.set_served_index(version, "served/2", 3, [BATCH])
    assert first == reserved and second > first
    assert catalog.current_served_index().id == second
    with pytest.raises(sa.exc.IntegrityError):  # unknown index version: the whole switch rolls back
        catalog.set_served_index(version + 100, "served/3", 3, [BATCH])
    with pytest.raises(sa.exc.IntegrityError):  # a reused id: nothing changes either
        catalog.set_served_index(version, "served/dup", 3, [BATCH], served_id=second)
    assert catalog.current_served_index(version).object_key == "served/2"
    assert [s.is_current for s in catalog.served_indexes(version)] == [False, True]


def test_reserved_ids_are_unique_under_concurrency(catalog):
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(lambda _: catalog.next_report_id(), range(40)))
    assert sorted(ids) == list(range(1, 41))


# A code server evaluates sensor ticks in a pool of threads and caches one catalog per
# process: the thread that opened it is rarely the one that uses it, closes it or exits.
CROSS_THREAD_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    from aindex_assets.storage.catalog import Catalog

    opened = {}

    def first_tick():
        opened["catalog"] = Catalog.open(sys.argv[1])
        opened["catalog"].create_batch("20261127T060000Z-ab12cd", "ingest")

    worker = threading.Thread(target=first_tick)
    worker.start()
    worker.join()
    assert [b.id for b in opened["catalog"].batches()] == ["20261127T060000Z-ab12cd"]
    opened["catalog"].close()
    left_open = {}
    worker = threading.Thread(target=lambda: left_open.update(c=Catalog.open(sys.argv[1])))
    worker.start()
    worker.join()
    left_open["c"].count_images()  # then left to the interpreter's exit
    """
)


def test_a_catalog_moves_between_threads_without_sqlite_thread_errors(sqlite_url):
    child = subprocess.run(
        [sys.executable, "-c", CROSS_THREAD_SCRIPT, sqlite_url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    assert "Traceback" not in child.stderr and "same thread" not in child.stderr, child.stderr


def test_reports_are_immutable_with_their_rows(catalog):
    catalog.create_batch(BATCH, "ingest", "inbox/", 0)
    rows = [
        {"edit": "jpeg50", "variant": "passive", "n": 4, "recall_at_1": 0.5, "recall_at_10": 0.75},
        {"edit": "jpeg50", "variant": "active", "n": 4, "recall_at_1": 1.0, "mrr": 1.0},
    ]
    report_id = catalog.record_report(BATCH, "robustness", {"seed": 0}, "reports/x.json", rows)
    with pytest.raises(ValueError, match="immutable"):
        catalog.record_report(BATCH, "robustness", {}, None, [], report_id=report_id)
    with pytest.raises(ValueError, match="variant"):
        catalog.record_report(
            BATCH, "robustness", {}, None, [{"edit": "x", "variant": "?", "n": 1}]
        )
    (report,) = catalog.reports(batch_id=BATCH)
    assert report.id == report_id and report.payload == {"seed": 0}
    assert [(r.variant, r.recall_at_1, r.recall_at_10) for r in report.rows] == [
        ("passive", 0.5, 0.75),
        ("active", 1.0, None),
    ]
    assert catalog.reports(kind="comparison") == []
    assert catalog.report(report_id) == report


def cursors_table(connection: sa.Connection) -> tuple[list[tuple[str, str, bool]], list[str]]:
    """The reflected columns (name, type, nullable) and primary key of `cursors`."""
    inspector = sa.inspect(connection)
    columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns("cursors")]
    return columns, inspector.get_pk_constraint("cursors")["constrained_columns"]


def test_migration_0005_drops_the_cursors_table_and_its_downgrade_restores_it(catalog_url):
    engine = sa.create_engine(catalog_url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0004")
        before = cursors_table(connection)
        connection.execute(
            sa.text("INSERT INTO cursors (name, value, updated_at) VALUES ('inbox', 'a', :t)"),
            {"t": "2026-12-01 00:00:00+00:00"},
        )
    catalog = Catalog.open(catalog_url)
    assert catalog.schema_revision() == head_revision()
    assert "cursors" not in sa.inspect(catalog.engine).get_table_names()
    catalog.close()
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0004")
        assert cursors_table(connection) == before
        assert connection.execute(sa.text("SELECT count(*) FROM cursors")).scalar() == 0
    engine.dispose()
