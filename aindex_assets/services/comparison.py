"""Index comparison: which FAISS index gains from activation, as in the paper's table."""

from __future__ import annotations

import json

import numpy as np

from aindex_assets.lib.activation import ActivationParams
from aindex_assets.lib.comparison import (
    ComparisonResult,
    EvaluationSettings,
    check_factories,
    compare_indexes,
    default_factories,
)
from aindex_assets.lib.edits import edits_by_name
from aindex_assets.lib.extractors import Extractor
from aindex_assets.services.index import (
    CropSource,
    load_batch_descriptors,
    load_originals,
    load_training_vectors,
    training_images,
)
from aindex_assets.services.packaged import PackagedPhotos
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.keys import DISTRACTOR_ID_BASE, report_key
from aindex_assets.storage.objectstore import ObjectStore

REPORT_KIND = "index_comparison"


def served_factory(catalog: Catalog) -> str | None:
    version = catalog.active_index_version()
    return version.factory if version is not None else None


def compare_batch(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    batch_id: str,
    factories: list[str] | None,
    edit_names: list[str] | None,
    params: ActivationParams,
    evaluation: EvaluationSettings,
    distractors: CropSource,
    packaged: PackagedPhotos,
) -> tuple[ComparisonResult, str, list[int]] | None:
    """Compare the factories on the batch and record the result; None for an empty batch.

    Raises `IndexSpecError` or `KeyError` for a factory or an edit that cannot be used,
    before any work starts.
    """
    training = load_training_vectors(store, extractor.identity)
    factories = factories or default_factories(len(training), served_factory(catalog))
    check_factories(factories, len(training), extractor.dim)
    edits = edits_by_name(edit_names)
    descriptors = load_batch_descriptors(store, extractor.identity, batch_id)
    images = [i for i in catalog.images_in_batch(batch_id) if i.id in descriptors]
    if not images:
        return None
    # The same crowd as `index_distractors`: its raw descriptors are not stored.
    crowd = extractor.embed_images(training_images(store, distractors, packaged)[0])
    result = compare_indexes(
        load_originals(store, images),
        np.stack([descriptors[i.id] for i in images]),
        [i.id for i in images],
        training,
        crowd,
        DISTRACTOR_ID_BASE + np.arange(len(crowd), dtype=np.int64),
        extractor,
        factories,
        params,
        edits,
        evaluation,
    )
    document = {
        "batch_id": batch_id,
        "extractor": extractor.identity,
        "image_ids": [i.id for i in images],
        **result.to_dict(),
    }
    key, report_ids = record(store, catalog, batch_id, result, document)
    return result, key, report_ids


def record(
    store: ObjectStore,
    catalog: Catalog,
    batch_id: str,
    result: ComparisonResult,
    document: dict,
) -> tuple[str, list[int]]:
    """One JSON document, then one immutable catalog report per factory, all pointing at it.

    A report's rows are unique per (edit, variant), so each factory gets its own report; the
    first report's id is the `comparison_id` that ties them together.
    """
    report_ids = [catalog.next_report_id() for _ in result.factories]
    key = report_key(batch_id, REPORT_KIND, report_ids[0])
    document = {**document, "comparison_id": report_ids[0], "report_ids": report_ids}
    document["markdown"] = result.to_markdown()
    document["per_edit_markdown"] = result.per_edit_markdown()
    store.put_bytes(key, json.dumps(document, indent=2).encode(), content_type="application/json")
    for position, (report_id, factory) in enumerate(zip(report_ids, result.factories, strict=True)):
        summary = {k: v for k, v in document["factories"][position].items() if k != "robustness"}
        catalog.record_report(
            batch_id=batch_id,
            kind=REPORT_KIND,
            payload={
                "comparison_id": report_ids[0],
                "position": position,
                "schema_version": document["schema_version"],
                **summary,
                "average": document["factories"][position]["robustness"]["average"],
            },
            object_key=key,
            rows=factory.robustness.rows,
            report_id=report_id,
        )
    return key, report_ids
