"""Index comparison: the lib function on real photos, its refusals, and the on-demand asset."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from aindex_assets.definitions import build_definitions
from aindex_assets.defs.jobs import compare_indexes_job
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.lib import photos
from aindex_assets.lib.activation import ActivationParams
from aindex_assets.lib.comparison import (
    check_factories,
    compare_indexes,
    default_factories,
    ivf_lists,
)
from aindex_assets.lib.edits import edits_by_name
from aindex_assets.lib.extractors import load_extractor
from aindex_assets.lib.index import IndexSpecError
from aindex_assets.services.comparison import REPORT_KIND
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.objectstore import open_object_store
from aindex_assets_tests.dagster_helpers import FAST_RUN_CONFIG, small_photos

FACTORIES = ["IVF4,PQ8x4", "PCA32,LSH", "Flat"]
EDITS = ["none", "jpeg_50", "center_crop_0.5"]


@pytest.fixture(scope="module")
def extractor():
    return load_extractor("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="module")
def corpus(extractor) -> tuple[np.ndarray, np.ndarray]:
    """(training, distractors): descriptors of small crops of the held-out photos."""
    _, held_out = photos.split_demo_photos()
    sources = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in held_out[:4]]
    for source in sources:
        source.thumbnail((256, 256))
    vectors = extractor.embed_images(photos.random_crops(sources, 160, 64, seed=0))
    return vectors[:120], vectors[120:]


@pytest.fixture(scope="module")
def batch(extractor) -> tuple[list[Image.Image], np.ndarray]:
    images = [Image.open(io.BytesIO(data)).convert("RGB") for _, data in small_photos(3, side=96)]
    return images, extractor.embed_images(images)


def run(extractor, corpus, batch, factories: list[str]):
    training, distractors = corpus
    images, features = batch
    return compare_indexes(
        images,
        features,
        [1, 2, 3],
        training,
        distractors,
        2**62 + np.arange(len(distractors)),
        extractor,
        factories,
        ActivationParams(iterations=2),
        edits_by_name(EDITS),
    )


def test_each_factory_is_evaluated_passive_and_active(extractor, corpus, batch) -> None:
    result = run(extractor, corpus, batch, FACTORIES)

    assert [f.factory for f in result.factories] == FACTORIES
    assert result.edits == EDITS and result.n_images == 3 and result.n_distractors == 40
    for factory in result.factories:
        assert {(r["edit"], r["variant"]) for r in factory.robustness.rows} == {
            (e, v) for e in EDITS for v in ("passive", "active")
        }
        assert factory.ntotal == 43 and factory.n_train == 120
        assert len(factory.psnr) == 3 and all(p >= 40.0 for p in factory.psnr)
        assert factory.activation_seconds > 0 and factory.evaluation_seconds > 0
        assert math.isclose(
            factory.gain, factory.recall_at_1("active") - factory.recall_at_1("passive")
        )
    flat = result.factory("Flat")
    assert flat.robustness.row("none", "passive")["recall_at_1"] == 1.0
    assert flat.code_bytes == 4 * extractor.dim
    assert result.factory("PCA32,LSH").code_bytes == 4  # 32 bits
    assert result.factory("IVF4,PQ8x4").code_bytes == 4  # 8 codes of 4 bits, no coarse code

    document = json.loads(result.to_json())
    assert [f["factory"] for f in document["factories"]] == FACTORIES
    assert document["factories"][2]["recall_at_1"]["passive"] == flat.recall_at_1("passive")
    table = result.to_markdown()
    assert table.splitlines()[0].startswith("| factory |") and "`PCA32,LSH`" in table
    assert len(result.per_edit_markdown().splitlines()) == 2 + len(FACTORIES)


def test_untrainable_factories_are_refused_before_any_work(extractor, corpus, batch) -> None:
    with pytest.raises(IndexSpecError) as refused:
        run(extractor, corpus, batch, ["Flat", "IVF1024,PQ8x8", "OPQ8,IVF4,PQ8x4", "IVF4,Bogus"])
    message = str(refused.value)
    assert "'IVF1024,PQ8x8' cannot be trained with the 120 available training vectors" in message
    assert "at least 1024" in message
    # Full-dimension OPQ with fewer vectors than dimensions would crash faiss: refused too.
    assert "'OPQ8,IVF4,PQ8x4' cannot be trained" in message
    assert "at least 1280 (OPQ to 1280 dimensions" in message
    assert "'IVF4,Bogus' is not a valid factory string" in message
    assert "Flat" not in message
    with pytest.raises(IndexSpecError, match="listed twice"):
        check_factories(["Flat", "Flat"], 100, 16)


def test_default_factories_are_sized_to_the_training_data() -> None:
    assert ivf_lists(3000) == 64 and ivf_lists(400) == 8 and ivf_lists(10) == 1
    assert default_factories(3000, "IVF32,PQ8x8") == [
        "IVF32,PQ8x8",
        "IVF64,PQ8x8",
        "OPQ8_64,IVF64,PQ8x8",
        "PCA64,LSH",
        "Flat",
    ]
    assert default_factories(3000, "IVF64,PQ8x8")[0] == "IVF64,PQ8x8"
    assert len(default_factories(3000, "IVF64,PQ8x8")) == 4
    check_factories(default_factories(3000, "IVF32,PQ8x8"), 3000, 1280)


def test_asset_runs_on_demand_after_the_first_batch(tmp_path: Path) -> None:
    settings = Settings.from_env({"AINDEX_DATA_DIR": str(tmp_path / "data")})
    defs = build_definitions(settings)
    store = open_object_store(settings)
    for name, data in small_photos(2, side=96):
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), data)
    comparison_config = {
        "factories": ["IVF8,PQ8x4", "PCA32,LSH", "Flat"],
        "edits": ["none", "jpeg_50"],
        "iterations": 1,
        "distractor_crops": 40,
        "distractor_crop_size": 64,
    }
    with dg.instance_for_test() as instance:
        batch_id = bootstrap(defs, instance)
        assert_on_demand_only(defs)
        outcome = defs.resolve_job_def(compare_indexes_job.name).execute_in_process(
            instance=instance,
            partition_key=batch_id,
            run_config={"ops": {"index_comparison": {"config": comparison_config}}},
        )
        assert outcome.success
        refused = defs.resolve_job_def(compare_indexes_job.name).execute_in_process(
            instance=instance,
            partition_key=batch_id,
            run_config={"ops": {"index_comparison": {"config": {"factories": ["IVF4096,PQ8x8"]}}}},
            raise_on_error=False,
        )
        assert not refused.success
        [failure] = [e for e in refused.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "cannot be trained with the 300 available" in str(failure.event_specific_data)
        metadata = outcome.asset_materializations_for_node("index_comparison")[0].metadata

    reports = Catalog.open(settings.database_url).reports(batch_id=batch_id, kind=REPORT_KIND)
    assert [r.payload["factory"] for r in reports] == comparison_config["factories"]
    assert {r.payload["comparison_id"] for r in reports} == {reports[0].id}
    assert all(len(r.rows) == 4 and r.object_key == reports[0].object_key for r in reports)
    flat = reports[2]
    assert next(r for r in flat.rows if (r.edit, r.variant) == ("none", "passive")).recall_at_1 == 1
    document = json.loads(store.get_bytes(reports[0].object_key))
    assert document["report_ids"] == [r.id for r in reports]
    assert len(document["image_ids"]) == 2
    assert "| `Flat` |" in metadata["table"].value
    assert metadata["report_ids"].value == [r.id for r in reports]


def bootstrap(defs: dg.Definitions, instance: dg.DagsterInstance) -> str:
    """The inbox sensor's first batch, run as the daemon would, up to what the comparison reads.

    Activation, shards and the robustness report of the batch are left out to keep the test
    short: the comparison reads only the originals, their descriptors and the training set.
    """
    from aindex_assets.defs.claims import with_request_config
    from aindex_assets.defs.ingest.sensors import inbox_sensor

    with dg.build_sensor_context(
        instance=instance, resources={"storage": defs.resources["storage"]}
    ) as context:
        [run_request] = inbox_sensor(context).run_requests
    instance.add_dynamic_partitions(INGEST_BATCHES.name, [run_request.partition_key])
    job = defs.resolve_job_def(run_request.job_name)
    needed = ["raw_images", "image_embeddings", "training_embeddings", "trained_index"]
    ops = {op: cfg for op, cfg in FAST_RUN_CONFIG["ops"].items() if op in needed}
    ops["training_embeddings"] = {"config": {"crops": 300, "crop_size": 64}}
    outcome = job.execute_in_process(
        instance=instance,
        partition_key=run_request.partition_key,
        run_config=with_request_config({"ops": ops}, run_request),
        asset_selection=[dg.AssetKey(name) for name in needed],
    )
    assert outcome.success
    return run_request.partition_key


def assert_on_demand_only(defs: dg.Definitions) -> None:
    """Neither a batch job nor an automation condition materializes the comparison."""
    for name in ("activate_batch", "bootstrap_and_activate_batch"):
        assert "index_comparison" not in {n.name for n in defs.resolve_job_def(name).graph.nodes}
    asset = defs.resolve_assets_def(dg.AssetKey("index_comparison"))
    assert asset.automation_conditions_by_key == {}
