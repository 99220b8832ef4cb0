"""Activation: imperceptible changes that pull each descriptor deep inside its index cell."""

import dataclasses
import math
from statistics import mean

import dagster as dg

from aindex_assets.defs.failures import domain_failures
from aindex_assets.defs.metadata import DB_DIGITS, rounded
from aindex_assets.defs.partitions import ACTIVATION_POOL, INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.lib.activation import ActivationParams
from aindex_assets.lib.images import ReleaseFormat
from aindex_assets.services.activation import BatchActivation, activate_batch

TABLE_ROWS = 30


class ActivationConfig(dg.Config):
    """Overrides of the activation parameters; unset fields keep the engine's defaults.

    `release_format` is the file each image is released as: `png` (lossless, the default),
    or `jpeg` / `webp` at `release_quality` (1-100, default 95), several times smaller but
    lossy. The PSNR and SSIM recorded for each image, the engine's PSNR floor and the
    blocking check on it, and the guarantee that the unedited release still finds its own
    code, all apply to the pixels decoded from that file, since those are what is published.
    """

    iterations: int | None = None
    scaling: float | None = None
    edited_views: int | None = None
    lambda_image: float | None = None
    batch_size: int | None = None
    release_format: ReleaseFormat | None = None
    release_quality: int | None = None
    seed: int = 0

    def params(self) -> ActivationParams:
        """The engine's parameters; a ValueError names a field whose value it refuses."""
        chosen = self.model_dump(mode="json").items()  # the format as its name
        overrides = {name: value for name, value in chosen if value is not None}
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
    loss). The result is stored as PNG (lossless, the default) or as the configured JPEG or
    WebP, with one catalog record per image (PSNR, SSIM, L-infinity, feature-to-target
    distance before/after, all measured on the image as decoded from the stored file;
    parameters, index version, extractor). Released images are immutable: images already
    activated, for this or an older index version, are skipped, never silently re-activated.
    """
    try:
        params = config.params()
    except ValueError as error:  # a value out of range: one readable line, not a trace
        raise dg.Failure(description=str(error)) from error
    with domain_failures():
        outcome = activate_batch(
            storage.store(), storage.catalog(), extractor.load(), context.partition_key, params
        )
    psnrs = [p for p in outcome.psnrs if math.isfinite(p)]  # not the unchanged releases
    return dg.MaterializeResult(
        metadata={
            "index_version": dg.MetadataValue.int(outcome.index_version),
            "activated": dg.MetadataValue.int(len(outcome.released)),
            "already_activated": dg.MetadataValue.int(len(outcome.already_activated)),
            "psnr_mean": rounded(float(mean(psnrs)) if psnrs else None, DB_DIGITS),
            "psnr_min": rounded(min(psnrs, default=None), DB_DIGITS),
            "images": dg.MetadataValue.md(psnr_table(outcome)),
            "parameters": dg.MetadataValue.json(params.to_dict()),
        }
    )
