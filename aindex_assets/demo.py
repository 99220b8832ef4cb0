"""`aindex demo`: real photos through the whole asset graph on the configured storage."""

from __future__ import annotations

import io

import dagster as dg
from PIL import Image

from aindex_assets.defs.jobs import activate_batch_job, bootstrap_job
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.sensors import INBOX_CURSOR
from aindex_assets.instance import dagster_home
from aindex_assets.lib.photos import split_demo_photos
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, claim_batches, upload_key
from aindex_assets.storage.objectstore import open_object_store


def claim_everything(settings: Settings, catalog: Catalog) -> list[str]:
    """Claim all pending inbox files as batches, exactly as the sensor would."""
    store = open_object_store(settings)
    cursor = catalog.inbox_cursor(INBOX_CURSOR)
    manifests, new_cursor = claim_batches(
        store, kind="ingest", prefix=INBOX_PREFIX, cursor=cursor, batch_size=64, max_batches=1000
    )
    if manifests and not catalog.advance_inbox_cursor(
        INBOX_CURSOR, expected=cursor, new=new_cursor
    ):
        raise RuntimeError("the inbox sensor claimed these files first: its runs will process them")
    return [m.batch_id for m in manifests]


def run_batches(settings: Settings, batch_ids: list[str], catalog: Catalog) -> None:
    from aindex_assets.definitions import build_definitions

    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(INGEST_BATCHES.name, batch_ids)
    defs = build_definitions(settings)
    for batch_id in batch_ids:
        job = bootstrap_job if catalog.active_index_version() is None else activate_batch_job
        result = defs.resolve_job_def(job.name).execute_in_process(
            instance=instance,
            partition_key=batch_id,
            run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
            raise_on_error=True,
        )
        if not result.success:
            raise RuntimeError(f"batch {batch_id} failed (run {result.run_id})")


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


def web_size(data: bytes, max_side: int) -> bytes:
    """A published-size copy (longest side `max_side`), as a photo bank releases them."""
    image = Image.open(io.BytesIO(data))
    if max(image.size) <= max_side:
        return data
    image = image.convert("RGB")
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def run_demo(settings: Settings, images: int = 24, max_side: int = 1024) -> dict:
    """Upload packaged photos to the inbox, run their batch(es), return the robustness summary."""
    dagster_home(settings)
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    to_ingest, _ = split_demo_photos()
    for name, data in to_ingest[:images]:
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), web_size(data, max_side))
    batch_ids = claim_everything(settings, catalog)
    run_batches(settings, batch_ids, catalog)
    text, summary = summary_text(catalog, batch_ids, f"{store.describe()} under activated/")
    return {**summary, "text": text}
