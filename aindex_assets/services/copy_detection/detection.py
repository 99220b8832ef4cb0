"""Copy detection: suspicious files decoded safely, embedded, searched and judged.

A query's score is the squared L2 distance (or inner product) of its descriptor to the
stored ORIGINAL descriptor of each catalog image in its top-k shortlist from the served
index: the index finds candidates, the re-rank decides (PQ distances alone cannot separate
copies from unrelated photos). `top_matches` is that one score: `aindex query`, the query
batches, the threshold's calibration and the robustness reports all use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel

from aindex_assets.lib.copydetection import (
    DEFAULT_TARGET_FPR,
    TopMatch,
    passes,
    reranked_top_match,
)
from aindex_assets.lib.extractors import Extractor
from aindex_assets.lib.images import ImageRejected, content_hash, decode_image
from aindex_assets.services.index import ServedSearch
from aindex_assets.storage.arrays import decode_descriptors
from aindex_assets.storage.catalog import Catalog, CopyThresholdRecord
from aindex_assets.storage.keys import DISTRACTOR_ID_BASE, embeddings_key
from aindex_assets.storage.objectstore import ObjectStore


class ExtractorMismatch(ValueError):
    """The configured extractor is not the one the served index was built with."""


class DetectionSetting(BaseModel, frozen=True):
    """How queries are searched and how the threshold is calibrated for them.

    A threshold is recorded per served index and (k, nprobe, target_fpr); the other
    fields only shape the calibration queries: `max_matching` activated images edited
    `edits_per_image` times each, `max_negatives` unrelated photos edited
    `edits_per_negative` times each (the non-matching queries; 1/target_fpr of them are
    needed to resolve the rate).
    """

    k: int = 10
    nprobe: int = 1
    target_fpr: float = DEFAULT_TARGET_FPR
    seed: int = 0
    edits_per_image: int = 2
    edits_per_negative: int = 14
    max_matching: int = 48
    max_negatives: int = 16


class OriginalDescriptors:
    """Stored original descriptors of catalog images, read per batch file and cached."""

    def __init__(self, store: ObjectStore, catalog: Catalog, extractor_identity: str) -> None:
        self.store, self.catalog, self.identity = store, catalog, extractor_identity
        self.vectors: dict[int, np.ndarray] = {}
        self.loaded: set[str] = set()

    def of(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        """{id: descriptor} of the catalog ids among `ids` (distractors and padding ignored)."""
        wanted = {int(i) for i in ids.reshape(-1).tolist() if 0 <= i < DISTRACTOR_ID_BASE}
        missing = sorted(wanted - self.vectors.keys())
        for image in self.catalog.images_by_ids(missing) if missing else []:
            if image.batch_id not in self.loaded:
                key = embeddings_key(self.identity, image.batch_id)
                batch_ids, vectors = decode_descriptors(self.store.get_bytes(key))
                self.vectors.update(zip(batch_ids.tolist(), vectors, strict=True))
                self.loaded.add(image.batch_id)
        return {i: self.vectors[i] for i in wanted if i in self.vectors}


def rerank(
    vectors: np.ndarray, ids: np.ndarray, served: ServedSearch, originals: OriginalDescriptors
) -> list[TopMatch | None]:
    """Each vector's top catalog match among its top-k `ids`, scored on original descriptors."""
    known = originals.of(ids)
    return [
        reranked_top_match(v, row, known, DISTRACTOR_ID_BASE, served.higher_is_better)
        for v, row in zip(vectors, ids, strict=True)
    ]


def top_matches(
    vectors: np.ndarray,
    served: ServedSearch,
    originals: OriginalDescriptors,
    setting: DetectionSetting,
) -> tuple[list[TopMatch | None], np.ndarray, np.ndarray]:
    """Each vector's re-ranked top catalog match, and the index's (scores, ids) of its top k."""
    scores, ids = served.search(vectors, setting.k, setting.nprobe)
    return rerank(vectors, ids, served, originals), scores, ids


@dataclass(frozen=True)
class QueryFile:
    """A query to judge: its key or path, its bytes (None when unreadable) and why not."""

    key: str
    data: bytes | None
    unreadable_reason: str = "could not be read"


@dataclass(frozen=True)
class Verdict:
    """The decision for one query file, with its top-k results (distractors have no id)."""

    query_key: str
    is_copy: bool
    threshold: float
    query_hash: str | None = None
    image_id: int | None = None
    source_key: str | None = None
    score: float | None = None
    rank: int | None = None
    matches: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_extractor(extractor: Extractor, served: ServedSearch) -> None:
    """Queries must be embedded by the extractor the index was built with."""
    if extractor.identity != served.version.extractor_identity:
        raise ExtractorMismatch(
            f"the configured extractor ({extractor.identity[:12]}) is not the one index version "
            f"{served.version.id} was built with ({served.version.extractor_identity[:12]}): "
            "set AINDEX_EXTRACTOR back, or retrain the index"
        )


def decode_queries(
    queries: Sequence[QueryFile],
) -> tuple[list[tuple[int, str, Image.Image]], dict[int, tuple[str | None, str]]]:
    """(position, hash, image) of the usable queries; {position: (hash, reason)} of the rest."""
    usable, refused = [], {}
    for position, query in enumerate(queries):
        if query.data is None:
            refused[position] = (None, query.unreadable_reason)
            continue
        digest = content_hash(query.data) if query.data else None
        try:
            usable.append((position, digest, decode_image(query.data, query.key).image))
        except ImageRejected as exc:
            refused[position] = (digest, exc.reason)
    return usable, refused


def result_rows(
    scores: np.ndarray, ids: np.ndarray, sources: dict[int, str]
) -> list[dict[str, Any]]:
    """One query's top-k results as JSON rows (index scores); distractors are marked as such."""
    rows = []
    for rank, (score, found) in enumerate(zip(scores.tolist(), ids.tolist(), strict=True)):
        if found < 0:
            continue
        catalog_image = found < DISTRACTOR_ID_BASE
        rows.append(
            {
                "rank": rank,
                "image_id": int(found) if catalog_image else None,
                "source_key": sources.get(int(found)) if catalog_image else None,
                "index_score": float(score),
                "distractor": not catalog_image,
            }
        )
    return rows


def source_keys(catalog: Catalog, ids: np.ndarray) -> dict[int, str]:
    """Source keys of the catalog images among search results (unknown ids are left out)."""
    wanted = sorted({int(i) for i in ids.reshape(-1).tolist() if 0 <= i < DISTRACTOR_ID_BASE})
    try:
        return {image.id: image.source_key for image in catalog.images_by_ids(wanted)}
    except LookupError:  # an id the catalog lost: look them up one by one
        found = (catalog.image(i) for i in wanted)
        return {image.id: image.source_key for image in found if image is not None}


def detect(
    queries: Sequence[QueryFile],
    store: ObjectStore,
    extractor: Extractor,
    served: ServedSearch,
    catalog: Catalog,
    threshold: CopyThresholdRecord,
    setting: DetectionSetting,
) -> list[Verdict]:
    """A verdict per query file, in the order given; bad files get their reason.

    The top match is re-ranked on the original descriptors of the top-k catalog images
    (see `lib.copydetection.reranked_top_match`); `matches` keep the index's own scores.
    """
    check_extractor(extractor, served)
    usable, refused = decode_queries(queries)
    vectors = extractor.embed_images([image for _, _, image in usable])
    originals = OriginalDescriptors(store, catalog, extractor.identity)
    tops, scores, ids = top_matches(vectors, served, originals, setting)
    sources = source_keys(catalog, ids)
    verdicts: dict[int, Verdict] = {}
    for row, (position, digest, _) in enumerate(usable):
        top = tops[row]
        verdicts[position] = Verdict(
            query_key=queries[position].key,
            is_copy=passes(
                top.score if top else None, threshold.threshold, served.higher_is_better
            ),
            threshold=threshold.threshold,
            query_hash=digest,
            image_id=top.image_id if top else None,
            source_key=sources.get(top.image_id) if top else None,
            score=top.score if top else None,
            rank=top.rank if top else None,
            matches=result_rows(scores[row], ids[row], sources),
        )
    for position, (digest, reason) in refused.items():
        verdicts[position] = Verdict(
            query_key=queries[position].key,
            is_copy=False,
            threshold=threshold.threshold,
            query_hash=digest,
            reason=reason,
        )
    return [verdicts[position] for position in range(len(queries))]
