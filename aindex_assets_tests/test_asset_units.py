"""Fast tests of single assets and checks on the embedded default (local folder + SQLite).

Each asset is materialized alone with `dg.materialize` on an ephemeral instance, or its
check called directly: the domain errors of the services must reach the UI as one
readable `dg.Failure`, and an empty batch must be a no-op, not a crash.
"""

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from aindex_assets.defs.activation.assets import activated_images
from aindex_assets.defs.copy_detection.assets import copy_threshold
from aindex_assets.defs.index.assets import (
    index_distractors,
    index_shard,
    search_index,
    trained_index,
    training_embeddings,
)
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.reports.assets import robustness_report
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.lib import index as faiss_index
from aindex_assets.services.index import (
    register_extractor,
    require_active_version,
    train_version,
)
from aindex_assets.storage.arrays import encode_descriptors
from aindex_assets.storage.keys import training_embeddings_key


@pytest.fixture
def storage(tmp_path: Path) -> StorageResource:
    return StorageResource(data_dir=str(tmp_path / "data"))


def materialize_alone(
    asset: dg.AssetsDefinition,
    storage: StorageResource,
    partition: str | None = None,
    config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    if partition:
        instance.add_dynamic_partitions(INGEST_BATCHES.name, [partition])
    return dg.materialize(
        [asset],
        resources={"storage": storage, "extractor": ExtractorResource(device="cpu")},
        instance=instance,
        partition_key=partition,
        run_config={"ops": {asset.node_def.name: {"config": config}}} if config else None,
        raise_on_error=False,
    )


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    [event] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return event.step_failure_data.error.message


@pytest.mark.parametrize("asset", [search_index, copy_threshold])
def test_no_index_is_a_readable_failure(asset: dg.AssetsDefinition, storage) -> None:
    result = materialize_alone(asset, storage)
    assert not result.success
    assert "no trained index" in failure_text(result)


def test_shard_without_index_names_what_to_materialize(storage) -> None:
    result = materialize_alone(index_shard, storage, partition="20260101T000000Z-aaaa")
    assert not result.success
    assert "materialize `trained_index` first" in failure_text(result)


def test_trained_index_without_training_descriptors_says_which(storage) -> None:
    result = materialize_alone(trained_index, storage)
    assert not result.success
    assert "no training descriptors for this extractor" in failure_text(result)


@pytest.mark.parametrize("asset", [training_embeddings, index_distractors])
def test_production_refuses_to_train_on_packaged_photos(
    asset: dg.AssetsDefinition, tmp_path: Path
) -> None:
    """Outside the embedded default (here: said explicitly) an empty `training/images/`
    fails the asset, saying what to put there, instead of training on the demo photos."""
    storage = StorageResource(data_dir=str(tmp_path / "data"), packaged_photos=False)
    if asset is index_distractors:  # needs an index version first
        store, catalog = storage.store(), storage.catalog()
        extractor = ExtractorResource(device="cpu").load()
        register_extractor(catalog, extractor, "sscd_distilled")
        vectors = np.random.default_rng(0).standard_normal((64, extractor.dim))
        key = training_embeddings_key(extractor.identity)
        store.put_bytes(key, encode_descriptors(np.arange(64), vectors.astype(np.float32)))
        train_version(store, catalog, extractor, "IVF2,Flat", "l2")
    result = materialize_alone(asset, storage)
    assert not result.success
    message = failure_text(result)
    assert "training/images/ in the object store holds no usable image" in message
    assert "AINDEX_PACKAGED_PHOTOS=allow" in message


def test_release_format_and_quality_are_checked_before_activating(storage) -> None:
    """An unknown release format is refused by the run's config (the launchpad offers the
    choices); a quality out of range fails the run on one line that names the field."""
    batch = "20260101T000000Z-cccc"
    with pytest.raises(dg.DagsterInvalidConfigError, match="config:release_format not in enum"):
        materialize_alone(activated_images, storage, batch, {"release_format": "gif"})
    config = {"release_format": "jpeg", "release_quality": 101}
    result = materialize_alone(activated_images, storage, batch, config)
    assert not result.success
    assert "release_quality 101 is not within 1-100" in failure_text(result)


def test_report_of_a_batch_without_activations_is_a_note(storage) -> None:
    result = materialize_alone(robustness_report, storage, partition="20260101T000000Z-bbbb")
    assert result.success
    [materialization] = result.asset_materializations_for_node("robustness_report")
    assert materialization.metadata["note"].value == "no activated images in this batch"


def test_served_index_of_a_version_without_batches_is_empty(storage) -> None:
    store, catalog = storage.store(), storage.catalog()
    extractor = ExtractorResource(device="cpu").load()
    vectors = np.random.default_rng(0).standard_normal((300, extractor.dim)).astype("float32")
    store.put_bytes(
        training_embeddings_key(extractor.identity),
        encode_descriptors(np.arange(len(vectors)), vectors),
    )
    register_extractor(catalog, extractor, "efficientnet_lite0")
    train_version(store, catalog, extractor, "IVF4,Flat", "l2")
    result = materialize_alone(search_index, storage)
    assert result.success
    [materialization] = result.asset_materializations_for_node("search_index")
    assert materialization.metadata["ntotal"].value == 0
    served = catalog.current_served_index(require_active_version(catalog).id)
    index = faiss_index.deserialize_index(store.get_bytes(served.object_key))
    assert index.ntotal == 0 and index.is_trained
