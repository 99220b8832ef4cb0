"""Copy detection: threshold calibration, the query sensor and job, verdicts, `aindex query`.

The acceptance test runs real packaged photos through the real pipeline on the embedded
default (inbox sensor, bootstrap job, query sensor, detection job); the S3 + PostgreSQL
piece runs the query sensor and the detection job on a small hand-built served index.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from PIL import Image

from aindex_assets import cli
from aindex_assets.definitions import build_definitions
from aindex_assets.defs import partitions
from aindex_assets.defs.claims import with_request_config
from aindex_assets.defs.copy_detection.assets import copy_threshold
from aindex_assets.defs.copy_detection.sensors import query_sensor
from aindex_assets.defs.ingest.sensors import inbox_sensor
from aindex_assets.defs.jobs import detect_copies_job
from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.copydetection import (
    TopMatch,
    calibrate_for_fpr,
    operating_point,
    passes,
    reranked_top_match,
    threshold_for_fpr,
)
from aindex_assets.lib.edits import Edit
from aindex_assets.lib.extractors import load_extractor
from aindex_assets.lib.images import content_hash, decode_image
from aindex_assets.lib.photos import small_demo_photos
from aindex_assets.services import reports
from aindex_assets.services.copy_detection import calibration, detection
from aindex_assets.services.copy_detection.detection import DetectionSetting
from aindex_assets.services.copy_detection.judge import judge_files
from aindex_assets.services.index import open_served
from aindex_assets.settings import Settings
from aindex_assets.storage.arrays import encode_descriptors
from aindex_assets.storage.catalog import Catalog, CopyThresholdRecord
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.keys import QUERY_INBOX_PREFIX, embeddings_key, original_key
from aindex_assets.storage.migrations import alembic_config, head_revision
from aindex_assets.storage.objectstore import open_object_store
from aindex_assets_tests.dagster_helpers import FAST_RUN_CONFIG, small_photos

HTML = b"<!DOCTYPE html><html><body>not an image</body></html>"
DISTRACTOR = partitions.DISTRACTOR_ID_BASE
DISTRACTORS = {"crops": 100, "crop_size": 96}


# ---------------------------------------------------------------------------- calibration


def test_calibration_sets_the_threshold_for_the_target_fpr_and_measures_the_rates() -> None:
    # 200 non-matches at distances 1..200 (and 20 that found no catalog image): 1% of 220
    # lets 2 through, so the threshold falls halfway between the 2nd and the 3rd.
    order = np.random.default_rng(1).permutation(200)
    non_matching = [TopMatch(0, 7, float(d + 1)) for d in order] + [None] * 20
    matching = [(i, TopMatch(0, i, 0.5 * i)) for i in range(10)]  # 0 .. 4.5
    matching[1] = (1, TopMatch(0, 99, 0.2))  # passes, but names the wrong image
    matching.append((10, None))  # never found: lowers the TPR only
    result = calibrate_for_fpr(matching, non_matching, target_fpr=0.01)
    assert result.threshold == pytest.approx(2.5) and result.resolved
    assert result.fpr == pytest.approx(2 / 220)
    assert result.tpr == pytest.approx(5 / 11)  # 0, 1.0, 1.5, 2.0, 2.5 are their own image
    assert result.precision == pytest.approx(5 / (5 + 1 + 2))
    assert (result.n_matching, result.n_non_matching) == (11, 220)
    assert "TPR 0.455 at FPR 0.009 (target 1.00%)" in result.note
    assert "resolved" not in result.note
    assert passes(2.4, result.threshold, False) and not passes(3.0, result.threshold, False)

    similar = calibrate_for_fpr(
        [(t, m and TopMatch(0, m.image_id, -m.score)) for t, m in matching],
        [m and TopMatch(0, 7, -m.score) for m in non_matching],
        higher_is_better=True,
    )
    assert similar.threshold == pytest.approx(-2.5) and similar.tpr == result.tpr


def test_calibration_says_when_the_rate_cannot_be_resolved() -> None:
    matching = [(1, TopMatch(0, 1, 0.1)), (2, TopMatch(0, 2, 0.9))]
    few = [TopMatch(0, 1, d) for d in (0.5, 0.6, 0.7)]  # 3 < 100 non-matches
    result = calibrate_for_fpr(matching, few, target_fpr=0.01)
    assert not result.resolved
    assert 0.5 - 1e-9 < result.threshold < 0.5  # just inside the closest non-match
    assert (result.tpr, result.fpr) == (0.5, 0.0)
    assert "target FPR 1.00% cannot be resolved: 3 non-matching queries" in result.note
    assert "fewer than the 100 it needs" in result.note
    enough = calibrate_for_fpr(matching, few * 400, target_fpr=0.001)  # 1,200 resolve 0.1%
    assert enough.resolved and "resolved" not in enough.note
    assert enough.threshold < 0.5  # one may pass, but 400 tie at 0.5: none does


def test_calibration_never_records_an_infinite_threshold() -> None:
    # No non-matching query found a catalog image: the non-matches set no bound.
    matching = [(1, TopMatch(0, 1, 0.3)), (2, TopMatch(0, 2, 0.8)), (3, TopMatch(0, 9, 1.5))]
    result = calibrate_for_fpr(matching, [None] * 150, target_fpr=0.01)
    assert result.threshold == 0.8 and result.resolved  # the loosest CORRECT match
    assert result.tpr == pytest.approx(2 / 3) and result.fpr == 0.0
    assert "no bound from the non-matching queries" in result.note
    nothing = calibrate_for_fpr([(1, None)], [None], target_fpr=0.01)
    assert nothing.threshold == 0.0 and not nothing.resolved  # only exact matches pass
    similar = calibrate_for_fpr([(1, TopMatch(0, 1, 0.7))], [], 0.01, higher_is_better=True)
    assert similar.threshold == 0.7 and similar.fpr is None
    assert calibrate_for_fpr([], [TopMatch(0, 1, 0.4)]).tpr is None
    with pytest.raises(ValueError, match="false-positive rate"):
        calibrate_for_fpr(matching, [], target_fpr=0.0)


def test_threshold_summary_flags_an_unresolved_rate() -> None:
    record = CopyThresholdRecord(
        id=3, index_version=1, served_index_id=2, metric="l2", k=10, nprobe=1,
        target_precision=None, threshold=0.5, reached=False, precision=1.0, recall=0.9,
        n_matching=96, n_non_matching=32, details={"note": "the note"},
        created_at=datetime.now(UTC), target_fpr=0.01, tpr=0.9, fpr=0.0,
    )  # fmt: skip
    assert not record.resolved
    summary = calibration.threshold_summary(record)
    assert summary.startswith("copy when top-match score <= 0.5000 (l2, index version 1")
    assert summary.endswith("UNRESOLVED false-positive rate: the note")
    assert calibration.threshold_summary(replace(record, reached=True)).endswith(": the note")
    document = calibration.threshold_document(record)
    assert document["target_fpr"] == 0.01 and document["resolved"] is False


def test_reranking_scores_candidates_on_their_original_descriptors() -> None:
    originals = {1: np.array([1.0, 0.0]), 2: np.array([0.0, 1.0])}
    query = np.array([0.1, 0.9])
    ids = np.array([1, DISTRACTOR, 2, -1, 7])  # 7: no stored descriptor, skipped
    top = reranked_top_match(query, ids, originals, DISTRACTOR)
    assert (top.rank, top.image_id, top.score) == (2, 2, pytest.approx(0.02))
    similar = reranked_top_match(query, ids, originals, DISTRACTOR, higher_is_better=True)
    assert (similar.image_id, similar.score) == (2, pytest.approx(0.9))
    assert reranked_top_match(query, np.array([DISTRACTOR, -1]), originals, DISTRACTOR) is None


def test_distractor_base_is_the_pipelines() -> None:
    assert detection.DISTRACTOR_ID_BASE == partitions.DISTRACTOR_ID_BASE
    assert calibration.DISTRACTOR_BATCH == partitions.DISTRACTOR_BATCH


# ---------------------------------------------------------------------------- catalog


def test_migration_0002_keeps_earlier_verdicts_and_reruns_replace(catalog_url: str) -> None:
    engine = sa.create_engine(catalog_url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        connection.execute(
            sa.text(
                "INSERT INTO batches (id, kind, status, n_files, source_prefix, created_at, "
                "updated_at) VALUES ('q1', 'query', 'open', 1, '', :t, :t)"
            ),
            {"t": "2026-11-27 00:00:00+00:00"},
        )
        connection.execute(
            sa.text(
                "INSERT INTO copy_detections (batch_id, query_key, is_copy, threshold, "
                "created_at) VALUES ('q1', 'queries/inbox/old.jpg', false, 0.5, :t)"
            ),
            {"t": "2026-11-27 00:00:00+00:00"},
        )
    engine.dispose()
    catalog = Catalog.open(catalog_url)
    assert catalog.schema_revision() == head_revision()
    [old] = catalog.copy_detections("q1")
    assert (old.query_key, old.matches, old.reason, old.threshold_id) == (
        "queries/inbox/old.jpg",
        None,
        None,
        None,
    )
    rows = [
        {"query_key": "queries/inbox/a.jpg", "is_copy": True, "threshold": 0.4, "score": 0.1},
        {"query_key": "queries/inbox/b.txt", "is_copy": False, "threshold": 0.4, "reason": "x"},
    ]
    for _ in range(2):  # a re-run replaces the batch's verdicts, never adds to them
        assert catalog.replace_copy_detections("q1", rows) == 2
    detections = catalog.copy_detections("q1")
    assert [(d.query_key, d.is_copy, d.reason) for d in detections] == [
        ("queries/inbox/a.jpg", True, None),
        ("queries/inbox/b.txt", False, "x"),
    ]
    catalog.close()


MIGRATION_0004_ROWS = [
    "INSERT INTO batches (id, kind, status, n_files, source_prefix, created_at, updated_at) "
    "VALUES ('q1', 'query', 'open', 1, '', :t, :t)",
    "INSERT INTO extractors (identity, spec, dim, input_size, details, created_at) "
    "VALUES ('e', 's', 4, 224, '{}', :t)",
    "INSERT INTO index_versions (id, factory, metric, dim, extractor_identity, n_train, "
    "training_set, created_at, is_active) VALUES (1, 'Flat', 'l2', 4, 'e', 1, '{}', :t, true)",
    "INSERT INTO served_indexes (id, index_version, object_key, ntotal, batch_ids, created_at, "
    "is_current) VALUES (1, 1, 'x', 1, '[]', :t, true)",
    "INSERT INTO copy_thresholds (index_version, served_index_id, metric, k, nprobe, "
    "target_precision, threshold, reached, n_matching, n_non_matching, details, created_at) "
    "VALUES (1, 1, 'l2', 10, 1, 0.9, 0.5, true, 8, 16, '{}', :t)",
    "INSERT INTO copy_detections (batch_id, query_key, is_copy, threshold, created_at, "
    "threshold_id) SELECT 'q1', 'queries/inbox/old.jpg', false, 0.5, :t, max(id) "
    "FROM copy_thresholds",
]


def test_migration_0004_keeps_precision_thresholds_and_their_verdicts(catalog_url: str) -> None:
    """SQLite recreates the table: verdicts pointing at a threshold must not block it."""
    engine = sa.create_engine(catalog_url)
    if catalog_url.startswith("sqlite"):  # as the catalog opens it
        sa.event.listen(engine, "connect", lambda c, _: c.execute("PRAGMA foreign_keys = ON"))
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0003")
        for statement in MIGRATION_0004_ROWS:
            connection.execute(sa.text(statement), {"t": "2026-12-01 00:00:00+00:00"})
    engine.dispose()
    catalog = Catalog.open(catalog_url)
    assert catalog.schema_revision() == head_revision()
    [old] = catalog.copy_thresholds()
    assert (old.target_precision, old.target_fpr, old.tpr, old.fpr) == (0.9, None, None, None)
    assert not old.resolved  # a precision threshold says nothing about a false-positive rate
    assert catalog.copy_detections("q1")[0].threshold_id == old.id
    assert catalog.copy_threshold(1, 10, 1, 0.01) is None  # detection never uses it
    new = catalog.record_copy_threshold(1, 1, "l2", 10, 1, 0.01, 0.4, True, 0.8, 0.01, 0.9, 96, 224)
    assert catalog.copy_threshold(1, 10, 1, 0.01) == new
    assert (new.target_precision, new.tpr, new.recall, new.fpr) == (None, 0.8, 0.8, 0.01)
    assert new.resolved and catalog.copy_threshold(1, 10, 1, 0.001) is None
    catalog.close()


# ---------------------------------------------------------------------------- pipeline


def tick(defs: dg.Definitions, instance: dg.DagsterInstance, sensor: dg.SensorDefinition):
    with dg.build_sensor_context(
        instance=instance, resources={"storage": defs.resources["storage"]}
    ) as context:
        return sensor(context)


def run_requested(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    result: dg.SensorResult,
    assets: list[dg.AssetKey] | None = None,
) -> list[dg.ExecuteInProcessResult]:
    """Apply a sensor result as the daemon would: partitions first, then one run each."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    outcomes = []
    for run in result.run_requests or []:
        job = defs.resolve_job_def(run.job_name)
        names = {node.name for node in job.graph.node_defs}
        # Fewer distractors than FAST_RUN_CONFIG: 4 indexed photos need no crowd of 200.
        ops = {**FAST_RUN_CONFIG["ops"], "index_distractors": {"config": DISTRACTORS}}
        config = {"ops": {k: v for k, v in ops.items() if k in names}}
        outcome = job.execute_in_process(
            instance=instance,
            partition_key=run.partition_key,
            run_config=with_request_config(config, run),
            asset_selection=assets,
        )
        assert outcome.success
        outcomes.append(outcome)
    return outcomes


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=80) if fmt == "JPEG" else image.save(buffer, format=fmt)
    return buffer.getvalue()


@dataclass
class Indexed:
    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    originals: dict[str, int]  # photo name -> image id
    edited: bytes  # an edited copy of the first activated image
    unrelated: bytes  # a packaged photo that was never ingested


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Indexed]:
    """4 real photos through the inbox sensor and the bootstrap job (no report: not needed)."""
    settings = Settings.from_env(
        {"AINDEX_DATA_DIR": str(tmp_path_factory.mktemp("copies") / "data")}, dotenv=None
    )
    defs = build_definitions(settings)
    store = open_object_store(settings)
    photos = small_photos(4)
    for name, data in photos:
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), data)
    pipeline = [
        dg.AssetKey(name)
        for name in (
            "training_embeddings",
            "trained_index",
            "index_distractors",
            "raw_images",
            "image_embeddings",
            "activated_images",
            "index_shard",
            "search_index",
        )
    ]
    with dg.instance_for_test() as instance:
        run_requested(defs, instance, tick(defs, instance, inbox_sensor), pipeline)
        catalog = Catalog.open(settings.database_url)
        originals = {
            i.source_key.rsplit("/", 1)[-1]: i.id
            for i in catalog.images_in_batch(catalog.batches(kind="ingest")[0].id)
        }
        first = catalog.activations()[0]
        activated = Image.open(io.BytesIO(store.get_bytes(first.object_key))).convert("RGB")
        edited = Edit("jpeg", 50)(Edit("brightness", 0.5)(activated))
        [(_, unrelated)] = small_demo_photos(1, 160, offset=34)
        yield Indexed(
            settings,
            defs,
            instance,
            originals,
            encode(edited, "JPEG"),
            unrelated,
        )


# The tests below share one indexed state. Those about the missing threshold come first in
# the file (pytest keeps file order); `calibrated` then records the one threshold that every
# later test uses.


def detect_run_config(batch_id: str, keys: list[str]) -> dict:
    """Run config of a `detect_copies` run for a batch of query inbox keys, as the sensor's."""
    claim = {"inbox_keys": keys, "unsafe_keys": {}}
    return {"ops": {"copy_detections": {"config": claim}}}


def test_without_a_threshold_the_query_sensor_waits_and_a_run_claims_nothing(
    indexed: Indexed,
) -> None:
    settings, defs, instance = indexed.settings, indexed.defs, indexed.instance
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    before = catalog.copy_thresholds()
    served = catalog.current_served_index()
    assert served is not None and before == []
    waiting = upload_key("waiting.jpg", prefix=QUERY_INBOX_PREFIX)
    store.put_bytes(waiting, indexed.edited)
    try:
        # The query sensor proposes nothing: the file waits in the query inbox.
        skipped = tick(defs, instance, query_sensor)
        assert isinstance(skipped, dg.SkipReason), skipped
        assert f"no copy threshold recorded for served index {served.id}" in (
            skipped.skip_message or ""
        )
        assert "materialized" in skipped.skip_message

        # A detection run started anyway fails before claiming anything.
        instance.add_dynamic_partitions(partitions.QUERY_BATCHES.name, ["q-no-threshold"])
        outcome = defs.resolve_job_def(detect_copies_job.name).execute_in_process(
            instance=instance,
            partition_key="q-no-threshold",
            run_config=detect_run_config("q-no-threshold", [waiting]),
            raise_on_error=False,
        )
        assert not outcome.success
        [failure] = [e for e in outcome.all_events if e.event_type_value == "STEP_FAILURE"]
        message = f"{failure.message} {failure.step_failure_data}"
        assert "no copy threshold recorded" in message and "`copy_threshold`" in message
        assert [info.key for info in store.list(QUERY_INBOX_PREFIX)] == [waiting]
        assert catalog.inbox_claims("q-no-threshold") == []
    finally:
        store.delete(waiting)
        instance.delete_dynamic_partition(partitions.QUERY_BATCHES.name, "q-no-threshold")
    assert catalog.copy_thresholds() == before, "nothing was calibrated"


def test_aindex_query_without_a_threshold_fails_saying_how_to_make_one(
    indexed: Indexed,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = Catalog.open(indexed.settings.database_url)
    served = catalog.current_served_index()
    before = catalog.copy_thresholds()
    assert before == []
    (tmp_path / "edited.jpg").write_bytes(indexed.edited)
    monkeypatch.setenv("AINDEX_DATA_DIR", str(indexed.settings.data_dir))
    monkeypatch.chdir(tmp_path)
    # NoThreshold (a LookupError), or the command's one-line failure once the CLI counts it
    # a user error.
    with pytest.raises((LookupError, SystemExit)) as raised:
        cli.main(["query", str(tmp_path / "edited.jpg")])
    text = str(raised.value)
    assert f"no copy threshold recorded for served index {served.id}" in text
    assert "materialize `copy_threshold` (the automation sensor does it" in text
    assert "dagster asset materialize -m aindex_assets.definitions --select copy_threshold" in text
    assert isinstance(raised.value, calibration.NoThreshold | SystemExit)
    with pytest.raises((LookupError, SystemExit), match='"k": 7'):
        cli.main(["query", str(tmp_path / "edited.jpg"), "--k", "7"])  # says which config
    assert catalog.copy_thresholds() == before, "nothing was calibrated"


@dataclass(frozen=True)
class Calibrated:
    threshold: CopyThresholdRecord
    metadata: dict


@pytest.fixture(scope="module")
def calibrated(indexed: Indexed) -> Calibrated:
    """`copy_threshold` materialized once on the indexed state (8 photos as negatives)."""
    result = dg.materialize(
        [copy_threshold],
        instance=indexed.instance,
        resources=indexed.defs.resources,
        run_config={"ops": {"copy_threshold": {"config": {"max_negatives": 8}}}},
    )
    assert result.success
    [threshold] = Catalog.open(indexed.settings.database_url).copy_thresholds()
    metadata = result.asset_materializations_for_node("copy_threshold")[0].metadata
    return Calibrated(threshold, {key: value.value for key, value in metadata.items()})


def test_threshold_is_set_for_the_target_fpr_and_recorded_with_tpr_and_fpr(
    indexed: Indexed, calibrated: Calibrated
) -> None:
    threshold, catalog = calibrated.threshold, Catalog.open(indexed.settings.database_url)
    assert threshold.served_index_id == catalog.current_served_index().id
    assert (threshold.k, threshold.nprobe, threshold.metric) == (10, 1, "l2")
    assert threshold.target_fpr == 0.01 and threshold.target_precision is None
    # 4 activated images x 2 edits; 8 unrelated photos x every one of the 14 edits.
    assert threshold.n_matching == 8 and threshold.n_non_matching == 8 * 14
    assert threshold.resolved, threshold.details["note"]  # 112 >= 1/1%
    assert threshold.fpr is not None and threshold.fpr <= 0.01
    assert threshold.tpr is not None and threshold.tpr == threshold.recall
    assert threshold.tpr >= 0.5, threshold.details["note"]
    assert threshold.details["negatives"] == "8 packaged photos not in the index"
    assert threshold.details["edits_per_negative"] == 14
    assert catalog.copy_threshold(threshold.served_index_id, 10, 1, 0.01) == threshold
    metadata = calibrated.metadata
    assert metadata["target_fpr"] == 0.01 and metadata["fpr_resolved"] is True
    # The UI shows rates to 0.1%.
    assert (metadata["tpr"], metadata["fpr"]) == (round(threshold.tpr, 3), round(threshold.fpr, 3))
    assert metadata["non_matching_queries"] == 112
    assert f"TPR {threshold.tpr:.3f} at FPR {threshold.fpr:.3f}" in metadata["calibration"]


def test_report_and_query_agree_on_the_same_served_index(
    indexed: Indexed, calibrated: Calibrated, tmp_path: Path
) -> None:
    """One score: the report's evaluation and `aindex query` re-rank the same shortlist."""
    settings = indexed.settings
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    extractor = load_extractor(settings.extractor_spec, device="cpu")
    served = open_served(store, catalog)
    first_id = catalog.activations()[0].image_id
    files = {"edited.jpg": indexed.edited, "unrelated.png": indexed.unrelated}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    judgement = judge_files(
        [tmp_path / name for name in files], store, catalog, extractor, DetectionSetting()
    )
    assert judgement.threshold == calibrated.threshold
    images = [decode_image(data, name).image for name, data in files.items()]
    result = reports.evaluate_on_served(
        store,
        catalog,
        extractor,
        served,
        images,
        None,
        [first_id, first_id],
        [],
        {"none": Edit("none")},
        reports.ReportSettings(),
    )
    assert result.reranked
    for verdict, match in zip(
        judgement.verdicts, result.top_matches[("none", "passive")], strict=True
    ):
        if verdict.image_id is None:  # only distractors among the top k, for both
            assert match is None, verdict
            continue
        assert (match.image_id, match.rank) == (verdict.image_id, verdict.rank), verdict
        assert match.score == pytest.approx(verdict.score, rel=1e-5, abs=1e-6), verdict
    edited = judgement.verdicts[0]
    assert edited.is_copy and edited.image_id == first_id
    assert result.per_query_ranks[("none", "passive")][0] == edited.rank


def test_query_batch_finds_the_edited_original_and_rejects_the_unrelated_photo(
    indexed: Indexed, calibrated: Calibrated
) -> None:
    settings, defs, instance = indexed.settings, indexed.defs, indexed.instance
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    first_id = catalog.activations()[0].image_id
    threshold = calibrated.threshold

    names = ["edited.jpg", "unrelated.png", "page.png", "empty.jpg"]
    for name, data in zip(names, [indexed.edited, indexed.unrelated, HTML, b""], strict=True):
        store.put_bytes(upload_key(name, prefix=QUERY_INBOX_PREFIX), data)
    result = tick(defs, instance, query_sensor)
    assert [r.job_name for r in result.run_requests] == [detect_copies_job.name]
    [outcome] = run_requested(defs, instance, result)
    batch_id = result.run_requests[0].partition_key
    assert instance.get_dynamic_partitions(partitions.QUERY_BATCHES.name) == [batch_id]
    assert list(store.list(QUERY_INBOX_PREFIX)) == []  # claimed files leave the query inbox
    claims = catalog.inbox_claims(batch_id)
    assert len(claims) == len(names) and {c.status for c in claims} == {"moved"}

    verdicts = {d.query_key.rsplit("/", 1)[-1]: d for d in catalog.copy_detections(batch_id)}
    assert sorted(verdicts) == sorted(names)
    edited, unrelated = verdicts["edited.jpg"], verdicts["unrelated.png"]
    assert edited.is_copy and edited.image_id == first_id, (edited, threshold)
    assert catalog.image(first_id).source_key in json.dumps(edited.matches)
    assert not unrelated.is_copy, (unrelated, threshold)
    assert edited.threshold_id == threshold.id and edited.index_version == threshold.index_version
    assert [m["rank"] for m in edited.matches][: edited.rank + 1] == list(range(edited.rank + 1))
    assert edited.matches[edited.rank]["image_id"] == first_id
    assert "HTML" in verdicts["page.png"].reason and not verdicts["page.png"].is_copy
    assert "empty" in verdicts["empty.jpg"].reason

    metadata = outcome.asset_materializations_for_node("copy_detections")[0].metadata
    assert metadata["copies"].value == 1 and metadata["rejected"].value == 2
    assert metadata["threshold_id"].value == threshold.id
    assert metadata["tpr"].value == threshold.tpr and metadata["fpr_resolved"].value
    assert "**copy**" in metadata["verdicts"].value
    result_key = f"queries/results/{batch_id}/t{threshold.id:08d}.json"
    assert metadata["object_key"].value == store.uri(result_key)
    document = json.loads(store.get_bytes(result_key))
    assert document["threshold"]["target_fpr"] == 0.01
    assert document["threshold"]["tpr"] == threshold.tpr
    assert [v["is_copy"] for v in document["verdicts"]] == [
        verdicts[Path(v["query_key"]).name].is_copy for v in document["verdicts"]
    ]

    # A re-run of the batch replaces its verdicts; the sensor has nothing new to claim.
    run_requested(defs, instance, result)
    again = catalog.copy_detections(batch_id)
    assert len(again) == len(names)
    assert {d.query_key: d.is_copy for d in again} == {
        d.query_key: d.is_copy for d in verdicts.values()
    }
    assert isinstance(tick(defs, instance, query_sensor), dg.SkipReason)
    assert len(catalog.copy_thresholds()) == 1, "the recorded threshold was reused"


def test_aindex_query_json_names_the_original_without_touching_the_inbox(
    indexed: Indexed,
    calibrated: Calibrated,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = indexed.settings
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    inbox_before = [info.key for info in store.list(QUERY_INBOX_PREFIX)]
    (tmp_path / "edited.jpg").write_bytes(indexed.edited)
    (tmp_path / "unrelated.png").write_bytes(indexed.unrelated)
    (tmp_path / "notes.txt").write_bytes(b"plain text, not a picture")
    monkeypatch.setenv("AINDEX_DATA_DIR", str(settings.data_dir))
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["query", str(tmp_path), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    results = {Path(r["query_key"]).name: r for r in payload["results"]}
    first = catalog.image(catalog.activations()[0].image_id)
    assert results["edited.jpg"]["is_copy"] and results["edited.jpg"]["image_id"] == first.id
    assert results["edited.jpg"]["source_key"] == first.source_key
    assert results["edited.jpg"]["score"] <= payload["threshold"]["value"]
    assert payload["threshold"]["id"] == calibrated.threshold.id
    assert payload["threshold"]["target_fpr"] == 0.01 and payload["threshold"]["resolved"]
    assert payload["threshold"]["fpr"] == calibrated.threshold.fpr
    assert "calibrated_now" not in payload["threshold"]
    assert not results["unrelated.png"]["is_copy"]
    assert results["notes.txt"]["reason"] and not results["notes.txt"]["is_copy"]
    assert payload["index_version"] == catalog.active_index_version().id
    assert [info.key for info in store.list(QUERY_INBOX_PREFIX)] == inbox_before

    assert cli.main(["query", str(tmp_path / "edited.jpg")]) == 0
    text = capsys.readouterr().out
    assert f"COPY of image {first.id} ({first.source_key})" in text
    assert text.startswith("copy when top-match score <= ") and "TPR " in text
    assert "calibrated one first" not in text
    assert len(catalog.copy_thresholds()) == 1
    with pytest.raises(SystemExit, match=r"nope\.jpg: no such file"):
        cli.main(["query", "nope.jpg"])


# ---------------------------------------------------------------------------- S3 + PostgreSQL


def hand_built_index(settings: Settings, photos: list[tuple[str, bytes]]) -> dict[str, int]:
    """A Flat served index of real photo descriptors, recorded as the pipeline would."""
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    extractor = load_extractor(settings.extractor_spec, device="cpu")
    catalog.create_batch("b1", "ingest", INBOX_PREFIX, len(photos))
    ids = {}
    for name, data in photos:
        key = original_key(content_hash(data), "PNG")
        store.put_bytes(key, data)
        ids[name], _ = catalog.register_image(
            content_hash(data), f"inbox/x/{name}", key, "b1", len(data), "PNG", 8, 8
        )
    images = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in photos]
    vectors = extractor.embed_images(images)
    id_array = np.array(list(ids.values()), dtype=np.int64)
    store.put_bytes(embeddings_key(extractor.identity, "b1"), encode_descriptors(id_array, vectors))
    catalog.upsert_extractor(extractor.identity, "efficientnet_lite0", extractor.dim, 224)
    version = catalog.create_index_version("Flat", "l2", extractor.dim, extractor.identity, 0)
    index = faiss_index.train_index("Flat", vectors[:1])
    store.put_bytes("indexes/t.faiss", faiss_index.serialize_index(index))
    catalog.activate_index_version(version, object_key="indexes/t.faiss")
    faiss_index.add_with_ids(index, vectors, id_array)
    store.put_bytes("indexes/s.faiss", faiss_index.serialize_index(index))
    catalog.set_served_index(version, "indexes/s.faiss", index.ntotal, ["b1"])
    for name, image_id in ids.items():  # the originals stand for their activated copies
        key = original_key(content_hash(dict(photos)[name]), "PNG")
        catalog.record_activation(image_id, version, extractor.identity, {}, 99, 1, 0, 0, 0, key)
    return ids


@pytest.mark.services
def test_query_sensor_and_job_on_s3_and_postgres(
    tmp_path: Path,
    s3_store_settings: dict[str, str],
    postgres_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        **s3_store_settings,
        "AINDEX_DATA_DIR": str(tmp_path),
        "AINDEX_DATABASE_URL": postgres_url,
    }
    for name, value in env.items():  # S3 keys reach the resource as environment references
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(env, dotenv=None)
    defs = build_definitions(settings)
    store = open_object_store(settings)
    store.put_bytes(upload_key("early.png", prefix=QUERY_INBOX_PREFIX), HTML)
    with dg.instance_for_test() as instance:
        skipped = tick(defs, instance, query_sensor)
        assert isinstance(skipped, dg.SkipReason) and "no served index" in skipped.skip_message
        ids = hand_built_index(settings, small_photos(3))
        copy = Edit("jpeg", 50)(Image.open(io.BytesIO(small_photos(1)[0][1])).convert("RGB"))
        store.put_bytes(upload_key("copy.jpg", prefix=QUERY_INBOX_PREFIX), encode(copy, "JPEG"))
        waiting = tick(defs, instance, query_sensor)  # served index, but no threshold yet
        assert isinstance(waiting, dg.SkipReason) and "no copy threshold" in waiting.skip_message
        # 6 negatives x 14 edits = 84 non-matching queries: too few to resolve 1%.
        calibrated = dg.materialize(
            [copy_threshold],
            instance=instance,
            resources=defs.resources,
            run_config={"ops": {"copy_threshold": {"config": {"max_negatives": 6}}}},
        )
        assert calibrated.success
        metadata = calibrated.asset_materializations_for_node("copy_threshold")[0].metadata
        assert metadata["fpr_resolved"].value is False
        assert "UNRESOLVED" in metadata["calibration"].value
        assert "84 non-matching queries, fewer than the 100" in metadata["calibration"].value
        result = tick(defs, instance, query_sensor)
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        [run] = result.run_requests
        outcome = defs.resolve_job_def(run.job_name).execute_in_process(
            instance=instance,
            partition_key=run.partition_key,
            run_config=with_request_config({}, run),
        )
        assert outcome.success
    catalog = Catalog.open(settings.database_url)
    verdicts = {Path(d.query_key).name: d for d in catalog.copy_detections(run.partition_key)}
    assert verdicts["copy.jpg"].is_copy
    assert verdicts["copy.jpg"].image_id == ids[small_photos(1)[0][0]]
    assert "HTML" in verdicts["early.png"].reason
    [threshold] = catalog.copy_thresholds()
    assert not threshold.resolved and threshold.n_non_matching == 84
    assert threshold.fpr == 0.0 and threshold.target_fpr == 0.01
    assert verdicts["copy.jpg"].threshold_id == threshold.id
    assert store.exists(f"queries/results/{run.partition_key}/t{threshold.id:08d}.json")


def test_fixed_fpr_threshold_on_a_known_case() -> None:
    """1,000 non-matches at distances 0..999: 1% FPR lets exactly the 10 closest through."""
    non_matching = [TopMatch(0, 5, float(d)) for d in np.random.default_rng(0).permutation(1000)]
    # Matching queries at distances 0.5, 5.5, ..., 95.5; the last one found the wrong image.
    matching = [(i, TopMatch(0, i, 0.5 + 5 * i)) for i in range(20)]
    matching[-1] = (19, TopMatch(0, 3, 0.1))
    point = operating_point(matching, non_matching, target_fpr=0.01)
    assert point.threshold == pytest.approx(9.5)
    assert point.fpr == pytest.approx(0.01) and point.resolved
    assert point.tpr == pytest.approx(2 / 20)  # 0.5 and 5.5 pass; the wrong match never counts
    tenth = operating_point(matching, non_matching, target_fpr=0.001)
    assert tenth.threshold == pytest.approx(0.5) and tenth.fpr == pytest.approx(0.001)
    similar = [TopMatch(0, 5, -m.score) for m in non_matching]
    flipped = operating_point(
        [(i, TopMatch(0, i, -m.score)) for i, m in matching], similar, 0.01, higher_is_better=True
    )
    assert flipped.threshold == pytest.approx(-9.5) and flipped.fpr == pytest.approx(0.01)


def test_fixed_fpr_says_when_too_few_negatives() -> None:
    ten = [TopMatch(0, 5, float(d)) for d in range(1, 11)]
    point = operating_point([(1, TopMatch(0, 1, 0.5))], ten, target_fpr=0.01)
    assert not point.resolved
    assert point.fpr == 0.0 and point.tpr == 1.0
    assert 0.5 < point.threshold < 1.0
    assert threshold_for_fpr([None, None], 0.5) == np.inf  # nothing found: everything may pass
