"""Descriptors: of each batch's originals, and of the training set the index is trained on."""

import dagster as dg
import numpy as np
from PIL import Image

from aindex_assets.defs.ingest import raw_images
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.defs.resources import ExtractorResource, StorageResource
from aindex_assets.defs.shared import (
    load_images,
    load_originals,
    register_extractor,
)
from aindex_assets.lib.images import decode_image
from aindex_assets.lib.photos import random_crops, split_demo_photos
from aindex_assets.storage.arrays import encode_descriptors
from aindex_assets.storage.keys import (
    TRAINING_IMAGES_PREFIX,
    embeddings_key,
    training_embeddings_key,
)
from aindex_assets.storage.objectstore import ObjectStore


@dg.asset(
    partitions_def=INGEST_BATCHES,
    deps=[raw_images],
    group_name="ingest",
    kinds={"pytorch", "numpy"},
)
def image_embeddings(
    context: dg.AssetExecutionContext, storage: StorageResource, extractor: ExtractorResource
) -> dg.MaterializeResult:
    """Descriptors of the batch's originals, one L2-normalized row per registered image.

    Computed with the configured frozen extractor (its identity, a hash of weights and
    preprocessing, is recorded in the catalog and in this materialization) and stored
    as an `.npz` of ids and float32 vectors, read back without pickle. These are the
    features the index stores for the images: activation moves the released pixels,
    never the indexed descriptors.
    """
    store, catalog = storage.store(), storage.catalog()
    model = extractor.load()
    register_extractor(catalog, extractor)
    images = catalog.images_in_batch(context.partition_key)
    vectors = (
        model.embed_images(load_originals(store, images))
        if images
        else np.zeros((0, model.dim), np.float32)
    )
    ids = np.array([i.id for i in images], dtype=np.int64)
    key = embeddings_key(model.identity, context.partition_key)
    store.put_bytes(key, encode_descriptors(ids, vectors))
    catalog.set_status([i.id for i in images if i.status == "registered"], "embedded")
    return dg.MaterializeResult(
        metadata={
            "images": dg.MetadataValue.int(len(images)),
            "dim": dg.MetadataValue.int(model.dim),
            "extractor": dg.MetadataValue.text(model.identity),
            "object_key": dg.MetadataValue.text(store.uri(key)),
        }
    )


class TrainingConfig(dg.Config):
    """Where training descriptors come from when `training/images/` holds no images."""

    crops: int = 3000
    crop_size: int = 224
    seed: int = 0


def training_images(store: ObjectStore, config: TrainingConfig) -> tuple[list[Image.Image], str]:
    """Images under `training/images/` if any, else random crops of held-out packaged photos."""
    keys = [info.key for info in store.list(TRAINING_IMAGES_PREFIX)]
    if keys:
        return load_images(store, keys), f"{len(keys)} images under {TRAINING_IMAGES_PREFIX}"
    # Held-out photos only: a distractor cut from an indexed photo would be a near-copy of it.
    _, held_out = split_demo_photos()
    photos = [decode_image(data, name).image for name, data in held_out]
    crops = random_crops(photos, config.crops, config.crop_size, config.seed)
    return (
        crops,
        f"{len(crops)} random crops of {len(photos)} held-out packaged photos (seed {config.seed})",
    )


@dg.asset(group_name="index", kinds={"pytorch", "numpy"})
def training_embeddings(
    config: TrainingConfig, storage: StorageResource, extractor: ExtractorResource
) -> dg.MaterializeResult:
    """Descriptors the FAISS index is trained on (not indexed themselves).

    Taken from the images under `training/images/` in the object store when there
    are any; otherwise from seeded random crops of the real photos that ship inside
    the installed packages, so a fresh install can train a working index offline.
    """
    store = storage.store()
    model = extractor.load()
    images, source = training_images(store, config)
    vectors = model.embed_images(images)
    key = training_embeddings_key(model.identity)
    store.put_bytes(key, encode_descriptors(np.arange(len(vectors)), vectors))
    return dg.MaterializeResult(
        metadata={
            "vectors": dg.MetadataValue.int(len(vectors)),
            "source": dg.MetadataValue.text(source),
            "extractor": dg.MetadataValue.text(model.identity),
            "object_key": dg.MetadataValue.text(store.uri(key)),
        }
    )
