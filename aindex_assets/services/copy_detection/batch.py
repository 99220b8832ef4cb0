"""A query batch from the query inbox: verdicts recorded in the catalog and the store."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aindex_assets.lib.extractors import Extractor
from aindex_assets.services.copy_detection.calibration import (
    current_threshold,
    threshold_document,
)
from aindex_assets.services.copy_detection.detection import (
    DetectionSetting,
    QueryFile,
    Verdict,
    detect,
)
from aindex_assets.services.index import open_served
from aindex_assets.storage.catalog import Catalog, CopyThresholdRecord
from aindex_assets.storage.inbox import BatchManifest
from aindex_assets.storage.keys import QUERY_INBOX_PREFIX, copy_detections_key
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore

# 2: the threshold is set for a false-positive rate (target_fpr, tpr, fpr).
RESULT_SCHEMA_VERSION = 2


@dataclass(frozen=True)
class BatchVerdicts:
    """The verdicts of one query batch, the threshold used and where the document went."""

    verdicts: list[Verdict]
    threshold: CopyThresholdRecord
    object_key: str


def read_queries(store: ObjectStore, manifest: BatchManifest) -> list[QueryFile]:
    """The batch's query files under their inbox names; a refused or vanished one says why."""
    files = [QueryFile(name, None, reason) for name, reason in manifest.rejected]
    for inbox_key, read_key in manifest.members():
        try:
            files.append(QueryFile(inbox_key, store.get_bytes(read_key)))
        except ObjectNotFound:
            reason = "removed from the query inbox before it could be searched"
            files.append(QueryFile(inbox_key, None, reason))
    return files


def catalog_rows(
    verdicts: list[Verdict], threshold: CopyThresholdRecord
) -> list[dict[str, object]]:
    keep = ("query_key", "is_copy", "threshold", "query_hash", "image_id", "score", "rank")
    return [
        {
            **{name: getattr(v, name) for name in keep},
            "matches": v.matches,
            "reason": v.reason,
            "index_version": threshold.index_version,
            "threshold_id": threshold.id,
        }
        for v in verdicts
    ]


def detect_batch(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    manifest: BatchManifest,
    setting: DetectionSetting,
) -> BatchVerdicts:
    """Judge every file of the batch; its verdicts replace earlier ones in one transaction.

    Uses the threshold recorded for the current served index and setting; raises
    `NoThreshold` (before touching the catalog) when there is none.
    """
    batch_id = manifest.batch_id
    served = open_served(store, catalog)
    threshold = current_threshold(catalog, served, setting)
    queries = read_queries(store, manifest)
    catalog.create_batch(
        batch_id, kind="query", source_prefix=QUERY_INBOX_PREFIX, n_files=len(queries)
    )
    verdicts = detect(queries, store, extractor, served, catalog, threshold, setting)
    catalog.replace_copy_detections(batch_id, catalog_rows(verdicts, threshold))
    key = copy_detections_key(batch_id, threshold.id)
    payload = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "batch_id": batch_id,
        "index_version": threshold.index_version,
        "served_index": threshold.served_index_id,
        "threshold": threshold_document(threshold),
        "setting": setting.model_dump(),
        "verdicts": [v.to_dict() for v in verdicts],
    }
    store.put_bytes(key, json.dumps(payload, indent=2).encode(), content_type="application/json")
    return BatchVerdicts(verdicts, threshold, key)
