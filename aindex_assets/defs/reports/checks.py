"""The report's promise: activation never makes a batch harder to find than it was."""

import dagster as dg

from aindex_assets.defs.metadata import rounded
from aindex_assets.defs.reports.assets import robustness_report
from aindex_assets.defs.resources import StorageResource

RECALL_CHECK = "active_recall_not_below_passive"


@dg.asset_check(asset=robustness_report, name=RECALL_CHECK)
def active_recall_not_below_passive(
    context: dg.AssetCheckExecutionContext, storage: StorageResource
) -> dg.AssetCheckResult:
    """On the batch's latest report, average recall@1 of activated images is not below passive."""
    reports = storage.catalog().reports(batch_id=context.partition_key, kind="robustness")
    if not reports:
        return dg.AssetCheckResult(passed=True, metadata={"note": "no activated images to compare"})
    averages = reports[-1].payload["result"]["average"]
    passive, active = averages["passive"]["recall_at_1"], averages["active"]["recall_at_1"]
    return dg.AssetCheckResult(
        passed=active >= passive,
        metadata={"recall_at_1_passive": rounded(passive), "recall_at_1_active": rounded(active)},
    )
