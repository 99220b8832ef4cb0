"""Batches on the real stack (SeaweedFS + PostgreSQL) under hostile input, faults and races.

One index is bootstrapped per module; each test drops its own files into the inbox,
lets the inbox sensor cut a batch and runs the batch job in process (without the
robustness report, which has its own tests). The S3 keys and a database password are
real secrets here: the last test scans everything the runs left behind for them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster._serdes import serialize_value

import aindex_assets.services.activation as activation_module
import aindex_assets.services.index as index_module
from aindex_assets import cli
from aindex_assets.definitions import build_definitions
from aindex_assets.defs.claims import with_request_config
from aindex_assets.defs.ingest.sensors import inbox_sensor
from aindex_assets.defs.jobs import BATCH_SELECTION, BOOTSTRAP_ASSETS
from aindex_assets.defs.partitions import DISTRACTOR_BATCH, INGEST_BATCHES
from aindex_assets.defs.reports.assets import robustness_report
from aindex_assets.defs.resources import _open_catalog, _open_store
from aindex_assets.lib import index as faiss_index
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Base, Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.keys import validate_key
from aindex_assets.storage.objectstore import S3ObjectStore
from aindex_assets_tests.devservers import SeaweedServer, scratch_database
from aindex_assets_tests.hostile_files import encoded, hostile_corpus, photo_crops
from aindex_assets_tests.servers import empty_bucket, s3_store_for

pytestmark = pytest.mark.services

BATCH_JOB = dg.define_asset_job(
    "test_batch", selection=BATCH_SELECTION - dg.AssetSelection.assets(robustness_report)
)
BOOTSTRAP_CONFIG = {
    "ops": {
        "training_embeddings": {"config": {"crops": 120, "crop_size": 64}},
        "index_distractors": {"config": {"crops": 60, "crop_size": 64}},
        "trained_index": {"config": {"factory": "IVF8,PQ8x4"}},
    }
}
RUN_CONFIG = {"ops": {"activated_images": {"config": {"iterations": 2}}}}


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Stack:
    server: SeaweedServer
    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    secrets: dict[str, str]
    logs: ListHandler
    stderr: io.StringIO = field(default_factory=io.StringIO)
    cursor: str | None = None
    requests: dict[str, dg.RunRequest] = field(default_factory=dict)

    def store(self) -> S3ObjectStore:
        return _open_store(self.settings)  # type: ignore[return-value]

    def catalog(self) -> Catalog:
        return _open_catalog(self.settings.database_url)

    def drop(self, files: list[tuple[str, bytes]]) -> list[str]:
        store = self.store()
        keys = [upload_key(name, prefix=INBOX_PREFIX) for name, _ in files]
        for key, (_, data) in zip(keys, files, strict=True):
            store.put_bytes(key, data)
        return keys

    def claim_batch(self) -> str:
        """One sensor tick that must cut exactly one batch; its partition is registered.

        The cursor carries over between ticks as the daemon keeps it, so a batch requested
        but not run yet is not proposed again.
        """
        resources = {"storage": self.defs.resources["storage"]}
        with dg.build_sensor_context(
            instance=self.instance, resources=resources, cursor=self.cursor
        ) as context:
            result = inbox_sensor(context)
        [request] = result.run_requests
        self.cursor = result.cursor
        self.requests[request.partition_key] = request
        self.instance.add_dynamic_partitions(INGEST_BATCHES.name, [request.partition_key])
        return request.partition_key

    def run_config(self, batch: str) -> dict:
        """The batch's run config as its sensor request carries it (a re-run needs none)."""
        request = self.requests.get(batch)
        return with_request_config(RUN_CONFIG, request) if request else RUN_CONFIG

    def run_batch(
        self, batch: str, instance: dg.DagsterInstance | None = None
    ) -> dg.ExecuteInProcessResult:
        with contextlib.redirect_stderr(self.stderr):
            return self.defs.resolve_job_def(BATCH_JOB.name).execute_in_process(
                instance=instance or self.instance,
                partition_key=batch,
                run_config=self.run_config(batch),
                raise_on_error=False,
            )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, s3_server: SeaweedServer, postgres_admin: str):
    """An index bootstrapped on S3 + PostgreSQL, with secret credentials in the environment."""
    password = "pg-" + secrets.token_hex(12)
    admin = sa.make_url(postgres_admin)
    admin_with_password = admin if admin.password else admin.set(password=password)
    secret_values = {
        "s3_access_key": s3_server.access_key,
        "s3_secret_key": s3_server.secret_key,
        "database_password": str(admin_with_password.password),
    }
    bucket = f"aindex-stack-{secrets.token_hex(4)}"
    logs = ListHandler()
    with (
        scratch_database(admin_with_password.render_as_string(hide_password=False)) as url,
        pytest.MonkeyPatch.context() as monkeypatch,
        dg.instance_for_test() as instance,
    ):
        env = {
            "AINDEX_DATA_DIR": str(tmp_path_factory.mktemp("stack") / "data"),
            "AINDEX_OBJECT_STORE": "s3",
            # A test stack has no collection of its own to train on.
            "AINDEX_PACKAGED_PHOTOS": "allow",
            "AINDEX_S3_ENDPOINT": s3_server.endpoint,
            "AINDEX_S3_ACCESS_KEY": s3_server.access_key,
            "AINDEX_S3_SECRET_KEY": s3_server.secret_key,
            "AINDEX_S3_BUCKET": bucket,
            "AINDEX_DATABASE_URL": url,  # trust auth accepts the password and ignores it
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))  # no stray .env
        settings = Settings.from_env(env, dotenv=None)
        s3_store_for(s3_server, bucket).ensure_bucket()
        defs = dg.Definitions.merge(build_definitions(settings), dg.Definitions(jobs=[BATCH_JOB]))
        for logger in (logging.getLogger(), logging.getLogger("dagster")):
            logger.addHandler(logs)
        stack = Stack(s3_server, settings, defs, instance, secret_values, logs)
        try:
            with contextlib.redirect_stderr(stack.stderr):
                result = dg.materialize(
                    [defs.resolve_assets_def(key) for key in BOOTSTRAP_ASSETS],
                    run_config=BOOTSTRAP_CONFIG,
                    instance=instance,
                )
            assert result.success
            yield stack
        finally:
            for logger in (logging.getLogger(), logging.getLogger("dagster")):
                logger.removeHandler(logs)
            if not s3_server.running:
                s3_server.start()
            empty_bucket(stack.store())


def served_ids(stack: Stack) -> list[int]:
    catalog, store = stack.catalog(), stack.store()
    served = catalog.current_served_index(catalog.active_index_version().id)
    return faiss_index.stored_ids(
        faiss_index.deserialize_index(store.get_bytes(served.object_key))
    ).tolist()


def assert_batch_complete(stack: Stack, batch: str, n_images: int) -> list[int]:
    """Every image of the batch activated once, in its shard and once in the served index."""
    catalog = stack.catalog()
    version = catalog.active_index_version()
    images = catalog.images_in_batch(batch)
    ids = sorted(i.id for i in images)
    assert len(ids) == n_images
    assert {i.status for i in images} == {"indexed"}
    activations = catalog.activations(batch_id=batch)
    assert sorted(a.image_id for a in activations) == ids, "one activation per image"
    store = stack.store()
    assert all(store.exists(a.object_key) for a in activations)
    [shard] = [s for s in catalog.shards(version.id) if s.batch_id == batch]
    held = faiss_index.stored_ids(faiss_index.deserialize_index(store.get_bytes(shard.object_key)))
    assert sorted(held.tolist()) == ids
    served = served_ids(stack)
    assert len(served) == len(set(served)), "no id twice in the served index"
    assert set(ids) <= set(served)
    return ids


def test_hostile_files_are_rejected_with_reasons_and_the_rest_activated(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = hostile_corpus()
    keys = stack.drop([(f.name, f.data) for f in corpus])
    # Written straight through the S3 API: a name `aindex ingest` would never produce (it
    # targets the local store's sidecar folder); it sorts first, so it joins this batch.
    raw_key = "inbox/0000-raw/.aindex-meta/evil.png"
    client, bucket = stack.store().client, stack.store().bucket
    client.put_object(bucket, raw_key, io.BytesIO(b"x"), 1)
    try:
        batch = stack.claim_batch()
        result = stack.run_batch(batch)
    finally:
        client.remove_object(bucket, raw_key)  # the store itself refuses to address it
    assert result.success, "bad files must never fail their batch"

    catalog = stack.catalog()
    reasons = {r.source_key: r.reason for r in catalog.rejected_in_batch(batch)}
    for key, hostile in zip(keys, corpus, strict=True):
        if hostile.expect is not None:
            assert hostile.expect in reasons.get(key, ""), (hostile.name, reasons.get(key))
    assert "unsafe object name" in reasons[raw_key]
    accepted = [k for k, f in zip(keys, corpus, strict=True) if f.expect is None]
    images = {i.source_key: i for i in catalog.images_in_batch(batch)}
    assert sorted(images) == sorted(accepted)
    rotated = images[next(k for k in accepted if "rotated" in k)]
    assert (rotated.width, rotated.height) == (64, 96), "EXIF orientation applied"
    assert_batch_complete(stack, batch, len(accepted))

    # `aindex status` and the materialization shown in the UI list every rejection.
    capsys.readouterr()
    assert cli.main(["status", "--json"]) == 0
    [shown] = [b for b in json.loads(capsys.readouterr().out)["batches"] if b["batch_id"] == batch]
    assert {r["source_key"]: r["reason"] for r in shown["rejected"]} == reasons
    metadata = result.asset_materializations_for_node("raw_images")[0].metadata
    assert metadata["rejected"].value == len(reasons)
    assert metadata["registered"].value == len(accepted)
    table = metadata["rejected_files"].value
    assert all(f"`{key}`" in table and reason in table for key, reason in reasons.items())

    # Names never became paths: every object key is a safe relative key, the originals are
    # stored under their content hash, and nothing was written outside the bucket's layout.
    all_keys = [info.key for info in stack.store().list("")]
    assert all(validate_key(k) for k in all_keys)
    assert {i.original_key.split("/")[0] for i in images.values()} == {"originals"}
    assert all(i.original_key.rsplit("/", 1)[1].startswith(i.content_hash) for i in images.values())


def test_s3_stopped_mid_batch_fails_clearly_and_a_rerun_completes_it(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    crops = photo_crops(3, seed=11)
    stack.drop([(f"stop {i}.png", encoded(c, "PNG")) for i, c in enumerate(crops)])
    batch = stack.claim_batch()
    real_record_release, calls = activation_module.record_release, []

    def stop_s3_then_record(*args: object) -> None:
        calls.append(1)
        if len(calls) == 2:  # the first release is stored, the second is not
            stack.server.stop()
        real_record_release(*args)

    monkeypatch.setattr(activation_module, "record_release", stop_s3_then_record)
    try:
        failed = stack.run_batch(batch)
    finally:
        monkeypatch.setattr(activation_module, "record_release", real_record_release)
        stack.server.start()
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.to_string()
    assert "cannot reach the S3 server" in message and stack.server.endpoint in message
    assert len(stack.catalog().activations(batch_id=batch)) == 1

    rerun = stack.run_batch(batch)  # what re-executing the run from the UI does
    assert rerun.success
    assert_batch_complete(stack, batch, 3)
    store = stack.store()
    pngs = [a.object_key for a in stack.catalog().activations(batch_id=batch)]
    assert len(set(pngs)) == 3 and all(store.get_bytes(k)[:4] == b"\x89PNG" for k in pngs)


def test_two_batches_at_once_lose_no_id_and_duplicate_none(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches = []
    for seed in (21, 22):
        crops = photo_crops(3, seed=seed)
        stack.drop([(f"race {seed} {i}.png", encoded(c, "PNG")) for i, c in enumerate(crops)])
        batches.append(stack.claim_batch())
    # Both runs reach their shard write together, so the two merges race.
    barrier, real_write_shard = threading.Barrier(2, timeout=300), index_module.write_shard

    def write_shard_together(*args: Any, **kwargs: Any) -> str:
        if threading.current_thread() is not threading.main_thread():
            barrier.wait()
        return real_write_shard(*args, **kwargs)

    monkeypatch.setattr(index_module, "write_shard", write_shard_together)
    results: dict[str, dg.ExecuteInProcessResult] = {}

    def run(batch: str) -> None:
        # Disposed in this thread: an in-memory instance's SQLite connections belong to the
        # thread that made them, and one left to interpreter exit fails to close there.
        with dg.DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(INGEST_BATCHES.name, [batch])
            results[batch] = stack.defs.resolve_job_def(BATCH_JOB.name).execute_in_process(
                instance=instance, partition_key=batch, run_config=stack.run_config(batch)
            )

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    assert all(results[b].success for b in batches)
    ids = [i for b in batches for i in assert_batch_complete(stack, b, 3)]
    assert len(set(ids)) == 6
    catalog = stack.catalog()
    version = catalog.active_index_version()
    expected = {i.id for i in _all_images(catalog) if i.status == "indexed"}
    served = served_ids(stack)
    distractors = [s for s in catalog.shards(version.id) if s.batch_id == DISTRACTOR_BATCH]
    assert set(served) == expected | set(_ids_of(stack, distractors[0].object_key))
    assert len(served) == len(set(served))


def _all_images(catalog: Catalog) -> Iterator[Any]:
    for batch in catalog.batches(kind="ingest"):
        yield from catalog.images_in_batch(batch.id)


def _ids_of(stack: Stack, key: str) -> list[int]:
    return faiss_index.stored_ids(faiss_index.deserialize_index(stack.store().get_bytes(key)))


def test_no_secret_reaches_logs_event_log_metadata_catalog_or_objects(stack: Stack) -> None:
    """Runs above used real S3 keys and a database password; none may be written anywhere."""
    haystacks: dict[str, str] = {
        "python logs": "\n".join(stack.logs.lines),
        "console output": stack.stderr.getvalue(),
    }
    for run in stack.instance.get_runs():
        records = stack.instance.all_logs(run.run_id)
        haystacks[f"run {run.run_id}"] = serialize_value(run) + "".join(
            serialize_value(record) for record in records
        )
    engine = stack.catalog().engine
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            rows = connection.execute(sa.select(table)).all()
            haystacks[f"catalog {table.name}"] = repr(rows)
    store = stack.store()
    for info in store.list(""):
        haystacks[f"object {info.key}"] = store.get_bytes(info.key).decode("latin-1") + repr(
            store.stat(info.key).metadata
        )
    assert len(haystacks) > 10 and any("raw_images" in text for text in haystacks.values())
    leaks = [
        (what, where)
        for what, secret in stack.secrets.items()
        for where, text in haystacks.items()
        if secret in text
    ]
    assert leaks == []
