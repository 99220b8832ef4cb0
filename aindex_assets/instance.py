"""The local Dagster instance that `aindex demo` and `aindex ui` share (SQLite, in the data dir).

Its configuration recovers from a run worker that dies (`kill -9`, the out-of-memory
killer) as the production one does (`deploy/dagster.yaml`): the code server that
started the worker sees it die and fails the run within a second; the daemon's run
monitoring frees the pool slots the dead run still holds
(`free_slots_after_run_end_seconds`, checked every `poll_interval_seconds`: Dagster
frees them for no one else), and run retries re-execute the run from its failed step.
"""

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
# A run whose worker process died (kill -9, out of memory) is failed at once by the code
# server that started it, but the pool slot of its step stays taken, and every later batch
# would wait for it. The monitoring daemon frees the slots of runs that ended at least
# free_slots_after_run_end_seconds ago, on each poll: a dead run's slot is free within
# 30 s. max_runtime_seconds fails a run whose code server died with it (`aindex ui`
# stopped mid-run); a batch job sets its own, shorter `dagster/max_runtime` tag.
run_monitoring:
  enabled: true
  poll_interval_seconds: 15
  free_slots_after_run_end_seconds: 15
  max_runtime_seconds: 21600
# A run whose worker died is re-executed from its failed step (the batch jobs allow two
# such retries with their `dagster/max_retries` tag); a failing asset is not retried.
run_retries:
  enabled: true
  max_retries: 1
  retry_on_asset_or_op_failure: false
telemetry:
  enabled: false
"""

# What earlier versions wrote: replaced by the current text, never a file edited by hand.
PREVIOUS_LOCAL_INSTANCE_YAMLS = (
    """\
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
""",
)


def dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME if set, else `<data dir>/dagster_home`, created with its config on first use.

    A config written by an earlier version of this function is brought up to date; one
    edited by hand is left alone.
    """
    home = Path(os.environ.get("DAGSTER_HOME") or settings.data_dir / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() or config.read_text() in PREVIOUS_LOCAL_INSTANCE_YAMLS:
        config.write_text(LOCAL_INSTANCE_YAML)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
