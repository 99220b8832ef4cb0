"""FAISS indexes: train from a factory string, add with stable ids, search, shard, merge, targets.

Every index returned by `train_index` takes 64-bit ids: IVF indexes do natively, the others
(Flat, PQ, LSH, with or without a pre-transform) are wrapped in `IndexIDMap2`. Shards are empty
clones of one trained index that each hold one batch's codes; `merge_shards` copies the codes
(never re-encodes), so the merged index answers exactly like one index that got every vector.

`activation_targets` is what active indexing pulls a descriptor towards: the index's own
decoding of the code it stores for the vector, in the input space (through OPQ/PCA and back),
computed by faiss itself (`sa_encode`/`sa_decode`); or the IVF centroid alone. For binary LSH
codes, `lsh_hyperplanes` gives the affine map whose signs are the bits, so that a loss can push
each projected coordinate away from its sign boundary.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import faiss
import numpy as np

METRICS = {"l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}
RECOMMENDED_POINTS_PER_CENTROID = 39


class IndexSpecError(ValueError):
    """An index request that cannot work (bad factory, too little data, wrong dimension)."""


class SmallTrainingSet(UserWarning):
    """Fewer training vectors than the factory's quantizers want: it works, less well."""


def as_matrix(vectors: np.ndarray, d: int | None = None, what: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 (n, d) matrix, or a clear error."""
    array = np.ascontiguousarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise IndexSpecError(f"{what}: expected a 2-d matrix, got shape {array.shape}")
    if d is not None and array.shape[1] != d:
        raise IndexSpecError(f"{what}: dimension {array.shape[1]} does not match the index ({d})")
    if not np.isfinite(array).all():
        raise IndexSpecError(f"{what}: contains NaN or infinite values")
    return array


def unwrap(index: faiss.Index) -> faiss.Index:
    """The index under an id map (the codes live there)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.downcast_index(index.index)
    return index


def split_transforms(index: faiss.Index) -> tuple[list[faiss.VectorTransform], faiss.Index]:
    """(pre-transforms in order, the coding index) of a possibly wrapped index."""
    index = unwrap(index)
    if isinstance(index, faiss.IndexPreTransform):
        chain = [
            faiss.downcast_VectorTransform(index.chain.at(i)) for i in range(index.chain.size())
        ]
        return chain, faiss.downcast_index(index.index)
    return [], index


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    """The inverted-file level of an index, wherever it sits (behind id maps, pre-transforms)."""
    ivf = faiss.try_extract_index_ivf(index)
    return faiss.downcast_index(ivf) if ivf is not None else None


def training_requirements(index: faiss.Index) -> tuple[int, int, list[str]]:
    """(minimum, recommended) training vectors of an untrained index, and why."""
    needs: list[tuple[int, int, str]] = []
    chain, base = split_transforms(index)
    for transform in chain:
        if isinstance(transform, faiss.OPQMatrix):
            # Below d_out vectors faiss's OPQ training corrupts memory (crashes the process).
            n = max(256, transform.d_out)
            needs.append((n, n, f"OPQ to {transform.d_out} dimensions, 256 centroids per part"))
        elif isinstance(transform, faiss.PCAMatrix):
            needs.append((transform.d_out, transform.d_out, f"PCA to {transform.d_out} dimensions"))
    ivf = ivf_of(base)
    if ivf is not None:
        n = ivf.nlist
        needs.append((n, RECOMMENDED_POINTS_PER_CENTROID * n, f"IVF with {n} lists"))
    pq = getattr(ivf if ivf is not None else base, "pq", None)
    if pq is not None:
        ksub = 1 << pq.nbits
        needs.append((ksub, RECOMMENDED_POINTS_PER_CENTROID * ksub, f"PQ with {pq.nbits} bits"))
    if not needs:
        return 1, 1, []
    minimum = max(n for n, _, _ in needs)
    recommended = max(r for _, r, _ in needs)
    return minimum, recommended, [reason for _, _, reason in needs]


def train_index(factory: str, vectors: np.ndarray, metric: str = "l2") -> faiss.Index:
    """A trained, empty index for `factory` that accepts 64-bit ids (see the module docstring)."""
    if metric not in METRICS:
        raise IndexSpecError(f"unknown metric {metric!r}: use 'l2' or 'ip'")
    x = as_matrix(vectors, what="training vectors")
    try:
        index = faiss.index_factory(x.shape[1], factory, METRICS[metric])
    except RuntimeError as error:
        raise IndexSpecError(
            f"factory {factory!r} cannot be built for dimension {x.shape[1]}: {error}"
        ) from error
    minimum, recommended, reasons = training_requirements(index)
    if len(x) < minimum:
        raise IndexSpecError(
            f"factory {factory!r} needs at least {minimum} training vectors "
            f"({'; '.join(reasons)}), got {len(x)}"
        )
    if len(x) < recommended:
        warnings.warn(
            f"factory {factory!r}: {len(x)} training vectors, {recommended} recommended "
            f"({'; '.join(reasons)}); the quantizer will be poor",
            SmallTrainingSet,
            stacklevel=2,
        )
    quiet_clustering(index)
    index.train(x)
    if ivf_of(index) is None:
        index = faiss.IndexIDMap2(index)
    # A serialization round trip gives one object that owns all its parts.
    return deserialize_index(serialize_index(index))


def quiet_clustering(index: faiss.Index) -> None:
    """Stop faiss printing its own warning per k-means (one per PQ sub-quantizer) on stderr:
    `train_index` has already said, once and in words, what a small training set means."""
    ivf = ivf_of(index)
    _, base = split_transforms(index)
    for level in (ivf, base):
        for parameters in (
            getattr(level, "cp", None),
            getattr(getattr(level, "pq", None), "cp", None),
        ):
            if parameters is not None:
                parameters.min_points_per_centroid = 1


def add_with_ids(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Add vectors under their 64-bit ids (the index must come from `train_index`/`empty_shard`)."""
    x = as_matrix(vectors, index.d)
    labels = np.ascontiguousarray(ids, dtype=np.int64)
    if labels.shape != (len(x),):
        raise IndexSpecError(f"ids: expected {len(x)} ids, got shape {labels.shape}")
    if len(np.unique(labels)) != len(labels):
        raise IndexSpecError("ids: duplicate ids in one add")
    if not index.is_trained:
        raise IndexSpecError("add_with_ids: the index is not trained")
    if len(x):
        index.add_with_ids(x, labels)


def stored_ids(index: faiss.Index) -> np.ndarray:
    """Every id the index holds (IVF: in list order; id maps: in insertion order)."""
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexIDMap | faiss.IndexIDMap2):
        return faiss.vector_to_array(outer.id_map).astype(np.int64)
    ivf = ivf_of(outer)
    if ivf is None:
        return np.arange(outer.ntotal, dtype=np.int64)
    lists = ivf.invlists
    parts = [
        faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
        for i in range(ivf.nlist)
        if lists.list_size(i)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set the number of probed lists, wherever the IVF level sits (no-op without one)."""
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.nprobe = max(1, min(int(nprobe), ivf.nlist))


def search(
    index: faiss.Index, queries: np.ndarray, k: int = 100, nprobe: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(distances, ids) of the k nearest stored vectors; id -1 where fewer than k exist."""
    x = as_matrix(queries, index.d, "queries")
    if k < 1:
        raise IndexSpecError(f"k must be >= 1, got {k}")
    set_nprobe(index, nprobe)
    distances, ids = index.search(x, k)
    return distances, ids


def search_and_reconstruct(
    index: faiss.Index, queries: np.ndarray, k: int, nprobe: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(distances, ids, reconstructions (n,k,d) in the input space) of the k nearest codes."""
    x = as_matrix(queries, index.d, "queries")
    set_nprobe(index, nprobe)
    if index.ntotal == 0:
        n = len(x)
        return (
            np.full((n, k), np.inf, np.float32),
            np.full((n, k), -1, np.int64),
            np.zeros((n, k, index.d), np.float32),
        )
    distances, ids, vectors = index.search_and_reconstruct(x, k)
    return distances, ids, vectors


def serialize_index(index: faiss.Index) -> bytes:
    """The index as bytes (faiss's own format, never pickle)."""
    return faiss.serialize_index(index).tobytes()


def deserialize_index(data: bytes) -> faiss.Index:
    """An index from `serialize_index` bytes; a clear error for anything else."""
    try:
        return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as error:
        raise IndexSpecError(f"not a serialized FAISS index ({error})") from error


def empty_shard(trained: faiss.Index) -> faiss.Index:
    """An empty copy of a trained index (same quantizers) that takes ids."""
    if not trained.is_trained:
        raise IndexSpecError("empty_shard: the index is not trained")
    shard = faiss.clone_index(trained)
    shard.reset()
    return deserialize_index(serialize_index(shard))


def trained_fingerprint(index: faiss.Index) -> str:
    """SHA-256 of the trained parameters only (an empty clone): equal for shards of one index."""
    return hashlib.sha256(serialize_index(empty_shard(index))).hexdigest()


def merge_shards(trained: faiss.Index, shards: Sequence[faiss.Index]) -> faiss.Index:
    """One index holding every shard's codes and ids, copied (not re-encoded): exact.

    Shards must come from `empty_shard(trained)`; ids must not repeat across shards. The
    shards are left unchanged.
    """
    merged = empty_shard(trained)
    expected = trained_fingerprint(trained)
    seen: set[int] = set()
    for number, shard in enumerate(shards):
        if shard.d != trained.d or trained_fingerprint(shard) != expected:
            raise IndexSpecError(f"shard {number}: not built from this trained index")
        ids = stored_ids(shard)
        duplicated = seen.intersection(ids.tolist())
        if duplicated:
            raise IndexSpecError(
                f"shard {number}: ids already in another shard: {sorted(duplicated)[:5]}"
            )
        seen.update(ids.tolist())
        if shard.ntotal:
            # merge_from empties its argument (IVF): merge a copy, leave the caller's shard intact.
            merged.merge_from(faiss.clone_index(shard), 0)
    return merged


def activation_targets(
    index: faiss.Index, vectors: np.ndarray, kind: str = "reconstruction"
) -> np.ndarray:
    """Where activation pulls each descriptor: in the input space, shape (n, d).

    - "reconstruction": decode(encode(x)), the code the index stores for x, through any
      pre-transform (OPQ/PCA applied, encoded, decoded, reversed), by faiss's own codec.
    - "centroid": the IVF centroid x is assigned to, mapped back through the pre-transforms.
    """
    x = as_matrix(vectors, index.d)
    inner = unwrap(index)
    if kind == "reconstruction":
        return inner.sa_decode(inner.sa_encode(x))
    if kind != "centroid":
        raise IndexSpecError(f"unknown target kind {kind!r}: use 'reconstruction' or 'centroid'")
    chain, base = split_transforms(inner)
    ivf = ivf_of(base)
    if ivf is None:
        raise IndexSpecError("centroid targets need an IVF index")
    transformed = x
    for transform in chain:
        transformed = transform.apply(transformed)
    _, assignment = ivf.quantizer.search(np.ascontiguousarray(transformed), 1)
    centroids = ivf.quantizer.reconstruct_batch(assignment[:, 0])
    for transform in reversed(chain):
        centroids = transform.reverse_transform(centroids)
    return np.ascontiguousarray(centroids, dtype=np.float32)


@dataclass(frozen=True)
class LshHyperplanes:
    """Bits of a (PCA,)LSH code as signs of an affine map of the input: bit = (x @ W.T + b) > 0."""

    weights: np.ndarray  # (nbits, d)
    bias: np.ndarray  # (nbits,)

    def margins(self, vectors: np.ndarray) -> np.ndarray:
        """Signed distances (n, nbits) of the projections to their sign boundaries."""
        return vectors @ self.weights.T + self.bias


def is_binary(index: faiss.Index) -> bool:
    """True for LSH codes (bits), where a margin target replaces a reconstruction."""
    return isinstance(split_transforms(index)[1], faiss.IndexLSH)


def lsh_hyperplanes(index: faiss.Index) -> LshHyperplanes:
    """The affine map (through linear pre-transforms) whose signs are the LSH bits."""
    chain, base = split_transforms(index)
    if not isinstance(base, faiss.IndexLSH):
        raise IndexSpecError("lsh_hyperplanes needs an LSH index")
    d = index.d
    # Push the identity and the origin through the (affine) chain to read the map off.
    probe = np.vstack([np.zeros((1, d), np.float32), np.eye(d, dtype=np.float32)])
    for transform in chain:
        if not transform.is_trained or not isinstance(transform, faiss.LinearTransform):
            raise IndexSpecError("LSH margins need linear pre-transforms only")
        probe = transform.apply(probe)
    if base.rotate_data:
        probe = base.rrot.apply(probe)
    projected = probe[:, : base.nbits]
    thresholds = (
        faiss.vector_to_array(base.thresholds) if base.train_thresholds else np.zeros(base.nbits)
    )
    bias = projected[0] - thresholds
    weights = (projected[1:] - projected[0]).T
    return LshHyperplanes(weights=weights.astype(np.float32), bias=bias.astype(np.float32))


def to_gpu(index: faiss.Index, device: int = 0) -> faiss.Index:
    """A GPU copy of the index when faiss has GPUs; the index itself otherwise."""
    if getattr(faiss, "get_num_gpus", lambda: 0)() == 0:
        return index
    return faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device, index)


def to_cpu(index: faiss.Index) -> faiss.Index:
    """A CPU copy of a GPU index (for serialization); CPU indexes come back unchanged."""
    if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(faiss.downcast_index(index)).__name__:
        return faiss.index_gpu_to_cpu(index)
    return index
