"""Copy detection: suspicious images searched in the served index against a calibrated threshold."""

import dagster as dg

from aindex_assets.defs.claims import INBOX_CONFIG_FIELDS, InboxBatchConfig, claim_for_run
from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.partitions import QUERY_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.services.copy_detection.batch import detect_batch
from aindex_assets.services.copy_detection.calibration import calibrate, threshold_summary
from aindex_assets.services.copy_detection.detection import DetectionSetting, Verdict
from aindex_assets.services.index import open_served
from aindex_assets.storage.catalog import CopyThresholdRecord

TABLE_ROWS = 50


class CopyDetectionConfig(dg.Config, DetectionSetting):
    """Search setting and threshold calibration; a new setting gets its own calibration."""


class QueryBatchConfig(CopyDetectionConfig, InboxBatchConfig):
    """The detection setting, and the query inbox files the batch claims (set by its sensor)."""

    def setting(self) -> DetectionSetting:
        return DetectionSetting(**self.model_dump(exclude=set(INBOX_CONFIG_FIELDS)))


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
    with domain_failures():
        record = calibrate(store, catalog, extractor.load(), open_served(store, catalog), config)
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
    catalog match is a copy when its score passes the threshold calibrated for this
    served index. Verdicts go to the catalog, replacing the batch's previous ones in one
    transaction, and as a JSON document to the object store.
    """
    store = storage.store()
    with domain_failures():
        manifest = claim_for_run(storage, context.partition_key, "query", config)
        outcome = detect_batch(
            store, storage.catalog(), extractor.load(), manifest, config.setting()
        )
    if outcome.calibrated_now:
        context.log.info(
            f"no threshold for this served index yet: {threshold_summary(outcome.threshold)}"
        )
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
            "object_key": dg.MetadataValue.text(store.uri(outcome.object_key)),
        }
    )
