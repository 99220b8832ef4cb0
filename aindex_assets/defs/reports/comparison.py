"""Index comparison, on demand: which index benefits from activation, as in the paper's table."""

import dataclasses

import dagster as dg

from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.metadata import stored_object
from aindex_assets.defs.partitions import ACTIVATION_POOL, INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.lib.activation import ActivationParams
from aindex_assets.lib.comparison import EvaluationSettings
from aindex_assets.services.comparison import compare_batch
from aindex_assets.services.index import CropSource


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

    def distractors(self) -> CropSource:
        return CropSource(
            crops=self.distractor_crops,
            crop_size=self.distractor_crop_size,
            seed=self.distractor_seed,
        )


@dg.asset(
    partitions_def=INGEST_BATCHES,
    deps=["image_embeddings", "training_embeddings"],
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
    store = storage.store()
    with domain_failures():
        compared = compare_batch(
            store,
            storage.catalog(),
            extractor.load(),
            context.partition_key,
            config.factories,
            config.edits,
            config.activation_params(),
            EvaluationSettings(k=config.k, nprobe=config.nprobe, seed=config.seed),
            config.distractors(),
            storage.packaged_photo_policy(),
        )
    if compared is None:
        return dg.MaterializeResult(metadata={"note": "no images in this batch"})
    result, key, report_ids = compared
    return dg.MaterializeResult(
        metadata={
            "table": dg.MetadataValue.md(result.to_markdown()),
            "per_edit": dg.MetadataValue.md(result.per_edit_markdown()),
            "factories": dg.MetadataValue.json([f.factory for f in result.factories]),
            "report_ids": dg.MetadataValue.json(report_ids),
            "object_key": stored_object(store, key),
        }
    )
