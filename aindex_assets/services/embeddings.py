"""Descriptors: of each batch's originals, and of the set the index is trained on."""

from __future__ import annotations

import numpy as np

from aindex_assets.lib.extractors import Extractor
from aindex_assets.services.index import CropSource, load_originals, training_images
from aindex_assets.services.packaged import PackagedPhotos
from aindex_assets.storage.arrays import encode_descriptors
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.keys import embeddings_key, training_embeddings_key
from aindex_assets.storage.objectstore import ObjectStore


def embed_batch(
    store: ObjectStore, catalog: Catalog, extractor: Extractor, batch_id: str
) -> tuple[str, int]:
    """Store the descriptors of the batch's originals (ids + float32 rows): (key, count)."""
    images = catalog.images_in_batch(batch_id)
    vectors = (
        extractor.embed_images(load_originals(store, images))
        if images
        else np.zeros((0, extractor.dim), np.float32)
    )
    ids = np.array([i.id for i in images], dtype=np.int64)
    key = embeddings_key(extractor.identity, batch_id)
    store.put_bytes(key, encode_descriptors(ids, vectors))
    catalog.set_status([i.id for i in images if i.status == "registered"], "embedded")
    catalog.advance_batch_status(batch_id, "embedded")
    return key, len(images)


def embed_training_set(
    store: ObjectStore, extractor: Extractor, source: CropSource, packaged: PackagedPhotos
) -> tuple[str, int, str]:
    """Store the training descriptors of the extractor: (key, count, where they came from)."""
    images, origin = training_images(store, source, packaged)
    vectors = extractor.embed_images(images)
    key = training_embeddings_key(extractor.identity)
    store.put_bytes(key, encode_descriptors(np.arange(len(vectors)), vectors))
    return key, len(vectors), origin
