"""Index comparison, on demand: which index benefits from activation, as in the paper's table."""

import dataclasses
import json

import dagster as dg
import numpy as np

from aindex_assets.defs.embeddings import image_embeddings, training_embeddings, training_images
from aindex_assets.defs.index import DistractorConfig
from aindex_assets.defs.partitions import ACTIVATION_POOL, DISTRACTOR_ID_BASE, INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.defs.shared import load_batch_descriptors, load_originals
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
from aindex_assets.lib.index import IndexSpecError
from aindex_assets.storage.arrays import decode_descriptors
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.keys import report_key, training_embeddings_key
from aindex_assets.storage.objectstore import ObjectStore

REPORT_KIND = "index_comparison"


class ComparisonConfig(dg.Config):
    """Indexes to compare and how hard to work; defaults reproduce the paper's table.

    `factories` unset: the served factory, `IVF<n>,PQ8x8`, `OPQ8_64,IVF<n>,PQ8x8`, `PCA64,LSH`
    and `Flat`, with n the largest power of two the training vectors afford (39 per list).
    `edits` unset: the paper's 15 edits. The distractors are embedded afresh with the same
    defaults as `index_distractors` (the served index stores only their codes).
    """

    factories: list[str] | None = None
    edits: list[str] | None = None
    iterations: int | None = None
    seed: int = 0
    k: int = 10
    nprobe: int = 1
    distractor_crops: int = 2000
    distractor_crop_size: int = 224
    distractor_seed: int = 1

    def activation_params(self) -> ActivationParams:
        params = dataclasses.replace(ActivationParams(), seed=self.seed)
        if self.iterations is not None:
            params = dataclasses.replace(params, iterations=self.iterations)
        return params


@dg.asset(
    partitions_def=INGEST_BATCHES,
    deps=[image_embeddings, training_embeddings],
    group_name="reports",
    kinds={"faiss", "pytorch"},
    pool=ACTIVATION_POOL,
)
def index_comparison(
    context: dg.AssetExecutionContext,
    config: ComparisonConfig,
    storage: StorageResource,
    extractor: ExtractorResource,
) -> dg.MaterializeResult:
    """The batch evaluated for several FAISS indexes side by side: who gains from activation.

    On demand only: no sensor or automation runs it; launch it from this asset's page or with
    the `compare_indexes` job, for one batch. For each factory string the index
    is trained on the training descriptors and filled with distractors, the batch's originals
    are activated for that index (scratch releases, never published or recorded as
    activations), and edited copies of the passive and active images are searched: recall@1
    per edit, the gain, the PSNR of the releases and the costs. Results: one catalog report
    of kind `index_comparison` per factory (rows per edit and variant, linked by
    `comparison_id`), one JSON document in the object store and the table below. A factory
    that cannot be trained with the available vectors is refused before any work.
    """
    store, catalog = storage.store(), storage.catalog()
    batch_id = context.partition_key
    model = extractor.load()
    training = load_training(store, model)
    factories = config.factories or default_factories(len(training), served_factory(catalog))
    try:
        check_factories(factories, len(training), model.dim)
        edits = edits_by_name(config.edits)
    except (IndexSpecError, KeyError) as error:
        raise dg.Failure(description=str(error).strip("\"'")) from error
    images = catalog.images_in_batch(batch_id)
    if not images:
        return dg.MaterializeResult(metadata={"note": "no images in this batch"})
    descriptors = load_batch_descriptors(store, model.identity, batch_id)
    images = [i for i in images if i.id in descriptors]
    distractors = embed_distractors(store, model, config)
    context.log.info(f"comparing {factories} on {len(images)} images")
    result = compare_indexes(
        load_originals(store, images),
        np.stack([descriptors[i.id] for i in images]),
        [i.id for i in images],
        training,
        distractors,
        DISTRACTOR_ID_BASE + np.arange(len(distractors), dtype=np.int64),
        model,
        factories,
        config.activation_params(),
        edits,
        EvaluationSettings(k=config.k, nprobe=config.nprobe, seed=config.seed),
    )
    document = {
        "batch_id": batch_id,
        "extractor": model.identity,
        "image_ids": [i.id for i in images],
        **result.to_dict(),
    }
    key, report_ids = record(store, catalog, batch_id, result, document)
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(result.to_markdown()),
            "per_edit": dg.MetadataValue.md(result.per_edit_markdown()),
            "factories": dg.MetadataValue.json(factories),
            "report_ids": dg.MetadataValue.json(report_ids),
            "object_key": dg.MetadataValue.text(store.uri(key)),
        }
    )


compare_indexes_job = dg.define_asset_job(
    "compare_indexes",
    selection=dg.AssetSelection.assets(index_comparison),
    description=(
        "On demand: one batch evaluated for several index factory strings, passive vs active "
        "(set the factories, edits and iterations in the launchpad)."
    ),
)


def load_training(store: ObjectStore, model: Extractor) -> np.ndarray:
    key = training_embeddings_key(model.identity)
    if not store.exists(key):
        raise dg.Failure(f"no training descriptors for this extractor: materialize {key!r} first")
    return decode_descriptors(store.get_bytes(key))[1]


def served_factory(catalog: Catalog) -> str | None:
    version = catalog.active_index_version()
    return version.factory if version is not None else None


def embed_distractors(store: ObjectStore, model: Extractor, config: ComparisonConfig) -> np.ndarray:
    """The same crowd as `index_distractors` by default: its raw descriptors are not stored."""
    settings = DistractorConfig(
        crops=config.distractor_crops,
        crop_size=config.distractor_crop_size,
        seed=config.distractor_seed,
    )
    images, _ = training_images(store, settings)
    return model.embed_images(images)


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
