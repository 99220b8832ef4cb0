"""The one Definitions object: assets, checks, sensors, jobs, resources and executor.

Resources are chosen here from the environment (see `aindex_assets.settings`): the
embedded default (local folder + SQLite) or production (S3/MinIO + PostgreSQL).
"""

import dagster as dg

from aindex_assets.defs import (
    activation,
    checks,
    comparison,
    embeddings,
    index,
    ingest,
    queries,
    reports,
)
from aindex_assets.defs.comparison import compare_indexes_job
from aindex_assets.defs.jobs import (
    activate_batch_job,
    bootstrap_job,
    detect_copies_job,
    retrain_index_job,
)
from aindex_assets.defs.resources import ExtractorResource, storage_from_settings
from aindex_assets.defs.sensors import inbox_sensor, query_sensor
from aindex_assets.settings import Settings


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    return dg.Definitions(
        assets=dg.load_assets_from_modules(
            [ingest, embeddings, index, activation, reports, queries, comparison]
        ),
        asset_checks=dg.load_asset_checks_from_modules([checks]),
        jobs=[
            activate_batch_job,
            bootstrap_job,
            retrain_index_job,
            detect_copies_job,
            compare_indexes_job,
        ],
        sensors=[inbox_sensor, query_sensor],
        resources={
            "storage": storage_from_settings(settings),
            "extractor": ExtractorResource(spec=settings.extractor_spec, device=settings.device),
        },
        # One batch is a chain of steps that share a loaded network: run them in one
        # process. Parallelism comes from concurrent runs (one per batch) and pools.
        executor=dg.in_process_executor,
    )


defs = build_definitions()
