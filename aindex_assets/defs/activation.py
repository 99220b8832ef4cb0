"""Activation: imperceptible changes that pull each descriptor deep inside its index cell."""

import dataclasses
from statistics import mean

import dagster as dg
import numpy as np

from aindex_assets.defs.embeddings import image_embeddings
from aindex_assets.defs.partitions import ACTIVATION_POOL, INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.defs.shared import (
    load_batch_descriptors,
    load_originals,
    load_trained,
    merge_version_shards,
    require_active_version,
)
from aindex_assets.lib.activation import ActivationParams, activate
from aindex_assets.lib.images import encode_png
from aindex_assets.storage.catalog import Catalog, ImageRecord
from aindex_assets.storage.keys import activated_key


class ActivationConfig(dg.Config):
    """Overrides of the activation parameters; unset fields keep the engine's defaults."""

    iterations: int | None = None
    scaling: float | None = None
    lambda_image: float | None = None
    batch_size: int | None = None
    seed: int = 0

    def params(self) -> ActivationParams:
        overrides = {
            name: value
            for name, value in self.model_dump().items()
            if value is not None and name in {f.name for f in dataclasses.fields(ActivationParams)}
        }
        return dataclasses.replace(ActivationParams(), **overrides)


def images_to_activate(catalog: Catalog, batch_id: str) -> tuple[list[ImageRecord], list[int]]:
    """Images of the batch without any activation; those activated before are never redone."""
    done = {a.image_id for a in catalog.activations(batch_id=batch_id)}
    images = catalog.images_in_batch(batch_id)
    return [i for i in images if i.id not in done], sorted(done)


def psnr_table(records: list[tuple[ImageRecord, float, float]]) -> str:
    rows = [
        f"| {image.id} | `{image.source_key}` | {psnr:.2f} | {ssim:.4f} |"
        for image, psnr, ssim in records[:30]
    ]
    return "\n".join(["| image | source | PSNR (dB) | SSIM |", "|---|---|---|---|", *rows])


@dg.asset(
    partitions_def=INGEST_BATCHES,
    deps=[image_embeddings, "trained_index", "index_distractors"],
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
    store, catalog = storage.store(), storage.catalog()
    version = require_active_version(catalog)
    model = extractor.load()
    todo, skipped = images_to_activate(catalog, context.partition_key)
    params = config.params()
    descriptors = load_batch_descriptors(store, model.identity, context.partition_key)
    results = []
    if todo:
        originals = load_originals(store, todo)
        features = np.stack([descriptors[i.id] for i in todo])
        index = load_trained(store, version)
        # The margin term needs the codes the batch competes with: distractors and the other
        # batches (the engine adds the batch's own images).
        database, _ = merge_version_shards(
            store, catalog, version, index, exclude_batch=context.partition_key
        )
        results = activate(
            originals, model, index, params, original_features=features, database=database
        )
    quality = []
    for image, result in zip(todo, results, strict=True):
        key = activated_key(version.id, image.content_hash)
        store.put_bytes(key, encode_png(result.image), content_type="image/png")
        catalog.record_activation(
            image_id=image.id,
            index_version=version.id,
            extractor_identity=model.identity,
            params=params.to_dict(),
            psnr=result.psnr,
            ssim=result.ssim,
            linf=result.linf,
            distance_before=result.distance_before,
            distance_after=result.distance_after,
            object_key=key,
        )
        quality.append((image, result.psnr, result.ssim))
    catalog.set_status([i.id for i in todo], "activated")
    psnrs = [p for _, p, _ in quality]
    return dg.MaterializeResult(
        metadata={
            "index_version": dg.MetadataValue.int(version.id),
            "activated": dg.MetadataValue.int(len(todo)),
            "already_activated": dg.MetadataValue.int(len(skipped)),
            "psnr_mean": dg.MetadataValue.float(float(mean(psnrs)) if psnrs else float("nan")),
            "psnr_min": dg.MetadataValue.float(float(min(psnrs)) if psnrs else float("nan")),
            "images": dg.MetadataValue.md(psnr_table(quality)),
            "parameters": dg.MetadataValue.json(params.to_dict()),
        }
    )
