"""The Dagster layer on the embedded default: validation, the whole graph, the inbox sensor."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from aindex_assets import cli
from aindex_assets.definitions import build_definitions
from aindex_assets.defs.claims import with_request_config
from aindex_assets.defs.ingest.sensors import failed_batch_sensor, inbox_sensor
from aindex_assets.defs.jobs import activate_batch_job, bootstrap_job
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.resources import storage_from_settings
from aindex_assets.lib import index as faiss_index
from aindex_assets.settings import DEFAULT_EXTRACTOR, Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.objectstore import open_object_store
from aindex_assets_tests.dagster_helpers import FAST_RUN_CONFIG, small_photos


def job_config(defs: dg.Definitions, job_name: str) -> dict:
    """FAST_RUN_CONFIG restricted to the ops the job has (Dagster refuses config for others)."""
    job = defs.resolve_job_def(job_name)
    names = {node.name for node in job.graph.node_defs}
    return {"ops": {op: cfg for op, cfg in FAST_RUN_CONFIG["ops"].items() if op in names}}


def execute_sensor_result(
    defs: dg.Definitions, instance: dg.DagsterInstance, result: dg.SensorResult
) -> list[str]:
    """Apply a sensor result the way the daemon would: partitions first, then one run each."""
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    batches = []
    for run in result.run_requests or []:
        outcome = defs.resolve_job_def(run.job_name).execute_in_process(
            instance=instance,
            partition_key=run.partition_key,
            run_config=with_request_config(job_config(defs, run.job_name), run),
        )
        assert outcome.success
        batches.append(run.partition_key)
    return batches


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"AINDEX_DATA_DIR": str(tmp_path / "data")})


@pytest.fixture
def defs(settings: Settings) -> dg.Definitions:
    return build_definitions(settings)


def tick(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(
        instance=instance, resources={"storage": defs.resources["storage"]}
    ) as context:
        return inbox_sensor(context)


def drop(settings: Settings, photos: list[tuple[str, bytes]]) -> None:
    store = open_object_store(settings)
    for name, data in photos:
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), data)


@pytest.mark.parametrize("where", ["elsewhere", "checkout"])
def test_definitions_validate_with_dagster_cli(tmp_path: Path, where: str) -> None:
    """`dagster` commands work anywhere, the checkout included: run there they use a local
    instance, the production dagster.yaml (which needs DAGSTER_PG_* variables) lives under
    deploy/, not at the repository root."""
    repository = Path(__file__).resolve().parents[1]
    assert not (repository / "dagster.yaml").exists()
    completed = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-m",
            "aindex_assets.definitions",
        ],
        env={"PATH": "/usr/bin:/bin", "AINDEX_DATA_DIR": str(tmp_path), "HOME": str(tmp_path)},
        cwd=repository if where == "checkout" else tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_sensor_two_batches_then_duplicate(settings: Settings, defs: dg.Definitions) -> None:
    catalog = Catalog.open(settings.database_url)
    with dg.instance_for_test() as instance:
        assert isinstance(tick(defs, instance), dg.SkipReason)

        drop(settings, small_photos(3))
        first = tick(defs, instance)
        assert isinstance(first, dg.SensorResult)
        assert [r.job_name for r in first.run_requests] == [bootstrap_job.name]
        [batch_a] = execute_sensor_result(defs, instance, first)

        drop(settings, small_photos(2, offset=3))
        second = tick(defs, instance)
        assert [r.job_name for r in second.run_requests] == [activate_batch_job.name]
        [batch_b] = execute_sensor_result(defs, instance, second)

        assert set(instance.get_dynamic_partitions(INGEST_BATCHES.name)) == {batch_a, batch_b}
        version = catalog.active_index_version()
        shards = {s.batch_id: s for s in catalog.shards(version.id)}
        assert shards[batch_a].n_vectors == 3 and shards[batch_b].n_vectors == 2
        store = open_object_store(settings)
        served = catalog.current_served_index(version.id)
        merged = faiss_index.deserialize_index(store.get_bytes(served.object_key))
        image_ids = {i.id for b in (batch_a, batch_b) for i in catalog.images_in_batch(b)}
        assert image_ids <= set(faiss_index.stored_ids(merged))
        assert len(image_ids) == 5

        ntotal_before = merged.ntotal
        drop(settings, small_photos(1))  # the same bytes as an image of batch A
        [batch_c] = execute_sensor_result(defs, instance, tick(defs, instance))
        assert catalog.images_in_batch(batch_c) == []
        served = catalog.current_served_index(version.id)
        assert served.ntotal == ntotal_before
        assert catalog.count_images() == 5
        assert isinstance(tick(defs, instance), dg.SkipReason)


def test_batch_run_records_activation_report_and_checks(
    settings: Settings,
    defs: dg.Definitions,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    drop(settings, small_photos(4))
    drop(settings, [("broken page.png", b"<!DOCTYPE html><html><body>not an image</body></html>")])
    catalog = Catalog.open(settings.database_url)
    with dg.instance_for_test() as instance:
        result = tick(defs, instance)
        [run] = result.run_requests
        instance.add_dynamic_partitions(INGEST_BATCHES.name, [run.partition_key])
        outcome = defs.resolve_job_def(run.job_name).execute_in_process(
            instance=instance,
            partition_key=run.partition_key,
            run_config=with_request_config(job_config(defs, run.job_name), run),
        )
        assert outcome.success
        checks = {e.check_name: e.passed for e in outcome.get_asset_check_evaluations()}
        assert checks == {
            "psnr_above_floor": True,
            "shard_holds_batch_activations": True,
            "served_count_matches_catalog": True,
            "active_recall_not_below_passive": True,
        }
        activations = catalog.activations(batch_id=run.partition_key)
        assert len(activations) == 4
        store = open_object_store(settings)
        assert all(
            store.exists(a.object_key) and a.object_key.endswith(".png") for a in activations
        )
        assert {i.status for i in catalog.images_in_batch(run.partition_key)} == {"indexed"}
        [report] = catalog.reports(batch_id=run.partition_key, kind="robustness")
        assert report.payload["image_ids"] == sorted(a.image_id for a in activations)
        materialization = instance.get_latest_materialization_event(
            dg.AssetKey("activated_images")
        ).asset_materialization
        assert materialization.metadata["activated"].value == 4
        report_metadata = instance.get_latest_materialization_event(
            dg.AssetKey("robustness_report")
        ).asset_materialization.metadata
        # Locations are links in the UI, figures are rounded for reading.
        assert isinstance(report_metadata["html_report"], dg.PathMetadataValue)
        assert Path(report_metadata["html_report"].path).is_file()
        recall = report_metadata["recall_at_1_active"].value
        assert recall == round(recall, 3)

        monkeypatch.setenv("AINDEX_DATA_DIR", str(settings.data_dir))
        monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
        capsys.readouterr()
        assert cli.main(["status", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        [batch] = [b for b in status["batches"] if b["batch_id"] == run.partition_key]
        assert batch["counts"]["indexed"] == 4
        assert batch["status"] == "reported"
        [rejected] = batch["rejected"]
        assert "broken" in rejected["source_key"] and "HTML" in rejected["reason"]

        assert cli.main(["export", run.partition_key, str(tmp_path / "out"), "--json"]) == 0
        manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
        assert sorted(m["image_id"] for m in manifest) == sorted(a.image_id for a in activations)
        for entry in manifest:
            exported = (tmp_path / "out" / entry["file"]).read_bytes()
            assert exported == store.get_bytes(
                next(a.object_key for a in activations if a.image_id == entry["image_id"])
            )


def test_s3_credentials_stay_environment_references_in_resource_config() -> None:
    settings = Settings.from_env(
        {
            "AINDEX_OBJECT_STORE": "s3",
            "AINDEX_S3_ENDPOINT": "http://127.0.0.1:9",
            "AINDEX_S3_ACCESS_KEY": "access-visible-nowhere",
            "AINDEX_S3_SECRET_KEY": "secret-visible-nowhere",
            "AINDEX_DATABASE_URL": "postgresql://aindex:password-visible-nowhere@db/aindex",
        },
        dotenv=None,
    )
    resource = storage_from_settings(settings)
    assert isinstance(resource.s3_secret_key, dg.EnvVar)
    assert isinstance(resource.s3_access_key, dg.EnvVar)
    assert isinstance(resource.database_url, dg.EnvVar)
    assert "visible-nowhere" not in repr(resource) + repr(settings)


def test_a_model_url_with_a_token_stays_an_environment_reference_in_resource_config() -> None:
    spec = "torchscript:https://models.example.org/sscd.pt?token=token-visible-nowhere"
    settings = Settings.from_env({"AINDEX_EXTRACTOR": spec}, dotenv=None)
    resource = build_definitions(settings).resources["extractor"]
    assert isinstance(resource.spec, dg.EnvVar)
    assert "visible-nowhere" not in repr(resource)
    plain = build_definitions(Settings.from_env({}, dotenv=None)).resources["extractor"]
    assert plain.spec == DEFAULT_EXTRACTOR


def test_local_workspace_points_at_the_definitions() -> None:
    import importlib

    import yaml

    workspace = yaml.safe_load((Path(__file__).parents[1] / "workspace.yaml").read_text())
    [location] = workspace["load_from"]
    target = location["python_module"]
    module = importlib.import_module(target["module_name"])
    assert isinstance(getattr(module, target["attribute"]), dg.Definitions)


def test_failed_batch_sensor_marks_the_batch_of_a_failed_run(
    settings: Settings, defs: dg.Definitions
) -> None:
    """A run that failed (a killed worker included) leaves its batch `failed`, not at the
    stage it last reached, so that `aindex status` does not call a stalled batch healthy."""
    catalog = Catalog.open(settings.database_url)
    catalog.create_batch("b1", kind="ingest")
    catalog.advance_batch_status("b1", "embedded")
    with dg.instance_for_test() as instance:
        run = dg.DagsterRun(
            job_name=activate_batch_job.name,
            status=dg.DagsterRunStatus.FAILURE,
            tags={"dagster/partition": "b1"},
        )
        instance.add_run(run)
        context = dg.build_run_status_sensor_context(
            sensor_name=failed_batch_sensor.name,
            dagster_event=dg.DagsterEvent("PIPELINE_FAILURE", activate_batch_job.name),
            dagster_instance=instance,
            dagster_run=run,
        ).for_run_failure()
        failed_batch_sensor(context, storage=defs.resources["storage"])
        assert catalog.batch("b1").status == "failed"

        # A retry already under way: the failure of the run it replaces marks nothing.
        catalog.advance_batch_status("b1", "activated")
        retry = dg.DagsterRun(
            job_name=activate_batch_job.name,
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": "b1"},
        )
        instance.add_run(retry)
        failed_batch_sensor(context, storage=defs.resources["storage"])
        assert catalog.batch("b1").status == "activated"
