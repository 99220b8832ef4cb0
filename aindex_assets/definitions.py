"""The one Definitions object: assets, checks, sensors, jobs, resources and executor.

Resources are chosen here from the environment (see `aindex_assets.settings`): the
embedded default (local folder + SQLite) or production (S3/MinIO + PostgreSQL).
"""

import dagster as dg

from aindex_assets.defs.activation import assets as activation_assets
from aindex_assets.defs.activation import checks as activation_checks
from aindex_assets.defs.copy_detection import assets as copy_detection_assets
from aindex_assets.defs.copy_detection.sensors import query_sensor
from aindex_assets.defs.index import assets as index_assets
from aindex_assets.defs.index import checks as index_checks
from aindex_assets.defs.ingest import assets as ingest_assets
from aindex_assets.defs.ingest.sensors import failed_batch_sensor, inbox_sensor
from aindex_assets.defs.jobs import ALL_JOBS
from aindex_assets.defs.reports import assets as report_assets
from aindex_assets.defs.reports import checks as report_checks
from aindex_assets.defs.reports import comparison as comparison_assets
from aindex_assets.defs.resources import extractor_from_settings, storage_from_settings
from aindex_assets.settings import Settings

ASSET_MODULES = [
    ingest_assets,
    index_assets,
    activation_assets,
    report_assets,
    comparison_assets,
    copy_detection_assets,
]
CHECK_MODULES = [activation_checks, index_checks, report_checks]

# Eager assets (the served index, the copy threshold) need a running automation sensor; Dagster
# creates one that starts STOPPED, so a fresh deployment would never materialize them.
automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=(
        "Materializes the eager assets when their inputs change: the served index after a new "
        "shard, and the copy threshold after a new served index."
    ),
)


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        asset_checks=dg.load_asset_checks_from_modules(CHECK_MODULES),
        jobs=ALL_JOBS,
        sensors=[inbox_sensor, failed_batch_sensor, query_sensor, automation_sensor],
        resources={
            "storage": storage_from_settings(settings),
            "extractor": extractor_from_settings(settings),
        },
        # One batch is a chain of steps that share a loaded network: run them in one
        # process. Parallelism comes from concurrent runs (one per batch) and pools.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
