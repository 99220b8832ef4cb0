"""`aindex demo`: real photos through the whole asset graph on the configured storage."""

from __future__ import annotations

import dataclasses

import dagster as dg

from aindex_assets.defs.claims import batch_run_config
from aindex_assets.defs.jobs import activate_batch_job, bootstrap_job
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.instance import dagster_home
from aindex_assets.lib.photos import shrunk_jpeg, split_demo_photos
from aindex_assets.services.inbox import plan_batches
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.objectstore import open_object_store

MAX_DEMO_BATCHES = 1000


def run_inbox(settings: Settings, catalog: Catalog) -> list[str]:
    """Run every batch waiting in the inbox, each claimed by its own run as the sensor's are."""
    from aindex_assets.definitions import build_definitions

    instance = dg.DagsterInstance.get()
    planned = plan_batches(
        open_object_store(settings), catalog, kind="ingest", max_batches=MAX_DEMO_BATCHES
    )
    instance.add_dynamic_partitions(INGEST_BATCHES.name, [b.batch_id for b in planned])
    defs = build_definitions(settings)
    for batch in planned:
        job = bootstrap_job if catalog.active_index_version() is None else activate_batch_job
        result = defs.resolve_job_def(job.name).execute_in_process(
            instance=instance,
            partition_key=batch.batch_id,
            run_config={
                **batch_run_config(batch, "raw_images"),
                "loggers": {"console": {"config": {"log_level": "INFO"}}},
            },
            raise_on_error=True,
        )
        if not result.success:
            raise RuntimeError(f"batch {batch.batch_id} failed (run {result.run_id})")
    if planned:
        # The daemon's automation sensor would do this after the new served index; the demo
        # runs without it, and `aindex query` needs a threshold.
        calibration = dg.materialize([defs.resolve_assets_def("copy_threshold")], instance=instance)
        if not calibration.success:
            raise RuntimeError(f"calibrating the copy threshold failed (run {calibration.run_id})")
    return [b.batch_id for b in planned]


def summary_text(catalog: Catalog, batch_ids: list[str], activated_uri: str) -> tuple[str, dict]:
    """The robustness tables of these batches, or the latest one when they held nothing new."""
    reports = [r for b in batch_ids for r in catalog.reports(batch_id=b, kind="robustness")[-1:]]
    lines = []
    if not reports:
        reports = catalog.reports(kind="robustness")[-1:]
        lines.append("Every photo was already activated earlier: showing the latest report.")
    for report in reports:
        lines += [
            f"Robustness of batch {report.batch_id} (index version "
            f"{report.payload['index_version']}, {report.payload['factory']}), passive vs active:",
            report.payload["markdown"],
        ]
    lines.append(f"Activated images: {activated_uri}")
    lines.append("Export them with `aindex export BATCH DEST`; browse the graph with `aindex ui`.")
    summary = {"batches": {r.batch_id: r.payload["result"]["average"] for r in reports}}
    return "\n".join(lines), summary


def run_demo(settings: Settings, images: int = 24, max_side: int = 1024) -> dict:
    """Upload packaged photos to the inbox, run their batch(es), return the robustness summary.

    The demo trains, and sets its threshold, on packaged photos wherever it runs: it says so.
    """
    settings = dataclasses.replace(settings, packaged_photos=True)
    dagster_home(settings)
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    to_ingest, _ = split_demo_photos()
    for name, data in to_ingest[:images]:
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), shrunk_jpeg(data, max_side))
    batch_ids = run_inbox(settings, catalog)
    text, summary = summary_text(catalog, batch_ids, f"{store.describe()} under activated/")
    return {**summary, "text": text}
