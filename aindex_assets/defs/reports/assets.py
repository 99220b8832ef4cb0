"""Robustness reports: does activation keep edited copies findable, here and now?"""

from typing import Literal

import dagster as dg

from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.metadata import rounded, stored_object
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.lib.report import copy_detection_markdown
from aindex_assets.lib.report_html import figures_markdown
from aindex_assets.services.reports import ReportSettings
from aindex_assets.services.reports import robustness_report as build_report


class ReportConfig(dg.Config, ReportSettings):
    """Search settings, edits, the seed of the random ("auto") edits and the negatives.

    `edit_set`: `paper` (the paper's 15 edits), `sweep` (plus quick parameter sweeps) or
    `full_sweep`; `edits`: only these edits of the set, by name (unset: all).
    """

    edit_set: Literal["paper", "sweep", "full_sweep"] = "paper"


@dg.asset(
    partitions_def=INGEST_BATCHES,
    deps=["activated_images", "search_index"],
    group_name="reports",
    kinds={"python", "html"},
)
def robustness_report(
    context: dg.AssetExecutionContext,
    config: ReportConfig,
    storage: StorageResource,
    extractor: ExtractorResource,
) -> dg.MaterializeResult:
    """Recall and copy detection of edited copies, passive originals against activated releases.

    Every activated image of the batch and its original are edited with the paper's edit
    list (or the sweeps, `edit_set`); the copies are searched in the served index (which
    also holds the other batches and the distractors), together with edited non-matching
    photos (`negatives/` in the store, else, where allowed, packaged photos never ingested).
    Copy detection scores each query as `aindex query` does (its top match re-ranked on
    the original descriptors): micro-AP and the true-positive rate at 1% and 0.1%
    false-positive rate on the non-matching queries. Recall@1/10, 1/(rank+1) and
    copy-detection micro-AP per edit and variant go to the catalog; the JSON document
    (schema in `lib/report_schema.json`: audit trail, image quality statistics, pooled
    precision-recall curve and operating points), a self-contained HTML page and the PNG
    figures go to the object store under keys unique to the report id.
    """
    store = storage.store()
    with domain_failures():
        report = build_report(
            store,
            storage.catalog(),
            extractor.load(),
            extractor.spec,
            context.partition_key,
            config,
            storage.packaged_photo_policy(),
            context.run.run_id,
        )
    if report is None:
        return dg.MaterializeResult(metadata={"note": "no activated images in this batch"})
    averages = report.payload["result"]["average"]
    pooled = report.payload["copy_detection"]
    return dg.MaterializeResult(
        metadata={
            "report_id": dg.MetadataValue.int(report.report_id),
            "recall_at_1_passive": rounded(averages["passive"]["recall_at_1"]),
            "recall_at_1_active": rounded(averages["active"]["recall_at_1"]),
            "micro_ap_passive": rounded(pooled["passive"]["micro_ap"]),
            "micro_ap_active": rounded(pooled["active"]["micro_ap"]),
            **{
                f"tpr_at_fpr_{point['target_fpr']:g}_{variant}": rounded(point["tpr"])
                for variant in ("passive", "active")
                for point in pooled[variant]["operating_points"]
            },
            "copy_detection": dg.MetadataValue.md(copy_detection_markdown(report.payload)),
            "table": dg.MetadataValue.md(report.payload["markdown"]),
            "figures": dg.MetadataValue.md(figures_markdown(report.figures)),
            "html_report": stored_object(store, report.files["html"]),
            "object_key": stored_object(store, report.files["json"]),
        }
    )
