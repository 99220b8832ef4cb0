"""Copy detection: suspicious images searched in the served index against a recorded threshold."""

import dagster as dg

from aindex_assets.defs.claims import INBOX_CONFIG_FIELDS, InboxBatchConfig, claim_for_run
from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.metadata import SCORE_DIGITS, rounded, stored_object
from aindex_assets.defs.partitions import QUERY_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.services.copy_detection.batch import detect_batch
from aindex_assets.services.copy_detection.calibration import (
    calibrate,
    require_threshold,
    threshold_summary,
)
from aindex_assets.services.copy_detection.detection import DetectionSetting, Verdict
from aindex_assets.services.index import open_served
from aindex_assets.storage.catalog import CopyThresholdRecord

TABLE_ROWS = 50


class CopyDetectionConfig(dg.Config, DetectionSetting):
    """Search setting and threshold calibration; each (k, nprobe, target_fpr) has its own."""


class QueryBatchConfig(CopyDetectionConfig, InboxBatchConfig):
    """The detection setting, and the query inbox files the batch claims (set by its sensor)."""

    def setting(self) -> DetectionSetting:
        return DetectionSetting(**self.model_dump(exclude=set(INBOX_CONFIG_FIELDS)))


def threshold_metadata(record: CopyThresholdRecord) -> dict[str, dg.MetadataValue]:
    return {
        "threshold": rounded(record.threshold, SCORE_DIGITS),
        "threshold_id": dg.MetadataValue.int(record.id),
        "metric": dg.MetadataValue.text(record.metric),
        "target_fpr": rounded(record.target_fpr),
        "fpr_resolved": dg.MetadataValue.bool(record.resolved),
        "tpr": rounded(record.tpr),
        "fpr": rounded(record.fpr),
        "index_version": dg.MetadataValue.int(record.index_version),
        "served_index": dg.MetadataValue.int(record.served_index_id),
        "calibration": dg.MetadataValue.text(threshold_summary(record)),
    }


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


@dg.asset(
    deps=["search_index"],
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
    """The copy / not-a-copy threshold on the top match's score, set for the served index.

    Edited copies of the indexed (activated) images are matching queries, edited
    unrelated photos (under `negatives/`, else, on the embedded default or with
    `AINDEX_PACKAGED_PHOTOS=allow`, packaged photos that are not indexed)
    non-matching ones; all are scored as `aindex query` scores them (the served index's
    top k re-ranked on the original descriptors). The threshold lets at most
    `target_fpr` (1% by default) of the non-matching queries through; it is
    recorded in the catalog with the true- and false-positive rates measured at it, the
    index version and the served index. With fewer than 1/target_fpr non-matching
    queries the rate cannot be resolved: the threshold then lets none of them through
    and the metadata says so. Updated whenever the served index changes; detection
    never calibrates: without a threshold for the current served index it fails, and
    the query sensor waits.
    """
    store, catalog = storage.store(), storage.catalog()
    with domain_failures():
        record = calibrate(
            store,
            catalog,
            extractor.load(),
            open_served(store, catalog),
            config,
            storage.packaged_photo_policy(),
        )
    if not record.resolved:
        context.log.warning(threshold_summary(record))
    return dg.MaterializeResult(
        metadata={
            **threshold_metadata(record),
            "precision": rounded(record.precision),
            "matching_queries": dg.MetadataValue.int(record.n_matching),
            "non_matching_queries": dg.MetadataValue.int(record.n_non_matching),
            "negatives": dg.MetadataValue.text(str(record.details.get("negatives"))),
        }
    )


@dg.asset(
    partitions_def=QUERY_BATCHES,
    deps=[copy_threshold, "search_index"],
    group_name="queries",
    kinds={"pytorch", "faiss"},
)
def copy_detections(
    context: dg.AssetExecutionContext,
    config: QueryBatchConfig,
    storage: StorageResource,
    extractor: ExtractorResource,
) -> dg.MaterializeResult:
    """Copy / not-a-copy verdicts for one batch of suspicious images from `queries/inbox/`.

    The run first claims its files out of the query inbox (as `raw_images` does). Each is
    decoded safely (a file that is not a usable
    image gets a verdict with its reason and never fails the batch), embedded and searched
    in the current served index. Its top-k results and scores are kept (distractors are
    not originals: a query that only finds distractors has no catalog match) and its top
    catalog match is a copy when its score passes the threshold recorded for this
    served index (`copy_threshold`; without one the run fails before claiming anything).
    Verdicts go to the catalog, replacing the batch's previous ones in one
    transaction, and as a JSON document to the object store.
    """
    store, catalog = storage.store(), storage.catalog()
    with domain_failures():
        require_threshold(catalog, config.setting())
        manifest = claim_for_run(storage, context.partition_key, "query", config)
        outcome = detect_batch(store, catalog, extractor.load(), manifest, config.setting())
    if not outcome.threshold.resolved:
        context.log.warning(threshold_summary(outcome.threshold))
    for v in outcome.verdicts:
        if v.reason:
            context.log.warning(f"rejected {v.query_key}: {v.reason}")
    verdicts = outcome.verdicts
    return dg.MaterializeResult(
        metadata={
            **threshold_metadata(outcome.threshold),
            "queries": dg.MetadataValue.int(len(verdicts)),
            "copies": dg.MetadataValue.int(sum(v.is_copy for v in verdicts)),
            "not_copies": dg.MetadataValue.int(
                sum(not v.is_copy and not v.reason for v in verdicts)
            ),
            "rejected": dg.MetadataValue.int(sum(bool(v.reason) for v in verdicts)),
            "verdicts": dg.MetadataValue.md(verdict_table(verdicts)),
            "object_key": stored_object(store, outcome.object_key),
        }
    )
