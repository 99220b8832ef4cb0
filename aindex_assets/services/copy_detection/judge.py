"""Ad hoc judgement of local files (`aindex query`): nothing is uploaded or claimed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aindex_assets.lib.extractors import Extractor
from aindex_assets.services.copy_detection.calibration import current_threshold
from aindex_assets.services.copy_detection.detection import (
    DetectionSetting,
    QueryFile,
    Verdict,
    detect,
)
from aindex_assets.services.index import ServedSearch, open_served
from aindex_assets.storage.catalog import Catalog, CopyThresholdRecord
from aindex_assets.storage.objectstore import ObjectStore


@dataclass(frozen=True)
class Judgement:
    """Verdicts on local files, with the served index and threshold they were judged by."""

    served: ServedSearch
    threshold: CopyThresholdRecord
    calibrated_now: bool
    verdicts: list[Verdict]

    def to_dict(self) -> dict[str, Any]:
        threshold = self.threshold
        return {
            "index_version": self.served.version.id,
            "served_index": self.served.served.id,
            "threshold": {
                "id": threshold.id,
                "value": threshold.threshold,
                "metric": threshold.metric,
                "target_precision": threshold.target_precision,
                "reached": threshold.reached,
                "calibrated_now": self.calibrated_now,
            },
            "results": [v.to_dict() for v in self.verdicts],
        }


def judge_files(
    paths: Sequence[Path],
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    setting: DetectionSetting,
) -> Judgement:
    """Judge local files against the served index without touching the inbox.

    The threshold is the one recorded for the current served index, calibrated (and
    recorded) first when there is none.
    """
    served = open_served(store, catalog)
    threshold, calibrated_now = current_threshold(store, catalog, extractor, served, setting)
    queries = [QueryFile(str(path), path.read_bytes()) for path in paths]
    verdicts = detect(queries, store, extractor, served, catalog, threshold, setting)
    return Judgement(served, threshold, calibrated_now, verdicts)
