"""Activation: imperceptible changes that pull each descriptor deep inside its index cell."""

import dataclasses
from statistics import mean

import dagster as dg

from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.partitions import ACTIVATION_POOL, INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.lib.activation import ActivationParams
from aindex_assets.services.activation import BatchActivation, activate_batch

TABLE_ROWS = 30


class ActivationConfig(dg.Config):
    """Overrides of the activation parameters; unset fields keep the engine's defaults."""

    iterations: int | None = None
    scaling: float | None = None
    edited_views: int | None = None
    lambda_image: float | None = None
    batch_size: int | None = None
    seed: int = 0

    def params(self) -> ActivationParams:
        overrides = {name: value for name, value in self.model_dump().items() if value is not None}
        return dataclasses.replace(ActivationParams(), **overrides)


def psnr_table(outcome: BatchActivation) -> str:
    rows = [
        f"| {image.id} | `{image.source_key}` | {psnr:.2f} | {ssim:.4f} |"
        for image, psnr, ssim in outcome.released[:TABLE_ROWS]
    ]
    return "\n".join(["| image | source | PSNR (dB) | SSIM |", "|---|---|---|---|", *rows])


@dg.asset(
    partitions_def=INGEST_BATCHES,
    deps=["image_embeddings", "trained_index", "index_distractors"],
    group_name="activation",
    kinds={"pytorch", "png"},
    pool=ACTIVATION_POOL,
)
def activated_images(
    context: dg.AssetExecutionContext,
    config: ActivationConfig,
    storage: StorageResource,
    extractor: ExtractorResource,
) -> dg.MaterializeResult:
    """The batch's images as they will be released: activated for the active index version.

    Each original gets an imperceptible perturbation, shaped by a just-noticeable-
    difference heatmap, that moves its descriptor towards the code the index stores for
    it (METHOD: tanh-bounded, per-channel alpha, Adam on cosine feature loss + MSE image
    loss). The result is stored losslessly as PNG, with one catalog record per image
    (PSNR, SSIM, L-infinity, feature-to-target distance before/after, parameters, index
    version, extractor). Released images are immutable: images already activated, for
    this or an older index version, are skipped, never silently re-activated.
    """
    params = config.params()
    with domain_failures():
        outcome = activate_batch(
            storage.store(), storage.catalog(), extractor.load(), context.partition_key, params
        )
    psnrs = outcome.psnrs
    return dg.MaterializeResult(
        metadata={
            "index_version": dg.MetadataValue.int(outcome.index_version),
            "activated": dg.MetadataValue.int(len(outcome.released)),
            "already_activated": dg.MetadataValue.int(len(outcome.already_activated)),
            "psnr_mean": dg.MetadataValue.float(float(mean(psnrs)) if psnrs else float("nan")),
            "psnr_min": dg.MetadataValue.float(float(min(psnrs)) if psnrs else float("nan")),
            "images": dg.MetadataValue.md(psnr_table(outcome)),
            "parameters": dg.MetadataValue.json(params.to_dict()),
        }
    )
