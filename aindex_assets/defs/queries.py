"""Copy detection: suspicious images searched in the served index against a calibrated threshold."""

import json

import dagster as dg

from aindex_assets.copydetect import (
    DetectionSetting,
    NoServedIndex,
    QueryFile,
    Verdict,
    calibrate,
    current_threshold,
    detect,
    open_served,
    threshold_summary,
)
from aindex_assets.defs.index import search_index
from aindex_assets.defs.partitions import QUERY_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.storage.catalog import CopyThresholdRecord
from aindex_assets.storage.inbox import read_manifest
from aindex_assets.storage.keys import QUERY_INBOX_PREFIX, copy_detections_key
from aindex_assets.storage.objectstore import ObjectNotFound, ObjectStore

RESULT_SCHEMA_VERSION = 1
TABLE_ROWS = 50


class CopyDetectionConfig(dg.Config):
    """Search setting and threshold calibration; a new setting gets its own calibration."""

    k: int = 10
    nprobe: int = 1
    target_precision: float = 0.9
    seed: int = 0
    edits_per_image: int = 2
    max_matching: int = 48
    max_negatives: int = 16

    def setting(self) -> DetectionSetting:
        return DetectionSetting(**self.model_dump())


def threshold_metadata(record: CopyThresholdRecord) -> dict[str, dg.MetadataValue]:
    return {
        "threshold": dg.MetadataValue.float(record.threshold),
        "threshold_id": dg.MetadataValue.int(record.id),
        "metric": dg.MetadataValue.text(record.metric),
        "target_precision_reached": dg.MetadataValue.bool(record.reached),
        "index_version": dg.MetadataValue.int(record.index_version),
        "served_index": dg.MetadataValue.int(record.served_index_id),
        "calibration": dg.MetadataValue.text(threshold_summary(record)),
    }


@dg.asset(
    deps=[search_index],
    group_name="queries",
    kinds={"python", "faiss"},
    automation_condition=dg.AutomationCondition.eager(),
)
def copy_threshold(
    context: dg.AssetExecutionContext,
    config: CopyDetectionConfig,
    storage: StorageResource,
    extractor: ExtractorResource,
) -> dg.MaterializeResult:
    """The copy / not-a-copy threshold on the top match's score, calibrated for the served index.

    Edited copies of the indexed (activated) images are matching queries, edited
    unrelated photos (under `negatives/`, else packaged photos that are not
    indexed) non-matching ones; all are searched in the current served index and the
    loosest score whose pooled precision reaches the target (90% by default) becomes
    the threshold, recorded in the catalog with the index version and served index it
    was calibrated for. When the target cannot be reached, a conservative threshold
    just inside the closest non-match is recorded and the metadata says so. Updated
    whenever the served index changes; copy detection recalibrates on its own if it
    finds the recorded threshold stale.
    """
    store, catalog = storage.store(), storage.catalog()
    try:
        served = open_served(store, catalog)
    except NoServedIndex as exc:
        raise dg.Failure(str(exc)) from exc
    record = calibrate(store, catalog, extractor.load(), served, config.setting())
    if not record.reached:
        context.log.warning(threshold_summary(record))
    return dg.MaterializeResult(
        metadata={
            **threshold_metadata(record),
            "precision": dg.MetadataValue.float(record.precision or float("nan")),
            "recall": dg.MetadataValue.float(record.recall or float("nan")),
            "matching_queries": dg.MetadataValue.int(record.n_matching),
            "non_matching_queries": dg.MetadataValue.int(record.n_non_matching),
            "negatives": dg.MetadataValue.text(str(record.details.get("negatives"))),
        }
    )


def read_queries(store: ObjectStore, keys: tuple[str, ...]) -> list[QueryFile]:
    """The batch's query files; one removed from the inbox since is judged unreadable."""
    files = []
    for key in keys:
        try:
            files.append(QueryFile(key, store.get_bytes(key)))
        except ObjectNotFound:
            reason = "removed from the query inbox before it could be searched"
            files.append(QueryFile(key, None, reason))
    return files


def verdict_table(verdicts: list[Verdict]) -> str:
    """Markdown: one line per query (the first 50), verdict, top match and score."""
    lines = [
        "| query | verdict | image id | source key | score | rank |",
        "|---|---|---|---|---|---|",
    ]
    for v in verdicts[:TABLE_ROWS]:
        verdict = (
            f"rejected: {v.reason}" if v.reason else ("**copy**" if v.is_copy else "not a copy")
        )
        score = "–" if v.score is None else f"{v.score:.4f}"
        lines.append(
            f"| `{v.query_key}` | {verdict} | {v.image_id or '–'} | "
            f"`{v.source_key or '–'}` | {score} | {'–' if v.rank is None else v.rank} |"
        )
    return "\n".join(lines)


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


@dg.asset(
    partitions_def=QUERY_BATCHES,
    deps=[copy_threshold, search_index],
    group_name="queries",
    kinds={"pytorch", "faiss"},
)
def copy_detections(
    context: dg.AssetExecutionContext,
    config: CopyDetectionConfig,
    storage: StorageResource,
    extractor: ExtractorResource,
) -> dg.MaterializeResult:
    """Copy / not-a-copy verdicts for one batch of suspicious images from `queries/inbox/`.

    Each file named in the batch manifest is decoded safely (a file that is not a usable
    image gets a verdict with its reason and never fails the batch), embedded and searched
    in the current served index. Its top-k results and scores are kept (distractors are
    not originals: a query that only finds distractors has no catalog match) and its top
    catalog match is a copy when its score passes the threshold calibrated for this
    served index. Verdicts go to the catalog, replacing the batch's previous ones in one
    transaction, and as a JSON document to the object store.
    """
    store, catalog = storage.store(), storage.catalog()
    batch_id = context.partition_key
    manifest = read_manifest(store, batch_id)
    catalog.create_batch(
        batch_id, kind="query", source_prefix=QUERY_INBOX_PREFIX, n_files=len(manifest.source_keys)
    )
    setting = config.setting()
    model = extractor.load()
    try:
        served = open_served(store, catalog)
    except NoServedIndex as exc:
        raise dg.Failure(str(exc)) from exc
    threshold, calibrated_now = current_threshold(store, catalog, model, served, setting)
    if calibrated_now:
        context.log.info(f"no threshold for this served index yet: {threshold_summary(threshold)}")
    queries = read_queries(store, manifest.source_keys)
    verdicts = detect(queries, store, model, served, catalog, threshold, setting)
    catalog.replace_copy_detections(batch_id, catalog_rows(verdicts, threshold))
    key = copy_detections_key(batch_id, threshold.id)
    payload = {
        "schema_version": RESULT_SCHEMA_VERSION,
        "batch_id": batch_id,
        "index_version": threshold.index_version,
        "served_index": threshold.served_index_id,
        "threshold": {"id": threshold.id, "value": threshold.threshold, "metric": threshold.metric},
        "setting": config.model_dump(),
        "verdicts": [v.to_dict() for v in verdicts],
    }
    store.put_bytes(key, json.dumps(payload, indent=2).encode(), content_type="application/json")
    for v in verdicts:
        if v.reason:
            context.log.warning(f"rejected {v.query_key}: {v.reason}")
    return dg.MaterializeResult(
        metadata={
            **threshold_metadata(threshold),
            "queries": dg.MetadataValue.int(len(verdicts)),
            "copies": dg.MetadataValue.int(sum(v.is_copy for v in verdicts)),
            "not_copies": dg.MetadataValue.int(
                sum(not v.is_copy and not v.reason for v in verdicts)
            ),
            "rejected": dg.MetadataValue.int(sum(bool(v.reason) for v in verdicts)),
            "verdicts": dg.MetadataValue.md(verdict_table(verdicts)),
            "object_key": dg.MetadataValue.text(store.uri(key)),
        }
    )
