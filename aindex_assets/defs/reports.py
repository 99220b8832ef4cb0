"""Robustness reports: does activation keep edited copies findable, here and now?"""

import json
from dataclasses import dataclass

import dagster as dg
import numpy as np
from PIL import Image

from aindex_assets.defs.embeddings import load_originals
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.defs.shared import load_served, require_active_version
from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.evaluation import evaluate_robustness
from aindex_assets.lib.images import ImageRejected, content_hash, decode_image
from aindex_assets.lib.photos import negative_photos
from aindex_assets.lib.report import (
    SCHEMA_VERSION,
    build_payload,
    distinct,
    edits_for,
    quality_section,
    utc_timestamp,
)
from aindex_assets.lib.report_figures import report_figures
from aindex_assets.lib.report_html import figures_markdown, render_html
from aindex_assets.settings import redact_extractor_spec
from aindex_assets.storage.catalog import ActivationRecord, Catalog
from aindex_assets.storage.keys import NEGATIVES_PREFIX, report_asset_key, report_key
from aindex_assets.storage.objectstore import ObjectStore

REPORT_SCHEMA_VERSION = SCHEMA_VERSION


class ReportConfig(dg.Config):
    """Search settings, edits, the seed of the random ("auto") edits and the negatives."""

    k: int = 10
    nprobe: int = 1
    seed: int = 0
    edit_set: str = "paper"  # "paper", "sweep" (paper + quick sweeps) or "full_sweep"
    edits: list[str] | None = None  # only these edits of the set, by name; None: all
    negatives_prefix: str = NEGATIVES_PREFIX
    max_negatives: int = 32
    examples: int = 3


@dataclass(frozen=True)
class Negatives:
    """Non-matching queries: where they come from and, per image, its name and SHA-256."""

    source: str
    prefix: str
    items: list[dict[str, str]]
    images: list[Image.Image]

    def audit(self) -> dict:
        return {"source": self.source, "prefix": self.prefix, "items": self.items}


def choose_negatives(store: ObjectStore, catalog: Catalog, prefix: str, limit: int) -> Negatives:
    """Images under `prefix` in the store (key order), else the packaged negative photos.

    Either way an image whose bytes are registered in the catalog is skipped, so no
    negative is an indexed image; files that do not decode are skipped too. The packaged
    photos are used when the store holds no usable image under `prefix`.
    """
    stored = [(info.key, store.get_bytes(info.key)) for info in store.list(prefix, limit=limit)]
    negatives = usable_negatives(catalog, "store", prefix, stored)
    if not negatives.images:
        negatives = usable_negatives(catalog, "packaged", prefix, negative_photos()[:limit])
    return negatives


def usable_negatives(
    catalog: Catalog, source: str, prefix: str, named: list[tuple[str, bytes]]
) -> Negatives:
    items, images = [], []
    for name, data in named:
        digest = content_hash(data)
        if catalog.image_by_hash(digest) is not None:
            continue
        try:
            images.append(decode_image(data, name).image)
        except ImageRejected:
            continue
        items.append({"name": name, "sha256": digest})
    return Negatives(source=source, prefix=prefix, items=items, images=images)


def activation_audit(activations: list[ActivationRecord]) -> dict:
    params = distinct(a.params for a in activations)
    return {
        "params": params,
        "seeds": sorted({p["seed"] for p in params if "seed" in p}),
        "index_versions": sorted({a.index_version for a in activations}),
        "extractor_identities": sorted({a.extractor_identity for a in activations}),
    }


def quality_of(activations: list[ActivationRecord]) -> dict:
    return quality_section(
        [
            {"image_id": a.image_id, "psnr": a.psnr, "ssim": a.ssim, "linf": a.linf}
            for a in activations
        ]
    )


def store_report(
    store: ObjectStore, payload: dict, figures: dict[str, bytes], html: str
) -> dict[str, object]:
    """Write figures, HTML and JSON under keys unique to the report id; never overwrite."""
    report_id, batch_id = payload["report_id"], payload["batch_id"]
    files = {
        "json": report_key(batch_id, "robustness", report_id),
        "html": report_key(batch_id, "robustness", report_id, ext="html"),
        "figures": {name: report_asset_key(report_id, f"{name}.png") for name in figures},
    }
    for key in [files["json"], files["html"], *files["figures"].values()]:
        if store.exists(key):
            raise dg.Failure(f"report object {key} already exists: reports are immutable")
    payload["files"] = files
    for name, png in figures.items():
        store.put_bytes(files["figures"][name], png, content_type="image/png")
    store.put_bytes(files["html"], html.encode(), content_type="text/html; charset=utf-8")
    document = json.dumps(payload, indent=2, allow_nan=False).encode()
    store.put_bytes(files["json"], document, content_type="application/json")
    return files


def _float(value: float | None) -> dg.MetadataValue:
    return dg.MetadataValue.float(float("nan") if value is None else value)


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
    photos (`negatives/` in the store, else packaged photos that are never ingested).
    Recall@1/10, 1/(rank+1) and copy-detection micro-AP per edit and variant go to the
    catalog; the JSON document (schema in `lib/report_schema.json`: audit trail, image
    quality statistics, pooled precision-recall curve), a self-contained HTML page and
    the PNG figures go to the object store under keys unique to the report id.
    """
    store, catalog = storage.store(), storage.catalog()
    version = require_active_version(catalog)
    model = extractor.load()
    activations = catalog.activations(batch_id=context.partition_key)
    if not activations:
        return dg.MaterializeResult(metadata={"note": "no activated images in this batch"})
    image_ids = [a.image_id for a in activations]
    passive = load_originals(store, catalog.images_by_ids(image_ids))
    active = [decode_image(store.get_bytes(a.object_key), a.object_key).image for a in activations]
    served_record = catalog.current_served_index(version.id)
    served = load_served(store, catalog, version)
    negatives = choose_negatives(store, catalog, config.negatives_prefix, config.max_negatives)
    edits = edits_for(config.edit_set, config.edits)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss_index.search(served, queries, k=k, nprobe=config.nprobe)

    result = evaluate_robustness(
        passive,
        active,
        image_ids,
        model.embed_images,
        search,
        edits=edits,
        k=config.k,
        seed=config.seed,
        negatives=negatives.images,
    )
    report_id = catalog.next_report_id()
    audit = {
        "report_id": report_id,
        "batch_id": context.partition_key,
        "created_at": utc_timestamp(),
        "extractor": {
            "identity": model.identity,
            "spec": redact_extractor_spec(extractor.spec),
            "name": model.name,
        },
        "index": {
            "version": version.id,
            "factory": version.factory,
            "served_index_id": served_record.id,
            "served_ntotal": served_record.ntotal,
        },
        "activation": activation_audit(activations),
        "evaluation": {
            "seed": config.seed,
            "k": config.k,
            "nprobe": config.nprobe,
            "edit_set": config.edit_set,
        },
        "negatives": negatives.audit(),
        "image_ids": image_ids,
        "dagster_run_id": context.run_id,
    }
    payload = build_payload(result, audit, quality_of(activations), edits)
    examples = list(zip(image_ids, passive, active, strict=True))[: config.examples]
    figures = report_figures(payload, examples)
    files = store_report(store, payload, figures, render_html(payload, figures))
    catalog.record_report(
        batch_id=context.partition_key,
        kind="robustness",
        payload=payload,
        object_key=files["json"],
        rows=result.rows,
        report_id=report_id,
    )
    averages = payload["result"]["average"]
    pooled = payload["copy_detection"]
    return dg.MaterializeResult(
        metadata={
            "report_id": dg.MetadataValue.int(report_id),
            "recall_at_1_passive": dg.MetadataValue.float(averages["passive"]["recall_at_1"]),
            "recall_at_1_active": dg.MetadataValue.float(averages["active"]["recall_at_1"]),
            "micro_ap_passive": _float(pooled["passive"]["micro_ap"]),
            "micro_ap_active": _float(pooled["active"]["micro_ap"]),
            "table": dg.MetadataValue.md(payload["markdown"]),
            "figures": dg.MetadataValue.md(figures_markdown(figures)),
            "html_report": dg.MetadataValue.text(store.uri(files["html"])),
            "object_key": dg.MetadataValue.text(store.uri(files["json"])),
        }
    )
