"""Index versions: a retrain never makes a released image unfindable.

Finding: after `retrain_index` the served pointer switched to a new version that held only
the distractors, and edited copies of released images went from found to not found while
`aindex status` still said `indexed`. Now every live version stays searched, shards go to
the version their images were activated for, and `status` names the serving version.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from aindex_assets import cli
from aindex_assets.definitions import build_definitions
from aindex_assets.defs.copy_detection.assets import copy_threshold
from aindex_assets.defs.index.assets import trained_index
from aindex_assets.defs.index.checks import served_count_matches_catalog
from aindex_assets.defs.ingest.sensors import inbox_sensor
from aindex_assets.lib.edits import Edit
from aindex_assets.lib.extractors import load_extractor
from aindex_assets.services.copy_detection.detection import DetectionSetting
from aindex_assets.services.copy_detection.judge import judge_files
from aindex_assets.services.index import merge_results, open_served
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.objectstore import open_object_store
from aindex_assets_tests.dagster_helpers import FAST_RUN_CONFIG, small_photos
from aindex_assets_tests.test_copy_detection import DISTRACTORS, run_requested, tick


def test_merged_results_keep_the_best_score_of_each_id_and_pad_with_minus_one() -> None:
    first = (np.array([[0.1, 0.5, 0.9]], np.float32), np.array([[7, 3, 2**62]]))
    second = (np.array([[0.2, 0.3, 0.4]], np.float32), np.array([[2**62, 3, -1]]))
    scores, ids = merge_results([first, second], k=4, higher_is_better=False)
    assert ids.tolist() == [[7, 2**62, 3, -1]]
    assert scores[0, :3].tolist() == pytest.approx([0.1, 0.2, 0.3])
    scores, ids = merge_results([first, second], k=2, higher_is_better=True)
    assert ids.tolist() == [[2**62, 3]]


@dataclass
class Retrained:
    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    first_batch: str
    second_batch: str


def ingest(defs: dg.Definitions, instance: dg.DagsterInstance, settings: Settings, photos) -> str:
    store = open_object_store(settings)
    for name, data in photos:
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), data)
    result = tick(defs, instance, inbox_sensor)
    run_requested(defs, instance, result)
    return result.run_requests[0].partition_key


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Retrained]:
    """A batch released for version 1, a retrain, then a batch released for version 2."""
    settings = Settings.from_env(
        {"AINDEX_DATA_DIR": str(tmp_path_factory.mktemp("versions") / "data")}, dotenv=None
    )
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        first = ingest(defs, instance, settings, small_photos(3))
        ops = {**FAST_RUN_CONFIG["ops"], "index_distractors": {"config": DISTRACTORS}}
        retrain = defs.resolve_job_def("retrain_index")
        names = {node.name for node in retrain.graph.node_defs}
        config = {name: value for name, value in ops.items() if name in names}
        config["trained_index"] = {"config": {**ops["trained_index"]["config"], "retrain": True}}
        assert retrain.execute_in_process(instance=instance, run_config={"ops": config}).success
        second = ingest(defs, instance, settings, small_photos(2, offset=3))
        yield Retrained(settings, defs, instance, first, second)


def test_released_images_stay_findable_after_a_retrain(
    retrained: Retrained, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = open_object_store(retrained.settings)
    catalog = Catalog.open(retrained.settings.database_url)
    versions = {v.id: v for v in catalog.index_versions()}
    assert len(versions) == 2 and catalog.active_index_version().id == 2
    by_batch = {
        batch: {a.index_version for a in catalog.activations(batch_id=batch)}
        for batch in (retrained.first_batch, retrained.second_batch)
    }
    assert by_batch == {retrained.first_batch: {1}, retrained.second_batch: {2}}

    served = open_served(store, catalog)
    assert [p.version.id for p in served.parts] == [2, 1]
    assert retrained.first_batch in served.served_batches()[1]

    assert dg.materialize(
        [copy_threshold],
        instance=retrained.instance,
        resources=retrained.defs.resources,
        run_config={"ops": {"copy_threshold": {"config": {"max_negatives": 8}}}},
    ).success
    folder = tmp_path_factory.mktemp("suspects")
    paths, truth = [], []
    for activation in catalog.activations():
        image = Image.open(io.BytesIO(store.get_bytes(activation.object_key))).convert("RGB")
        path = folder / f"{activation.image_id}.jpg"
        Edit("jpeg", 50)(image).save(path, format="JPEG", quality=90)
        paths.append(path)
        truth.append(activation.image_id)
    extractor = load_extractor(retrained.settings.extractor_spec)
    judgement = judge_files(paths, store, catalog, extractor, DetectionSetting())
    found = [v.image_id for v in judgement.verdicts]
    assert found == truth, "every released image, of either version, is found"


def test_status_names_the_version_each_batch_is_served_from(retrained: Retrained) -> None:
    catalog = Catalog.open(retrained.settings.database_url)
    payload = cli.status_payload(catalog, 0, runs=[])
    served = {b["batch_id"]: b["served_from_versions"] for b in payload["batches"]}
    assert served == {retrained.first_batch: [1], retrained.second_batch: [2]}
    text = cli.status_text(payload)
    assert f"{retrained.first_batch}: reported (indexed=3); served from v1" in text
    check = served_count_matches_catalog(storage=retrained.defs.resources["storage"])
    assert check.passed, check.metadata


def test_a_new_version_must_keep_the_extractor_and_metric(retrained: Retrained) -> None:
    ops = {"trained_index": {"config": {"factory": "IVF8,PQ8x4", "metric": "ip", "retrain": True}}}
    result = dg.materialize(
        [trained_index],
        instance=retrained.instance,
        resources=retrained.defs.resources,
        run_config={"ops": ops},
        raise_on_error=False,
    )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data.error.message
    assert "serves released images" in failure and "metric" in failure, failure
    assert Catalog.open(retrained.settings.database_url).active_index_version().id == 2
