"""Reads that several assets share: originals, descriptors, the active index version."""

import dagster as dg
import faiss
import numpy as np
from PIL import Image

from aindex_assets.defs.resources import ExtractorResource
from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.images import decode_image
from aindex_assets.settings import redact_extractor_spec
from aindex_assets.storage.arrays import decode_descriptors
from aindex_assets.storage.catalog import (
    Catalog,
    ImageRecord,
    IndexVersionRecord,
    ShardRecord,
)
from aindex_assets.storage.keys import embeddings_key
from aindex_assets.storage.objectstore import ObjectStore


def load_originals(store: ObjectStore, images: list[ImageRecord]) -> list[Image.Image]:
    return load_images(store, [i.original_key for i in images])


def load_images(store: ObjectStore, keys: list[str]) -> list[Image.Image]:
    return [decode_image(store.get_bytes(key), key).image for key in keys]


def load_batch_descriptors(
    store: ObjectStore, extractor_identity: str, batch_id: str
) -> dict[int, np.ndarray]:
    ids, vectors = decode_descriptors(store.get_bytes(embeddings_key(extractor_identity, batch_id)))
    return dict(zip(ids.tolist(), vectors, strict=True))


def register_extractor(catalog: Catalog, extractor_resource: ExtractorResource) -> None:
    extractor = extractor_resource.load()
    catalog.upsert_extractor(
        identity=extractor.identity,
        spec=redact_extractor_spec(extractor_resource.spec),  # a model URL may hold a token
        dim=extractor.dim,
        input_size=extractor.input_size,
        details={"name": extractor.name},
    )


def require_active_version(catalog: Catalog) -> IndexVersionRecord:
    version = catalog.active_index_version()
    if version is None:
        raise dg.Failure(
            "no trained index: materialize `trained_index` first (or run `aindex demo`)"
        )
    return version


def load_trained(store: ObjectStore, version: IndexVersionRecord) -> faiss.Index:
    return faiss_index.deserialize_index(store.get_bytes(version.object_key))


def load_served(store: ObjectStore, catalog: Catalog, version: IndexVersionRecord) -> faiss.Index:
    served = catalog.current_served_index(version.id)
    if served is None:
        raise dg.Failure(
            f"index version {version.id} has no served index: materialize `search_index`"
        )
    return faiss_index.deserialize_index(store.get_bytes(served.object_key))


def merge_version_shards(
    store: ObjectStore,
    catalog: Catalog,
    version: IndexVersionRecord,
    trained: faiss.Index,
    exclude_batch: str | None = None,
) -> tuple[faiss.Index, list[ShardRecord]]:
    """One index holding every recorded shard of the version (but `exclude_batch`'s)."""
    shards = [s for s in catalog.shards(version.id) if s.batch_id != exclude_batch]
    merged = faiss_index.merge_shards(
        trained, [faiss_index.deserialize_index(store.get_bytes(s.object_key)) for s in shards]
    )
    return merged, shards


def version_metadata(version: IndexVersionRecord) -> dict[str, dg.MetadataValue]:
    return {
        "index_version": dg.MetadataValue.int(version.id),
        "factory": dg.MetadataValue.text(version.factory),
    }
