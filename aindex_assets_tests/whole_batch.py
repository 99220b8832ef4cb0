"""What `activate_batch` did before chunking: one `activate` call on the whole batch.

The reference the chunked service is compared with (`test_activation.py`) and measured
against (`benchmarks/batch_memory.py`).
"""

from __future__ import annotations

import numpy as np

from aindex_assets.lib.activation import ActivationParams, ActivationResult, activate
from aindex_assets.lib.extractors import Extractor
from aindex_assets.services.activation import images_to_activate
from aindex_assets.services.index import (
    load_batch_descriptors,
    load_originals,
    load_trained,
    merge_version_shards,
    require_active_version,
)
from aindex_assets.storage.catalog import Catalog, ImageRecord, IndexVersionRecord
from aindex_assets.storage.objectstore import ObjectStore


def activate_whole_batch(
    store: ObjectStore,
    catalog: Catalog,
    extractor: Extractor,
    batch_id: str,
    params: ActivationParams,
) -> tuple[IndexVersionRecord, list[tuple[ImageRecord, ActivationResult]]]:
    """The active version and (image, result) of every image not yet activated."""
    version = require_active_version(catalog)
    todo, _ = images_to_activate(catalog, batch_id)
    descriptors = load_batch_descriptors(store, extractor.identity, batch_id)
    index = load_trained(store, version)
    database, _ = merge_version_shards(store, catalog, version, index, exclude_batch=batch_id)
    results = activate(
        load_originals(store, todo),
        extractor,
        index,
        params,
        original_features=np.stack([descriptors[i.id] for i in todo]),
        database=database,
    )
    return version, list(zip(todo, results, strict=True))
