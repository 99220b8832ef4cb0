"""End to end on the production-like stack, without docker.

PostgreSQL is Dagster's storage and the catalog, SeaweedFS is the object store, and a
real `dagster-daemon` runs the inbox sensor and launches the runs. The test uploads
photos into the S3 inbox, waits for them to be activated and indexed, then checks the
PNGs in S3 and the rows in PostgreSQL. Every process it starts is stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from aindex_assets.definitions import build_definitions
from aindex_assets.defs.jobs import BOOTSTRAP_ASSETS
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.objectstore import open_object_store
from aindex_assets_tests.dagster_helpers import FAST_RUN_CONFIG, small_photos
from aindex_assets_tests.servers import stop_process_group

pytestmark = pytest.mark.services

WAIT_SECONDS = 420


def instance_yaml(dagster_pg_url: str) -> dict:
    return {
        "storage": {"postgres": {"postgres_url": dagster_pg_url}},
        "run_coordinator": {
            "module": "dagster._core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"max_concurrent_runs": 1},
        },
        "telemetry": {"enabled": False},
    }


def bootstrap_index(settings: Settings) -> None:
    defs = build_definitions(settings)
    bootstrap_ops = set(BOOTSTRAP_ASSETS)
    ops = {k: v for k, v in FAST_RUN_CONFIG["ops"].items() if k in bootstrap_ops}
    result = dg.materialize(
        [defs.resolve_assets_def(key) for key in BOOTSTRAP_ASSETS],
        run_config={"ops": ops},
    )
    assert result.success


def wait_for(predicate, timeout: float, what: str, daemon: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert daemon.poll() is None, "dagster-daemon exited early"
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_daemon_sensor_activates_uploads_on_postgres_and_s3(
    tmp_path: Path,
    s3_store_settings: dict[str, str],
    postgres_url_factory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        **s3_store_settings,
        "AINDEX_DATA_DIR": str(tmp_path / "data"),
        "AINDEX_DATABASE_URL": postgres_url_factory("catalog"),
    }
    for name, value in env.items():  # S3 credentials reach resources as environment references
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(env)
    bootstrap_index(settings)

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(instance_yaml(postgres_url_factory("dagster")))
    )
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump({"load_from": [{"python_module": "aindex_assets.definitions"}]})
    )

    store = open_object_store(settings)
    photos = small_photos(3)
    for name, data in photos:
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), data)

    daemon_env = {**os.environ, **env, "DAGSTER_HOME": str(home)}
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
        env=daemon_env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    catalog = Catalog.open(settings.database_url)
    try:
        wait_for(
            lambda: (
                catalog.count_images(status="indexed") == len(photos)
                and bool(catalog.reports(kind="robustness"))
            ),
            WAIT_SECONDS,
            "the sensor's run to index the uploads",
            daemon,
        )
    finally:
        stop_process_group(daemon, "the daemon's")
        log.close()

    activations = catalog.activations()
    assert len(activations) == len(photos)
    pngs = [info.key for info in store.list("activated/")]
    assert sorted(pngs) == sorted(a.object_key for a in activations)
    assert all(store.get_bytes(key)[:8] == b"\x89PNG\r\n\x1a\n" for key in pngs)
    assert catalog.current_served_index(catalog.active_index_version().id).ntotal >= len(photos)
