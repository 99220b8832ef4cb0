"""Ad hoc judgement of local files (`aindex query`): nothing is uploaded or claimed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from aindex_assets.services.index import ServedSearch, open_served
from aindex_assets.storage.catalog import Catalog, CopyThresholdRecord
from aindex_assets.storage.objectstore import ObjectStore


@dataclass(frozen=True)
class Judgement:
    """Verdicts on local files, with the served index and threshold they were judged by."""

    served: ServedSearch
    threshold: CopyThresholdRecord
    verdicts: list[Verdict]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index_version": self.served.version.id,
            "served_index": self.served.served.id,
            "threshold": threshold_document(self.threshold),
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

    The threshold is the one recorded for the current served index and setting; with
    none, `NoThreshold` says how to record one (nothing is calibrated here).
    """
    served = open_served(store, catalog)
    threshold = current_threshold(catalog, served, setting)
    queries = [QueryFile(str(path), path.read_bytes()) for path in paths]
    verdicts = detect(queries, store, extractor, served, catalog, threshold, setting)
    return Judgement(served, threshold, verdicts)
