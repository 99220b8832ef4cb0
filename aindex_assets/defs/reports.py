"""Robustness reports: does activation keep edited copies findable, here and now?"""

import json

import dagster as dg
import numpy as np

from aindex_assets.defs.embeddings import load_originals
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.defs.shared import load_served, require_active_version
from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.evaluation import evaluate_robustness
from aindex_assets.lib.images import decode_image
from aindex_assets.storage.keys import report_key

REPORT_SCHEMA_VERSION = 1


class ReportConfig(dg.Config):
    """Search settings and the seed of the random ("auto") edits."""

    k: int = 10
    nprobe: int = 1
    seed: int = 0


@dg.asset(
    partitions_def=INGEST_BATCHES,
    deps=["activated_images", "search_index"],
    group_name="reports",
    kinds={"python"},
)
def robustness_report(
    context: dg.AssetExecutionContext,
    config: ReportConfig,
    storage: StorageResource,
    extractor: ExtractorResource,
) -> dg.MaterializeResult:
    """Recall of edited copies, passive originals against activated releases, for one batch.

    Every activated image of the batch and its original are edited with the paper's
    edit list; the edited copies are searched in the served index (which also holds the
    other batches and the distractors); recall@1, recall@10 and 1/(rank+1) per edit,
    passive vs active, go to the catalog (one row per edit and variant) and, as an
    immutable JSON document, to the object store, together with what produced them.
    """
    store, catalog = storage.store(), storage.catalog()
    version = require_active_version(catalog)
    model = extractor.load()
    activations = catalog.activations(batch_id=context.partition_key)
    if not activations:
        return dg.MaterializeResult(metadata={"note": "no activated images in this batch"})
    images = catalog.images_by_ids([a.image_id for a in activations])
    passive = load_originals(store, images)
    active = [decode_image(store.get_bytes(a.object_key), a.object_key).image for a in activations]
    served = load_served(store, catalog, version)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss_index.search(served, queries, k=k, nprobe=config.nprobe)

    result = evaluate_robustness(
        passive,
        active,
        [a.image_id for a in activations],
        model.embed_images,
        search,
        k=config.k,
        seed=config.seed,
    )
    payload = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "batch_id": context.partition_key,
        "index_version": version.id,
        "factory": version.factory,
        "extractor": model.identity,
        "image_ids": [a.image_id for a in activations],
        "seed": config.seed,
        "k": config.k,
        "nprobe": config.nprobe,
        "result": result.to_dict(),
        "markdown": result.to_markdown(),
    }
    report_id = catalog.next_report_id()
    key = report_key(context.partition_key, "robustness", report_id)
    store.put_bytes(key, json.dumps(payload, indent=2).encode(), content_type="application/json")
    catalog.record_report(
        batch_id=context.partition_key,
        kind="robustness",
        payload=payload,
        object_key=key,
        rows=result.rows,
        report_id=report_id,
    )
    return dg.MaterializeResult(
        metadata={
            "recall_at_1_passive": dg.MetadataValue.float(result.average("passive")["recall_at_1"]),
            "recall_at_1_active": dg.MetadataValue.float(result.average("active")["recall_at_1"]),
            "table": dg.MetadataValue.md(result.to_markdown()),
            "object_key": dg.MetadataValue.text(store.uri(key)),
        }
    )
