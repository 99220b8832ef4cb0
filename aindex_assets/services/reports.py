"""Robustness reports: edited copies of a batch, passive against active, in the served index.

Copy detection is scored exactly as `aindex query` scores a file: the served index's top k,
re-ranked on the stored original descriptors (`services.copy_detection.detection.rerank`),
so a report's figures and a query's verdict agree on the same served index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aindex_assets.lib.copydetection import TopMatch
from aindex_assets.lib.edits import Edit
from aindex_assets.lib.evaluation import RobustnessResult, evaluate_robustness
from aindex_assets.lib.extractors import Extractor
from aindex_assets.lib.images import ImageRejected, content_hash, decode_image
from aindex_assets.lib.photos import negative_photos
from aindex_assets.lib.report import (
    build_payload,
    distinct,
    edits_for,
    quality_section,
    utc_timestamp,
)
from aindex_assets.lib.report_figures import report_figures
from aindex_assets.lib.report_html import render_html
from aindex_assets.services.copy_detection.detection import (
    OriginalDescriptors,
    check_extractor,
    rerank,
)
from aindex_assets.services.index import ServedSearch, load_originals, open_served
from aindex_assets.services.packaged import PackagedPhotos
from aindex_assets.settings import redact_extractor_spec
from aindex_assets.storage.catalog import ActivationRecord, Catalog
from aindex_assets.storage.keys import NEGATIVES_PREFIX, report_asset_key, report_key
from aindex_assets.storage.objectstore import ObjectStore


class ReportExists(RuntimeError):
    """A report object is already stored under this report id: reports are immutable."""


@dataclass(frozen=True)
class ReportSettings:
    """Search settings, edits, the seed of the random ("auto") edits and the negatives."""

    k: int = 10
    nprobe: int = 1
    seed: int = 0
    edit_set: str = "paper"
    edits: list[str] | None = None
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


@dataclass(frozen=True)
class StoredReport:
    """A report written to the catalog and the store."""

    report_id: int
    payload: dict
    figures: dict[str, bytes]
    files: dict[str, object]


def choose_negatives(
    store: ObjectStore, catalog: Catalog, prefix: str, limit: int, packaged: PackagedPhotos
) -> Negatives:
    """Images under `prefix` in the store (key order), else (when `packaged` allows) the
    packaged negative photos.

    Either way an image whose bytes are registered in the catalog is skipped, so no
    negative is an indexed image; files that do not decode are skipped too. The packaged
    photos are used when the store holds no usable image under `prefix`.
    """
    stored = [(info.key, store.get_bytes(info.key)) for info in store.list(prefix, limit=limit)]
    negatives = usable_negatives(catalog, "store", prefix, stored)
    if not negatives.images:
        packaged.require(NEGATIVES_PREFIX)
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
            raise ReportExists(f"report object {key} already exists: reports are immutable")
    payload["files"] = files
    for name, png in figures.items():
        store.put_bytes(files["figures"][name], png, content_type="image/png")
    store.put_bytes(files["html"], html.encode(), content_type="text/html; charset=utf-8")
    document = json.dumps(payload, indent=2, allow_nan=False).encode()
    store.put_bytes(files["json"], document, content_type="application/json")
    return files


def evaluate_on_served(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    served: ServedSearch,
    passive: list[Image.Image],
    active: list[Image.Image] | None,
    image_ids: list[int],
    negatives: list[Image.Image],
    edits: dict[str, Edit],
    settings: ReportSettings,
) -> RobustnessResult:
    """Edited copies searched in the served index; copy detection on the re-ranked top match.

    The score of a query is the one `aindex query` gives the same image: its top k from the
    served index (k and nprobe of `settings`), re-ranked on the original descriptors.
    """
    originals = OriginalDescriptors(store, catalog, extractor.identity)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return served.search(queries, k, settings.nprobe)

    def reranked(queries: np.ndarray, ids: np.ndarray) -> list[TopMatch | None]:
        return rerank(queries, ids, served, originals)

    return evaluate_robustness(
        passive,
        active,
        image_ids,
        extractor.embed_images,
        search,
        edits=edits,
        k=settings.k,
        seed=settings.seed,
        negatives=negatives,
        higher_is_better=served.higher_is_better,
        rerank=reranked,
    )


def robustness_report(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    extractor_spec: str,
    batch_id: str,
    settings: ReportSettings,
    packaged: PackagedPhotos,
    run_id: str | None = None,
) -> StoredReport | None:
    """Evaluate the batch's activated images and store the report; None when there are none."""
    activations = catalog.activations(batch_id=batch_id)
    if not activations:  # every file was refused: nothing to report, the batch is done
        catalog.advance_batch_status(batch_id, "reported")
        return None
    served = open_served(store, catalog)
    check_extractor(extractor, served)  # the re-rank reads this extractor's descriptors
    image_ids = [a.image_id for a in activations]
    images = catalog.images_by_ids(image_ids)
    passive = load_originals(store, images)
    active = [decode_image(store.get_bytes(a.object_key), a.object_key).image for a in activations]
    negatives = choose_negatives(
        store, catalog, settings.negatives_prefix, settings.max_negatives, packaged
    )
    edits = edits_for(settings.edit_set, settings.edits)
    result = evaluate_on_served(
        store,
        catalog,
        extractor,
        served,
        passive,
        active,
        image_ids,
        negatives.images,
        edits,
        settings,
    )
    report_id = catalog.next_report_id()
    audit = {
        "report_id": report_id,
        "batch_id": batch_id,
        "created_at": utc_timestamp(),
        "extractor": {
            "identity": extractor.identity,
            "spec": redact_extractor_spec(extractor_spec),
            "name": extractor.name,
        },
        "index": {
            "version": served.version.id,
            "factory": served.version.factory,
            "served_index_id": served.served.id,
            "served_ntotal": served.served.ntotal,
        },
        "activation": activation_audit(activations),
        "evaluation": {
            "seed": settings.seed,
            "k": settings.k,
            "nprobe": settings.nprobe,
            "edit_set": settings.edit_set,
        },
        "negatives": negatives.audit(),
        "image_ids": image_ids,
        "image_names": [image.source_key for image in images],
        "dagster_run_id": run_id,
    }
    payload = build_payload(result, audit, quality_of(activations), edits)
    examples = list(zip(image_ids, passive, active, strict=True))[: settings.examples]
    figures = report_figures(payload, examples)
    files = store_report(store, payload, figures, render_html(payload, figures))
    catalog.record_report(
        batch_id=batch_id,
        kind="robustness",
        payload=payload,
        object_key=files["json"],
        rows=result.rows,
        report_id=report_id,
    )
    catalog.advance_batch_status(batch_id, "reported")
    return StoredReport(report_id, payload, figures, files)
