"""The intake depends on nothing in the names: every inbox file is claimed exactly once.

Each test runs on the folder store and on SeaweedFS through the S3 API, against SQLite and
PostgreSQL. "A round" is what the sensors and their runs do together: plan batches from
the inbox (a pure read), then claim each planned batch as its run's first step would.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest

from aindex_assets.defs.claims import (
    PROPOSAL_TIMEOUT_S,
    InboxBatchConfig,
    Proposal,
    batch_run_config,
    claim_for_run,
    dump_proposals,
    with_request_config,
)
from aindex_assets.defs.copy_detection.sensors import query_sensor
from aindex_assets.defs.ingest.sensors import inbox_sensor
from aindex_assets.defs.resources import StorageResource
from aindex_assets.services.inbox import (
    PlannedBatch,
    claim_batch_members,
    claim_planned,
    inbox_prefix,
    plan_batches,
)
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import BatchManifest, upload_key
from aindex_assets.storage.keys import QUERY_INBOX_PREFIX
from aindex_assets.storage.objectstore import LocalObjectStore, ObjectStore, S3ObjectStore

LATIN1_NAME = b"holiday-\xe9t\xe9.jpg"  # "holiday-été.jpg" written by a Latin-1 system


# ---------------------------------------------------------------------------- helpers


def drain(store: ObjectStore, catalog: Catalog, kind: str = "ingest") -> list[BatchManifest]:
    """One round: plan batches from the inbox, then claim each as its run would."""
    planned = plan_batches(store, catalog, kind=kind, max_batches=100)
    return [claim_planned(store, catalog, batch) for batch in planned]


def claimed(manifests: list[BatchManifest]) -> list[str]:
    return sorted(inbox_key for m in manifests for inbox_key, _ in m.members())


def inbox(store: ObjectStore, kind: str = "ingest") -> list[str]:
    return sorted(info.key for info in store.list(inbox_prefix(kind)))


def drop(store: ObjectStore, keys: list[str]) -> dict[str, bytes]:
    contents = {key: f"bytes of {key}".encode() for key in keys}
    for key, data in contents.items():
        store.put_bytes(key, data)
    return contents


def assert_moved_once(
    store: ObjectStore, catalog: Catalog, contents: dict[str, bytes], kind: str = "ingest"
) -> None:
    """Each file left the inbox, sits at its claimed key, and one batch claimed it."""
    for key, data in contents.items():
        [claim] = catalog.inbox_key_claims(kind, key)
        assert claim.status == "moved", claim
        assert store.get_bytes(claim.claimed_key) == data
        assert not store.exists(key)


@pytest.fixture
def storage(
    object_store: ObjectStore, catalog_url: str, request: pytest.FixtureRequest
) -> StorageResource:
    """The sensors' resource on the test's store and catalog."""
    if isinstance(object_store, LocalObjectStore):
        return StorageResource(data_dir=str(object_store.root.parent), database_url=catalog_url)
    assert isinstance(object_store, S3ObjectStore)
    server = request.getfixturevalue("s3_server")
    return StorageResource(
        object_store="s3",
        s3_endpoint=server.endpoint,
        s3_access_key=server.access_key,
        s3_secret_key=server.secret_key,
        s3_bucket=object_store.bucket,
        database_url=catalog_url,
    )


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def evaluate(
    sensor: dg.SensorDefinition,
    storage: StorageResource,
    instance: dg.DagsterInstance,
    cursor: str | None = None,
) -> dg.SensorResult | dg.SkipReason:
    """One evaluation, as a preview does it: nothing of its result is applied."""
    with dg.build_sensor_context(
        instance=instance, resources={"storage": storage}, cursor=cursor
    ) as context:
        return sensor(context)


def run_claims(
    storage: StorageResource, result: dg.SensorResult, kind: str, op_name: str
) -> list[BatchManifest]:
    """Apply a result: each requested run's claiming step, with the config it was given."""
    manifests = []
    for request in result.run_requests or []:
        config = InboxBatchConfig(**request.run_config["ops"][op_name]["config"])
        manifests.append(claim_for_run(storage, request.partition_key, kind, config))
    return manifests


def proposed(result: dg.SensorResult, op_name: str) -> list[str]:
    configs = [r.run_config["ops"][op_name]["config"] for r in result.run_requests or []]
    return sorted(k for c in configs for k in [*c["inbox_keys"], *c["unsafe_keys"]])


def serve_an_index(catalog: Catalog) -> None:
    """Just enough catalog for the query sensor to run: a served index and its threshold."""
    identity = "ab" * 32
    catalog.upsert_extractor(identity, "test", 4, 32)
    version = catalog.create_index_version("Flat", "ip", 4, identity, 0, object_key="t.faiss")
    catalog.activate_index_version(version)
    served = catalog.set_served_index(version, "s.faiss", 0, [])
    catalog.record_copy_threshold(
        version, served, "ip", 10, 1, 0.01, 0.5, True, 1.0, 0.0, 1.0, 1, 100
    )


@dg.op
def fails_before_claiming() -> None:
    raise RuntimeError("the run failed before its claim step")


@dg.job
def a_batch_run() -> None:
    fails_before_claiming()


# ---------------------------------------------------------------------------- finding 1


def test_a_hand_dropped_name_never_hides_later_uploads(
    object_store: ObjectStore, catalog: Catalog
) -> None:
    holiday = drop(object_store, ["inbox/holiday.jpg"])  # sorts after every `aindex ingest` key
    assert claimed(drain(object_store, catalog)) == ["inbox/holiday.jpg"]

    uploads = drop(object_store, [upload_key(f"photo {i}.jpg") for i in range(3)])
    assert claimed(drain(object_store, catalog)) == sorted(uploads)

    early = drop(object_store, ["inbox/0-early.jpg"])  # sorts below everything claimed so far
    assert claimed(drain(object_store, catalog)) == ["inbox/0-early.jpg"]

    assert inbox(object_store) == []
    assert_moved_once(object_store, catalog, {**holiday, **uploads, **early})
    assert drain(object_store, catalog) == []


# ---------------------------------------------------------------------------- finding 2


def test_an_upload_that_completes_late_is_still_claimed(
    object_store: ObjectStore, catalog: Catalog
) -> None:
    started = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    slow = upload_key("slow.jpg", now=started)  # started first, visible last
    fast = upload_key("fast.jpg", now=started + timedelta(seconds=5))
    contents = drop(object_store, [fast])
    assert claimed(drain(object_store, catalog)) == [fast]

    contents |= drop(object_store, [slow])
    assert claimed(drain(object_store, catalog)) == [slow]
    assert_moved_once(object_store, catalog, contents)


# ---------------------------------------------------------------------------- finding 3


def test_the_query_inbox_claims_suspects_in_any_order(
    object_store: ObjectStore, catalog: Catalog
) -> None:
    b = drop(object_store, [f"{QUERY_INBOX_PREFIX}suspect-b.jpg"])
    assert claimed(drain(object_store, catalog, "query")) == [f"{QUERY_INBOX_PREFIX}suspect-b.jpg"]
    a = drop(object_store, [f"{QUERY_INBOX_PREFIX}suspect-a.jpg"])
    assert claimed(drain(object_store, catalog, "query")) == [f"{QUERY_INBOX_PREFIX}suspect-a.jpg"]
    assert inbox(object_store, "query") == []
    assert_moved_once(object_store, catalog, a | b, kind="query")


def test_the_query_sensor_proposes_suspect_a_after_suspect_b_was_judged(
    object_store: ObjectStore,
    catalog: Catalog,
    storage: StorageResource,
    instance: dg.DagsterInstance,
) -> None:
    serve_an_index(catalog)
    b = drop(object_store, [f"{QUERY_INBOX_PREFIX}suspect-b.jpg"])
    first = evaluate(query_sensor, storage, instance)
    run_claims(storage, first, "query", "copy_detections")
    a = drop(object_store, [f"{QUERY_INBOX_PREFIX}suspect-a.jpg"])
    second = evaluate(query_sensor, storage, instance, cursor=first.cursor)
    assert isinstance(second, dg.SensorResult)
    assert proposed(second, "copy_detections") == [f"{QUERY_INBOX_PREFIX}suspect-a.jpg"]
    [manifest] = run_claims(storage, second, "query", "copy_detections")
    assert manifest.inbox_keys == (f"{QUERY_INBOX_PREFIX}suspect-a.jpg",)
    assert_moved_once(object_store, catalog, a | b, kind="query")


# ---------------------------------------------------------------------------- finding 4


def test_evaluating_the_sensor_claims_nothing_and_its_runs_claim_each_file_once(
    object_store: ObjectStore,
    catalog: Catalog,
    storage: StorageResource,
    instance: dg.DagsterInstance,
) -> None:
    contents = drop(
        object_store, ["inbox/holiday.jpg", *(upload_key(f"p{i}.jpg") for i in range(3))]
    )
    preview = evaluate(inbox_sensor, storage, instance)
    assert isinstance(preview, dg.SensorResult)
    assert proposed(preview, "raw_images") == sorted(contents)
    # Not applied: everything is still in the inbox, unclaimed, with no manifest written.
    assert inbox(object_store) == sorted(contents)
    assert all(catalog.inbox_key_claims("ingest", key) == [] for key in contents)
    assert list(object_store.list("batches/")) == []
    assert proposed(evaluate(inbox_sensor, storage, instance), "raw_images") == sorted(contents)

    # A committed tick: its cursor keeps later ticks from proposing the files again while
    # the run waits in the queue. The first batch bootstraps the index: the next one waits
    # for it; once an index exists, new files are proposed on their own.
    later = drop(object_store, [upload_key("later.jpg")])
    assert isinstance(evaluate(inbox_sensor, storage, instance, preview.cursor), dg.SkipReason)
    serve_an_index(catalog)
    waiting = evaluate(inbox_sensor, storage, instance, cursor=preview.cursor)
    assert proposed(waiting, "raw_images") == sorted(later)

    [manifest] = run_claims(storage, preview, "ingest", "raw_images")
    assert sorted(manifest.inbox_keys) == sorted(contents)
    assert run_claims(storage, preview, "ingest", "raw_images") == [manifest], "a re-run"
    run_claims(storage, waiting, "ingest", "raw_images")
    assert inbox(object_store) == []
    assert_moved_once(object_store, catalog, contents | later)
    assert isinstance(evaluate(inbox_sensor, storage, instance), dg.SkipReason)


def test_a_proposal_whose_run_never_claimed_is_proposed_again(
    object_store: ObjectStore,
    catalog: Catalog,
    storage: StorageResource,
    instance: dg.DagsterInstance,
) -> None:
    contents = drop(object_store, [upload_key("a.jpg"), upload_key("b.jpg")])
    result = evaluate(inbox_sensor, storage, instance)
    [request] = result.run_requests
    stale = dump_proposals(
        [Proposal(request.partition_key, time.time() - PROPOSAL_TIMEOUT_S - 1, tuple(contents))]
    )
    again = evaluate(inbox_sensor, storage, instance, cursor=stale)
    assert proposed(again, "raw_images") == sorted(contents), "no run after the timeout"

    a_batch_run.execute_in_process(
        instance=instance, tags={"dagster/partition": request.partition_key}, raise_on_error=False
    )
    retried = evaluate(inbox_sensor, storage, instance, cursor=result.cursor)
    assert proposed(retried, "raw_images") == sorted(contents), "its run finished without them"
    run_claims(storage, retried, "ingest", "raw_images")
    # The failed batch re-executed later loses the files to the batch that has them.
    assert run_claims(storage, result, "ingest", "raw_images")[0].inbox_keys == ()
    assert_moved_once(object_store, catalog, contents)


def test_two_claimers_racing_for_the_same_files_claim_each_once(
    object_store: ObjectStore, catalog_url: str
) -> None:
    contents = drop(object_store, [upload_key(f"race {i}.jpg") for i in range(16)])
    catalogs = [Catalog.open(catalog_url) for _ in range(2)]
    started = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    plans = [
        plan_batches(object_store, c, kind="ingest", max_batches=1, now=started + timedelta(i))
        for i, c in enumerate(catalogs)
    ]
    assert plans[0][0].keys == plans[1][0].keys and plans[0][0].batch_id != plans[1][0].batch_id
    # Opposite orders: the claimers meet in the middle, one moving what the other inserts.
    batches = [plans[0][0], replace(plans[1][0], keys=plans[1][0].keys[::-1])]
    barrier, manifests = threading.Barrier(2, timeout=60), {}

    def claim(index: int) -> None:
        barrier.wait()
        manifests[index] = claim_planned(object_store, catalogs[index], batches[index])

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    won = [set(manifests[i].inbox_keys) for i in range(2)]
    assert not won[0] & won[1] and won[0] | won[1] == set(contents)
    assert inbox(object_store) == []
    assert_moved_once(object_store, catalogs[0], contents)
    for opened in catalogs:
        opened.close()


def test_a_rerun_finishes_a_move_interrupted_by_a_crash(
    object_store: ObjectStore, catalog: Catalog
) -> None:
    contents = drop(object_store, [upload_key("crash.jpg"), upload_key("safe.jpg")])
    [batch] = plan_batches(object_store, catalog, kind="ingest", max_batches=1)
    crashed = sorted(contents)[0]
    # The run died after claiming and copying one file, before deleting it from the inbox.
    claim = catalog.claim_inbox_key(
        "ingest", crashed, batch.batch_id, f"batches/{batch.batch_id}/files/x.jpg"
    )
    object_store.put_bytes(claim.claimed_key, contents[crashed])
    assert plan_batches(object_store, catalog, kind="ingest", max_batches=1)[0].keys == tuple(
        k for k in sorted(contents) if k != crashed
    ), "a file held by a claim is not proposed to another batch"
    # Re-executed from the UI without its config (a backfill): it takes what it claimed.
    assert claim_batch_members(object_store, catalog, batch.batch_id, "ingest").inbox_keys == (
        crashed,
    )
    manifest = claim_planned(object_store, catalog, batch)  # with its config: the rest too
    assert sorted(manifest.inbox_keys) == sorted(contents)
    assert_moved_once(object_store, catalog, contents)


# ---------------------------------------------------------------------------- finding 6


def test_a_name_that_is_not_utf8_is_refused_by_name_and_the_rest_claimed(
    local_store: LocalObjectStore,
    catalog: Catalog,
    catalog_url: str,
    instance: dg.DagsterInstance,
) -> None:
    storage = StorageResource(data_dir=str(local_store.root.parent), database_url=catalog_url)
    folder = os.fsencode(local_store.root / "inbox")
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, LATIN1_NAME), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"\xff\xd8 not really a photo")
    os.close(fd)
    good = drop(local_store, [upload_key("good 1.jpg"), "inbox/zz-good.jpg"])

    result = evaluate(inbox_sensor, storage, instance)
    assert isinstance(result, dg.SensorResult), "one odd name never stops the sensor"
    # The run config holds the name escaped: valid UTF-8, storable in any run storage.
    json.dumps(result.run_requests[0].run_config, ensure_ascii=False).encode("utf-8")
    [manifest] = run_claims(storage, result, "ingest", "raw_images")

    shown = "inbox/holiday-\\xe9t\\xe9.jpg"
    assert sorted(manifest.inbox_keys) == sorted(good)
    [(name, reason)] = manifest.rejected
    assert name == shown and shown in reason and "UTF-8" in reason
    assert [c.status for c in catalog.inbox_key_claims("ingest", shown)] == ["rejected"]
    assert_moved_once(local_store, catalog, good)
    assert isinstance(evaluate(inbox_sensor, storage, instance), dg.SkipReason), (
        "a refused name is never proposed again"
    )


@pytest.mark.services
def test_unsafe_keys_written_through_s3_are_refused_and_the_rest_claimed(
    s3_store: S3ObjectStore, catalog: Catalog
) -> None:
    unsafe = ["inbox/0000-raw/.aindex-meta/evil.png", "inbox/tab\there.jpg", "inbox/zz\x7f.jpg"]
    for key in unsafe:  # the store refuses these keys: write them with the raw client
        s3_store.client.put_object(s3_store.bucket, key, io.BytesIO(b"x"), 1)
    good = drop(s3_store, [upload_key("good.jpg")])
    [manifest] = drain(s3_store, catalog)
    assert manifest.inbox_keys == tuple(good)
    reasons = dict(manifest.rejected)
    shown = ["inbox/0000-raw/.aindex-meta/evil.png", "inbox/tab\\x09here.jpg", "inbox/zz\\x7f.jpg"]
    assert sorted(reasons) == sorted(shown), "named, with control characters escaped"
    assert all(f"unsafe object name '{key}'" in reasons[key] for key in shown)
    assert drain(s3_store, catalog) == [], "refused names are never proposed again"
    for key in unsafe:
        s3_store.client.remove_object(s3_store.bucket, key)


def test_a_run_request_s_claim_config_merges_into_an_in_process_run_config() -> None:
    batch = PlannedBatch("20261201T090000Z-0a1b2c3d", "ingest", ("inbox/a.jpg",), (("x", "y"),))
    request = dg.RunRequest(
        partition_key=batch.batch_id, run_config=batch_run_config(batch, "raw_images")
    )
    base = {
        "ops": {"activated_images": {"config": {"iterations": 2}}},
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
    assert with_request_config(base, request) == {
        "ops": {
            "activated_images": {"config": {"iterations": 2}},
            "raw_images": {"config": {"inbox_keys": ["inbox/a.jpg"], "unsafe_keys": {"x": "y"}}},
        },
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
    }
