"""The local Dagster instance that `aindex demo` and `aindex ui` share (SQLite, in the data dir)."""

from __future__ import annotations

import os
from pathlib import Path

from aindex_assets.settings import Settings

LOCAL_INSTANCE_YAML = """\
# Local Dagster instance of `aindex` (SQLite storage under this folder).
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 2
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME if set, else `<data dir>/dagster_home`, created with its config on first use."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.data_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
