"""Activation of a batch: release images whose descriptors sit deep inside their index cells.

A batch is activated one chunk at a time: at most `max_pixels_per_batch` pixels (and
`batch_size` images) are decoded, activated, stored and recorded before the next chunk is
read, so a run's memory follows the chunk, not the batch. The chunks share what a single
activation of the whole batch would share: the database of competing codes (the other
batches, the distractors and every image of this batch) and one random stream, so the
releases are those of one `activate` call whose internal batches are the chunks. Each
chunk's releases are recorded as soon as they are stored: a run cut off mid-batch keeps
them, and its retry activates only the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

from aindex_assets.lib.activation import (
    ActivationParams,
    ActivationResult,
    FloorUnreachable,
    activate,
    noise_generator,
    plan_chunks,
    with_own_codes,
)
from aindex_assets.lib.extractors import Extractor
from aindex_assets.lib.images import release_format
from aindex_assets.lib.progress import progress_bar
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
from aindex_assets.storage.sweep import DEFAULT_MAX_AGE, sweep_temporaries

# Temporary objects in the folders activation writes to, left by a write that was killed
# (a run worker killed mid-upload), are removed when older than this.
TEMPORARY_MAX_AGE = DEFAULT_MAX_AGE


@dataclass
class BatchActivation:
    """What one activation run did: the version, the images released now, those kept."""

    index_version: int
    released: list[tuple[ImageRecord, float, float]] = field(default_factory=list)
    already_activated: list[int] = field(default_factory=list)
    # Leftovers of interrupted writes removed from the batch's folders before activating.
    swept: list[str] = field(default_factory=list)

    @property
    def psnrs(self) -> list[float]:
        return [psnr for _, psnr, _ in self.released]


def images_to_activate(catalog: Catalog, batch_id: str) -> tuple[list[ImageRecord], list[int]]:
    """Images of the batch without any activation; those activated before are never redone."""
    done = {a.image_id for a in catalog.activations(batch_id=batch_id)}
    images = catalog.images_in_batch(batch_id)
    return [i for i in images if i.id not in done], sorted(done)


def release_folders(version_id: int, images: list[ImageRecord]) -> list[str]:
    """The folders the releases of these images are written into (one per key prefix)."""
    return sorted(
        {activated_key(version_id, i.content_hash).rpartition("/")[0] + "/" for i in images}
    )


def sweep_release_folders(
    store: ObjectStore,
    version_id: int,
    images: list[ImageRecord],
    older_than: timedelta | None = None,
) -> list[str]:
    """Remove what killed writes left where these images' releases go (see storage.sweep)."""
    age = TEMPORARY_MAX_AGE if older_than is None else older_than
    removed: list[str] = []
    for folder in release_folders(version_id, images):
        removed.extend(sweep_temporaries(store, folder, age))
    return removed


def activate_batch(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    batch_id: str,
    params: ActivationParams,
) -> BatchActivation:
    """Activate the batch's new images for the active index version, one pixel-budgeted
    chunk at a time; store and record each release."""
    version = require_active_version(catalog)
    todo, skipped = images_to_activate(catalog, batch_id)
    outcome = BatchActivation(version.id, already_activated=skipped)
    if not todo:
        catalog.advance_batch_status(batch_id, "activated")
        return outcome
    outcome.swept = sweep_release_folders(store, version.id, todo)
    descriptors = load_batch_descriptors(store, extractor.identity, batch_id)
    index = load_trained(store, version)
    # The margin term needs the codes the batch competes with: distractors and the other
    # batches, and every image of this batch (those activated by an earlier, interrupted
    # run too: their codes go into the same shard), added once for all the chunks.
    database, _ = merge_version_shards(store, catalog, version, index, exclude_batch=batch_id)
    earlier = [i for i in skipped if i in descriptors]
    searched, member_ids = with_own_codes(
        database, np.stack([descriptors[i.id] for i in todo] + [descriptors[i] for i in earlier])
    )
    own_ids = member_ids[: len(todo)]
    generator = noise_generator(params.seed)
    with progress_bar(len(todo), "activation") as bar:
        for chunk in plan_chunks([i.width * i.height for i in todo], params):
            images = [todo[j] for j in chunk]
            try:
                results = activate(
                    load_originals(store, images),
                    extractor,
                    index,
                    params,
                    original_features=np.stack([descriptors[i.id] for i in images]),
                    database=searched,
                    own_ids=own_ids[chunk],
                    generator=generator,
                )
            except FloorUnreachable as exc:  # name the files: the engine only sees pixels
                names = ", ".join(i.source_key for i in images)
                raise FloorUnreachable(
                    f"{params.release_format} release of one of {names}: {exc}"
                ) from exc
            for image, result in zip(images, results, strict=True):
                record_release(store, catalog, version.id, extractor, params, image, result)
                outcome.released.append((image, result.psnr, result.ssim))
            catalog.set_status([i.id for i in images], "activated")
            bar.update(len(images))
            del results  # the chunk's full-resolution releases, before the next chunk is read
    catalog.advance_batch_status(batch_id, "activated")
    return outcome


def record_release(
    store: ObjectStore,
    catalog: Catalog,
    version_id: int,
    extractor: Extractor,
    params: ActivationParams,
    image: ImageRecord,
    result: ActivationResult,
) -> None:
    """Store one release as encoded (its key's extension and content type those of its
    format), then record its activation (object first)."""
    chosen = release_format(params.release_format)
    key = activated_key(version_id, image.content_hash, chosen)
    store.put_bytes(key, result.encoded, content_type=chosen.content_type)
    catalog.record_activation(
        image_id=image.id,
        index_version=version_id,
        extractor_identity=extractor.identity,
        params=params.to_dict(),
        psnr=result.psnr,
        ssim=result.ssim,
        linf=result.linf,
        distance_before=result.distance_before,
        distance_after=result.distance_after,
        object_key=key,
    )
