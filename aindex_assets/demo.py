"""`aindex demo`: real photos through the whole asset graph on the configured storage."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from typing import TextIO

from aindex_assets.foreground import process_inbox
from aindex_assets.instance import dagster_home
from aindex_assets.lib.index import SmallTrainingSet
from aindex_assets.lib.photos import shrunk_jpeg, split_demo_photos
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.objectstore import open_object_store

# Said once, instead of the training-set warning (see `lib.index.SmallTrainingSet`).
SMALL_INDEX_NOTE = (
    "The demo trains its index on a few thousand crops of the photos shipped with the "
    "package, so it trains in seconds; a deployment trains on 10,000 or more of its own images "
    "(put them under training/images/ in the store)."
)


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


def run_demo(
    settings: Settings, images: int = 24, max_side: int = 1024, stream: TextIO | None = None
) -> dict:
    """Upload packaged photos to the inbox, run their batch(es), return the robustness summary.

    The demo trains, and sets its threshold, on packaged photos wherever it runs: it says so,
    once, instead of warning that its index is small. Progress goes to `stream` (stderr).
    """
    settings = dataclasses.replace(settings, packaged_photos=True)
    dagster_home(settings)
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    to_ingest, _ = split_demo_photos()
    for name, data in to_ingest[:images]:
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), shrunk_jpeg(data, max_side))
    print(SMALL_INDEX_NOTE, file=stream or sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallTrainingSet)
        batch_ids = process_inbox(settings, catalog, stream=stream)
    text, summary = summary_text(catalog, batch_ids, f"{store.describe()} under activated/")
    return {**summary, "text": text}
