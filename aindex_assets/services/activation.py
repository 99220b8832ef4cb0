"""Activation of a batch: release images whose descriptors sit deep inside their index cells."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aindex_assets.lib.activation import ActivationParams, activate
from aindex_assets.lib.extractors import Extractor
from aindex_assets.lib.images import encode_png
from aindex_assets.services.index import (
    load_batch_descriptors,
    load_originals,
    load_trained,
    merge_version_shards,
    require_active_version,
)
from aindex_assets.storage.catalog import Catalog, ImageRecord
from aindex_assets.storage.keys import activated_key
from aindex_assets.storage.objectstore import ObjectStore


@dataclass
class BatchActivation:
    """What one activation run did: the version, the images released now, those kept."""

    index_version: int
    released: list[tuple[ImageRecord, float, float]] = field(default_factory=list)
    already_activated: list[int] = field(default_factory=list)

    @property
    def psnrs(self) -> list[float]:
        return [psnr for _, psnr, _ in self.released]


def images_to_activate(catalog: Catalog, batch_id: str) -> tuple[list[ImageRecord], list[int]]:
    """Images of the batch without any activation; those activated before are never redone."""
    done = {a.image_id for a in catalog.activations(batch_id=batch_id)}
    images = catalog.images_in_batch(batch_id)
    return [i for i in images if i.id not in done], sorted(done)


def activate_batch(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    batch_id: str,
    params: ActivationParams,
) -> BatchActivation:
    """Activate the batch's new images for the active index version; store and record each."""
    version = require_active_version(catalog)
    todo, skipped = images_to_activate(catalog, batch_id)
    outcome = BatchActivation(version.id, already_activated=skipped)
    if not todo:
        return outcome
    descriptors = load_batch_descriptors(store, extractor.identity, batch_id)
    index = load_trained(store, version)
    # The margin term needs the codes the batch competes with: distractors and the other
    # batches (the engine adds the batch's own images).
    database, _ = merge_version_shards(store, catalog, version, index, exclude_batch=batch_id)
    results = activate(
        load_originals(store, todo),
        extractor,
        index,
        params,
        original_features=np.stack([descriptors[i.id] for i in todo]),
        database=database,
    )
    for image, result in zip(todo, results, strict=True):
        key = activated_key(version.id, image.content_hash)
        store.put_bytes(key, encode_png(result.image), content_type="image/png")
        catalog.record_activation(
            image_id=image.id,
            index_version=version.id,
            extractor_identity=extractor.identity,
            params=params.to_dict(),
            psnr=result.psnr,
            ssim=result.ssim,
            linf=result.linf,
            distance_before=result.distance_before,
            distance_after=result.distance_after,
            object_key=key,
        )
        outcome.released.append((image, result.psnr, result.ssim))
    catalog.set_status([i.id for i in todo], "activated")
    return outcome
