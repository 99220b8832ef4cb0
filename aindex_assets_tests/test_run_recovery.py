"""A run worker killed mid-batch: the run fails, its pool slot is freed, a retry finishes it.

A real `dagster-daemon` (run queue, sensors, run monitoring, run retries) runs against an
instance configured with the project's own settings (the embedded default written by
`aindex_assets.instance`, or the production `deploy/dagster.yaml`), only its intervals
shortened. The daemon loads THIS module as its code location (the environment variable
`AINDEX_TEST_RECOVERY_DIR` says so), whose first run holds inside its pooled step until
the test SIGKILLs the run worker, as the out-of-memory killer would. The test then waits,
every wait bounded, for: the run marked FAILURE, the `aindex_activation` pool slot free
again, an automatic retry launched and successful, the work done exactly once, and no
temporary `.aindex-tmp-*` object left. Every process the test starts is in the daemon's
process group and killed with it.

- `test_killed_run_recovers_on_the_embedded_default` (default suite, under a minute): the
  embedded default's instance (SQLite) and a one-step job in the activation pool whose
  worker is killed in the middle of a local-store upload.
- `test_killed_batch_run_recovers_on_postgres_and_s3` (slow, about 5 min on 2 cores): the
  production config on PostgreSQL and SeaweedFS, the real inbox sensor and the real
  `activate_batch` job, killed during activation.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from aindex_assets.defs.jobs import BATCH_RUN_TAGS
from aindex_assets.defs.partitions import ACTIVATION_POOL
from aindex_assets.instance import LOCAL_INSTANCE_YAML
from aindex_assets_tests.servers import stop_process_group

REPO = Path(__file__).resolve().parents[1]
PRODUCTION_INSTANCE_YAML = REPO / "deploy" / "dagster.yaml"
LOCATION_ENV = "AINDEX_TEST_RECOVERY_DIR"  # set: this module is the daemon's code location
KIND_ENV = "AINDEX_TEST_RECOVERY_KIND"  # "step" (one pooled step) or "batch" (the real job)
HELD = "held.pid"  # written by the run worker that holds, with its pid
HOLD_SECONDS = 600
RESULT_FOLDER = "results/"
PARENT_RUN_ID_TAG = "dagster/parent_run_id"
RETRY_NUMBER_TAG = "dagster/retry_number"


# --- The code location the daemon loads ------------------------------------------------


def hold() -> None:
    """Wait here until killed (bounded, so a test that fails to kill leaks nothing for ever)."""
    deadline = time.monotonic() + HOLD_SECONDS
    while time.monotonic() < deadline:
        time.sleep(0.2)


class HeldUpload:
    """A readable stream whose second read holds: the upload is killed half written."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.sent = False

    def read(self, size: int = -1) -> bytes:
        if not self.sent:
            self.sent = True
            return b"the first part of an upload"
        self.marker.write_text(str(os.getpid()))
        hold()
        return b""


def step_location(folder: Path) -> dg.Definitions:
    """One step in the activation pool, in a job with the batch jobs' run tags."""
    from aindex_assets.storage.objectstore import LocalObjectStore
    from aindex_assets.storage.sweep import sweep_temporaries

    store = LocalObjectStore(folder / "objects")

    @dg.asset(pool=ACTIVATION_POOL)
    def pooled_step() -> None:
        key = RESULT_FOLDER + "result.bin"
        marker = folder / HELD
        if not marker.exists():
            store.put_stream(key, HeldUpload(marker))  # type: ignore[arg-type]  # killed here
        # What the next run of a batch does before writing (services.activation).
        sweep_temporaries(store, RESULT_FOLDER, older_than=timedelta(seconds=1))
        store.put_bytes(key, b"complete")

    job = dg.define_asset_job("pooled_job", selection=[pooled_step], tags=BATCH_RUN_TAGS)

    @dg.sensor(job=job, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
    def launch_once() -> dg.RunRequest:
        return dg.RunRequest(run_key="once")  # a run key is launched once, whatever the ticks

    # In process, as the project's definitions: the run worker is the process that holds.
    return dg.Definitions(
        assets=[pooled_step], jobs=[job], sensors=[launch_once], executor=dg.in_process_executor
    )


def batch_location(folder: Path) -> dg.Definitions:
    """The project's definitions; the first activation in any run holds."""
    import aindex_assets.services.activation as service
    from aindex_assets.definitions import defs as project_defs

    real_activate = service.activate

    def held_activate(*args: Any, **kwargs: Any) -> Any:
        marker = folder / HELD
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            hold()
        return real_activate(*args, **kwargs)

    service.activate = held_activate
    # The leftovers the test plants are seconds old when the retry sweeps.
    service.TEMPORARY_MAX_AGE = timedelta(seconds=2)
    return project_defs


if os.environ.get(LOCATION_ENV):
    defs = (batch_location if os.environ.get(KIND_ENV) == "batch" else step_location)(
        Path(os.environ[LOCATION_ENV])
    )


# --- Helpers of the tests ---------------------------------------------------------------


def with_test_intervals(config: dict[str, Any]) -> dict[str, Any]:
    """The instance settings with the daemon's intervals shortened, nothing added: a setting
    missing from the project's config stays missing (and the test then fails)."""
    monitoring = config.get("run_monitoring", {})
    for name in ("poll_interval_seconds", "free_slots_after_run_end_seconds"):
        if name in monitoring:
            monitoring[name] = 1
    return config


def log_tail(path: Path, lines: int = 40) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def wait_for(
    predicate: Callable[[], Any], timeout: float, what: str, daemon: subprocess.Popen, log: Path
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        assert daemon.poll() is None, f"dagster-daemon exited early:\n{log_tail(log)}"
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}:\n{log_tail(log)}")


@contextmanager
def running_daemon(
    tmp_path: Path, home: Path, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen, Path]]:
    """dagster-daemon with this module as its code location, in its own process group."""
    workspace = tmp_path / "workspace.yaml"
    location = {"module_name": __name__, "working_directory": str(REPO)}
    workspace.write_text(yaml.safe_dump({"load_from": [{"python_module": location}]}))
    log_path = tmp_path / "daemon.log"
    daemon_env = {
        **os.environ,
        **env,
        "DAGSTER_HOME": str(home),
        LOCATION_ENV: str(tmp_path),
        # The retry daemon's own tick (5 s by default): test speed only.
        "DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1",
    }
    with log_path.open("w") as log:
        daemon = subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
            env=daemon_env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the code server and the run workers join its group
        )
        try:
            yield daemon, log_path
        finally:
            stop_process_group(daemon, "the daemon's")


def kill_held_worker(
    tmp_path: Path,
    instance: dg.DagsterInstance,
    job_name: str,
    daemon: subprocess.Popen,
    log: Path,
) -> dg.DagsterRun:
    """SIGKILL the run worker holding in its pooled step; returns its run."""
    marker = tmp_path / HELD
    wait_for(marker.exists, 300, "a run worker to hold in its pooled step", daemon, log)
    pid = int(wait_for(lambda: marker.read_text().strip(), 10, "the held pid", daemon, log))
    started = dg.RunsFilter(job_name=job_name, statuses=[dg.DagsterRunStatus.STARTED])
    (held,) = instance.get_runs(filters=started)
    claimed = instance.event_log_storage.get_concurrency_info(ACTIVATION_POOL).active_run_ids
    if pool_granularity(instance) == "op":
        # The step holds the pool's only slot: every later run's step would wait for it.
        assert claimed == {held.run_id}
    else:
        # The run holds the pool as long as it is in progress (no step claims a slot).
        assert ACTIVATION_POOL in held.run_op_concurrency.all_pools and not claimed
    os.kill(pid, signal.SIGKILL)
    return held


def pool_granularity(instance: dg.DagsterInstance) -> str:
    """`op` (Dagster's default: each pooled step claims a slot) or `run`."""
    granularity = instance.get_concurrency_config().pool_config.pool_granularity
    return granularity.value if granularity else "op"


def wait_for_recovery(
    instance: dg.DagsterInstance,
    held: dg.DagsterRun,
    daemon: subprocess.Popen,
    log: Path,
    retry_timeout: float,
) -> tuple[dg.DagsterRun, dict[str, float]]:
    """The killed run fails, its slot is freed, its retry succeeds; elapsed seconds of each."""
    killed_at = time.monotonic()

    def status() -> dg.DagsterRunStatus:
        return instance.get_run_by_id(held.run_id).status

    wait_for(
        lambda: status() == dg.DagsterRunStatus.FAILURE, 60, "the killed run to fail", daemon, log
    )
    failed_after = time.monotonic() - killed_at

    def slot_free() -> bool:
        info = instance.event_log_storage.get_concurrency_info(ACTIVATION_POOL)
        return held.run_id not in info.active_run_ids

    wait_for(slot_free, 120, "the dead run's pool slot to be freed", daemon, log)
    freed_after = time.monotonic() - killed_at

    def retry() -> dg.DagsterRun | None:
        runs = instance.get_runs(filters=dg.RunsFilter(tags={PARENT_RUN_ID_TAG: held.run_id}))
        done = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS]
        failed = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
        assert not failed, f"the retry failed:\n{log_tail(log)}"
        return done[0] if done else None

    retried = wait_for(retry, retry_timeout, "the automatic retry to succeed", daemon, log)
    elapsed = {
        "failed": round(failed_after, 1),
        "slot_freed": round(freed_after, 1),
        "retry_succeeded": round(time.monotonic() - killed_at, 1),
    }
    print(f"recovery after the kill (s): {elapsed}")
    return retried, elapsed


def assert_retry_of(retried: dg.DagsterRun, held: dg.DagsterRun, job_name: str) -> None:
    assert retried.job_name == held.job_name == job_name
    assert retried.tags[RETRY_NUMBER_TAG] == "1"
    for name, value in BATCH_RUN_TAGS.items():  # the job's retry policy reached both runs
        assert held.tags[name] == retried.tags[name] == value


# --- The tests -------------------------------------------------------------------------


def test_killed_run_recovers_on_the_embedded_default(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    config = with_test_intervals(yaml.safe_load(LOCAL_INSTANCE_YAML))
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    store_root = tmp_path / "objects"

    with (
        running_daemon(tmp_path, home, {KIND_ENV: "step"}) as (daemon, log),
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        held = kill_held_worker(tmp_path, instance, "pooled_job", daemon, log)
        # The killed upload left its temporary file.
        assert list(store_root.rglob(".aindex-tmp-*"))
        retried, elapsed = wait_for_recovery(instance, held, daemon, log, retry_timeout=240)
        assert_retry_of(retried, held, "pooled_job")
        assert len(instance.get_runs()) == 2  # one retry, nothing else
        assert not instance.event_log_storage.get_concurrency_info(ACTIVATION_POOL).active_run_ids

    assert (store_root / RESULT_FOLDER / "result.bin").read_bytes() == b"complete"
    assert not list(store_root.rglob(".aindex-tmp-*"))
    # Bounded by the waits: failed within 60 s of the kill, slot free within 120 s (a loaded
    # 2-core machine; about 1 s and 3 s when it is idle, as printed).
    assert elapsed["failed"] <= elapsed["slot_freed"] <= elapsed["retry_succeeded"], elapsed


@pytest.mark.slow
@pytest.mark.services
def test_killed_batch_run_recovers_on_postgres_and_s3(
    tmp_path: Path,
    s3_store_settings: dict[str, str],
    postgres_url_factory: Callable[[str], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aindex_assets.definitions import build_definitions
    from aindex_assets.defs.jobs import BOOTSTRAP_ASSETS
    from aindex_assets.services.activation import release_folders
    from aindex_assets.settings import Settings
    from aindex_assets.storage.catalog import Catalog
    from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
    from aindex_assets.storage.objectstore import open_object_store
    from aindex_assets_tests.dagster_helpers import FAST_RUN_CONFIG, small_photos

    env = {
        **s3_store_settings,
        "AINDEX_DATA_DIR": str(tmp_path / "data"),
        "AINDEX_DATABASE_URL": postgres_url_factory("catalog"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(env)
    project = build_definitions(settings)
    ops = {k: v for k, v in FAST_RUN_CONFIG["ops"].items() if k in BOOTSTRAP_ASSETS}
    bootstrap = dg.materialize(
        [project.resolve_assets_def(key) for key in BOOTSTRAP_ASSETS], run_config={"ops": ops}
    )
    assert bootstrap.success

    # The production instance settings, on the test's PostgreSQL and folders.
    config = with_test_intervals(yaml.safe_load(PRODUCTION_INSTANCE_YAML.read_text()))
    config["storage"] = {"postgres": {"postgres_url": postgres_url_factory("dagster")}}
    home = tmp_path / "dagster_home"
    for name in ("compute_logs", "local_artifact_storage"):
        config[name]["config"]["base_dir"] = str(home / "storage")
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))

    store = open_object_store(settings)
    photos = small_photos(2)
    for name, data in photos:
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), data)
    catalog = Catalog.open(settings.database_url)
    client, bucket = store.client, store.bucket  # type: ignore[attr-defined]

    with (
        running_daemon(tmp_path, home, {**env, KIND_ENV: "batch"}) as (daemon, log),
        dg.DagsterInstance.from_config(str(home)) as instance,
    ):
        held = kill_held_worker(tmp_path, instance, "activate_batch", daemon, log)
        batch_id = held.tags["dagster/partition"]
        images = catalog.images_in_batch(batch_id)
        assert len(images) == len(photos) and not catalog.activations(batch_id=batch_id)
        # What a worker killed while uploading a release leaves where releases go: a
        # temporary object and an incomplete multipart upload.
        folder = release_folders(catalog.active_index_version().id, images)[0]
        client.put_object(bucket, f"{folder}.aindex-tmp-0123456789abcdef", io.BytesIO(b"tmp"), 3)
        client._create_multipart_upload(bucket, f"{folder}big.png", {})
        retried, elapsed = wait_for_recovery(instance, held, daemon, log, retry_timeout=600)
        assert_retry_of(retried, held, "activate_batch")

    activations = catalog.activations(batch_id=batch_id)
    assert sorted(a.image_id for a in activations) == sorted(i.id for i in images)  # once each
    assert catalog.count_images(status="indexed") == len(photos)
    pngs = sorted(info.key for info in store.list("activated/"))
    assert pngs == sorted(a.object_key for a in activations)
    leftovers = [
        o.object_name
        for o in client.list_objects(bucket, recursive=True)
        if ".aindex-tmp-" in (o.object_name or "")
    ]
    assert leftovers == []
    assert client._list_multipart_uploads(bucket).uploads == []
    # Bounded by the waits: failed within 60 s of the kill, slot free within 120 s (a loaded
    # 2-core machine; about 1 s and 3 s when it is idle, as printed).
    assert elapsed["failed"] <= elapsed["slot_freed"] <= elapsed["retry_succeeded"], elapsed


def test_local_instance_config_is_written_and_brought_up_to_date(tmp_path, monkeypatch) -> None:
    """`aindex ui`/`aindex demo` write the embedded default's dagster.yaml; one written by
    an earlier version (without run monitoring and retries) is replaced, one edited by hand
    is kept."""
    from aindex_assets.instance import PREVIOUS_LOCAL_INSTANCE_YAMLS, dagster_home
    from aindex_assets.settings import Settings

    settings = Settings.from_env({"AINDEX_DATA_DIR": str(tmp_path)})
    monkeypatch.setenv("DAGSTER_HOME", "")  # restored after the test: dagster_home sets it
    monkeypatch.delenv("DAGSTER_HOME")
    home = dagster_home(settings)
    config = home / "dagster.yaml"
    assert config.read_text() == LOCAL_INSTANCE_YAML
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.run_monitoring_enabled and instance.run_retries_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] <= 30
        assert instance.run_retries_max_retries >= 1
        assert not instance.run_retries_retry_on_asset_or_op_failure

    config.write_text(PREVIOUS_LOCAL_INSTANCE_YAMLS[0])
    dagster_home(settings)
    assert config.read_text() == LOCAL_INSTANCE_YAML
    edited = LOCAL_INSTANCE_YAML.replace("max_concurrent_runs: 2", "max_concurrent_runs: 3")
    config.write_text(edited)
    dagster_home(settings)
    assert config.read_text() == edited
