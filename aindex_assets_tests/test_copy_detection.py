"""Copy detection: threshold calibration, the query sensor and job, verdicts, `aindex query`.

The acceptance test runs real packaged photos through the real pipeline on the embedded
default (inbox sensor, bootstrap job, query sensor, detection job); the S3 + PostgreSQL
piece runs the query sensor and the detection job on a small hand-built served index.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
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
    calibrate_threshold,
    operating_point,
    passes,
    reranked_top_match,
    threshold_for_fpr,
)
from aindex_assets.lib.edits import Edit
from aindex_assets.lib.extractors import load_extractor
from aindex_assets.lib.images import content_hash
from aindex_assets.lib.photos import small_demo_photos
from aindex_assets.services.copy_detection import calibration, detection
from aindex_assets.settings import Settings
from aindex_assets.storage.arrays import encode_descriptors
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.keys import QUERY_INBOX_PREFIX, embeddings_key, original_key
from aindex_assets.storage.migrations import alembic_config, head_revision
from aindex_assets.storage.objectstore import open_object_store
from aindex_assets_tests.dagster_helpers import FAST_RUN_CONFIG, small_photos

HTML = b"<!DOCTYPE html><html><body>not an image</body></html>"
DISTRACTOR = partitions.DISTRACTOR_ID_BASE
DISTRACTORS = {"crops": 100, "crop_size": 96}


# ---------------------------------------------------------------------------- calibration


def test_calibration_picks_the_loosest_distance_at_the_target_precision() -> None:
    # Ranked by distance: TP .10, TP .20, FP(wrong image) .30, TP .40 ... TP .90, FP .95, FP 1.0
    matching = [(1, TopMatch(0, 1, 0.10)), (2, TopMatch(0, 2, 0.20)), (3, TopMatch(0, 9, 0.30))]
    matching += [(n, TopMatch(0, n, n / 10)) for n in range(4, 10)]
    matching.append((10, None))  # never found: lowers recall only
    non_matching = [TopMatch(0, 5, 0.95), TopMatch(1, 6, 1.0), None]
    result = calibrate_threshold(matching, non_matching, target_precision=0.8)
    # Precision after .90 is 8/9 (.889), after .95 it is 8/10 (.8), after 1.0 it is 8/11.
    assert result.reached
    assert result.threshold == pytest.approx((0.95 + 1.0) / 2)
    assert result.precision == pytest.approx(0.8)
    assert result.recall == pytest.approx(8 / 10)
    assert (result.n_matching, result.n_non_matching) == (10, 3)
    strict = calibrate_threshold(matching, non_matching, target_precision=0.9)
    assert strict.threshold == pytest.approx((0.2 + 0.3) / 2)  # before the wrong image
    assert strict.precision == 1.0 and strict.recall == pytest.approx(0.2)
    assert passes(0.25, strict.threshold, False) and not passes(0.3, strict.threshold, False)
    assert not passes(None, strict.threshold, False)


def test_calibration_with_similarities_and_its_conservative_fallbacks() -> None:
    matching = [(1, TopMatch(0, 1, 0.9)), (2, TopMatch(0, 2, 0.7))]
    similar = calibrate_threshold(matching, [TopMatch(0, 1, 0.8)], higher_is_better=True)
    assert similar.reached and similar.threshold == pytest.approx(0.85)

    unreachable = calibrate_threshold(matching, [TopMatch(0, 1, 0.95)], higher_is_better=True)
    assert not unreachable.reached and "unreachable" in unreachable.note
    assert 0.95 < unreachable.threshold < 0.95 + 1e-9  # just inside the closest non-match
    assert not passes(0.95, unreachable.threshold, True)

    nothing_indexed = calibrate_threshold([], [TopMatch(0, 1, 0.4), TopMatch(0, 2, 0.6)])
    assert not nothing_indexed.reached and "no matching queries" in nothing_indexed.note
    assert 0.4 - 1e-9 < nothing_indexed.threshold < 0.4
    assert calibrate_threshold([(1, None)], [None]).threshold == 0.0
    with pytest.raises(ValueError, match="target precision"):
        calibrate_threshold(matching, [], target_precision=0.0)


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
    assert catalog.schema_revision() == head_revision() == "0003"
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


def test_query_batch_finds_the_edited_original_and_rejects_the_unrelated_photo(
    indexed: Indexed,
) -> None:
    settings, defs, instance = indexed.settings, indexed.defs, indexed.instance
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    first_id = catalog.activations()[0].image_id
    calibration = dg.materialize(
        [copy_threshold],
        instance=instance,
        resources=defs.resources,
        run_config={"ops": {"copy_threshold": {"config": {"max_negatives": 8}}}},
    )
    assert calibration.success
    [threshold] = catalog.copy_thresholds()
    assert threshold.served_index_id == catalog.current_served_index().id
    assert threshold.n_matching == 8 and threshold.n_non_matching == 16
    assert threshold.details["negatives"] == "8 packaged photos not in the index"

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
    assert "**copy**" in metadata["verdicts"].value
    result_key = f"queries/results/{batch_id}/t{threshold.id:08d}.json"
    assert metadata["object_key"].value == store.uri(result_key)
    document = json.loads(store.get_bytes(result_key))
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
    assert not results["unrelated.png"]["is_copy"]
    assert results["notes.txt"]["reason"] and not results["notes.txt"]["is_copy"]
    assert payload["index_version"] == catalog.active_index_version().id
    assert [info.key for info in store.list(QUERY_INBOX_PREFIX)] == inbox_before

    assert cli.main(["query", str(tmp_path / "edited.jpg")]) == 0
    text = capsys.readouterr().out
    assert f"COPY of image {first.id} ({first.source_key})" in text
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
        result = tick(defs, instance, query_sensor)
        for request in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
        [run] = result.run_requests
        outcome = defs.resolve_job_def(run.job_name).execute_in_process(
            instance=instance,
            partition_key=run.partition_key,
            run_config=with_request_config(
                {"ops": {"copy_detections": {"config": {"max_negatives": 6}}}}, run
            ),
        )
        assert outcome.success
    catalog = Catalog.open(settings.database_url)
    verdicts = {Path(d.query_key).name: d for d in catalog.copy_detections(run.partition_key)}
    assert verdicts["copy.jpg"].is_copy
    assert verdicts["copy.jpg"].image_id == ids[small_photos(1)[0][0]]
    assert "HTML" in verdicts["early.png"].reason
    [threshold] = catalog.copy_thresholds()
    assert threshold.reached and threshold.n_non_matching == 12
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
