"""FAISS layer: every factory trains/adds/searches/serializes; targets; shards; refusals."""

from __future__ import annotations

import warnings

import faiss
import numpy as np
import pytest

from aindex_assets.lib import index as faiss_index

FACTORIES = [
    "Flat",
    "IVF16,Flat",
    "IVF16,PQ8x4",
    "PQ8x4",
    "OPQ4,IVF16,PQ4x4",
    "PCA16,LSH",
    "LSH",
    "IVF16_HNSW32,PQ8x4",
    "PCA16,IVF16,PQ4x4",
]
DIM = 32


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((40, DIM))
    x = centers[rng.integers(0, 40, 3000)] + 0.3 * rng.standard_normal((3000, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def train(factory: str, x: np.ndarray, metric: str = "l2") -> faiss.Index:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return faiss_index.train_index(factory, x, metric=metric)


def big_ids(n: int) -> np.ndarray:
    return (np.arange(n, dtype=np.int64) * 7919 + 2**40).astype(np.int64)


@pytest.mark.parametrize("factory", FACTORIES)
def test_factory_round_trip(factory: str, data: np.ndarray):
    index = train(factory, data[:2000])
    ids = big_ids(300)
    faiss_index.add_with_ids(index, data[2000:2300], ids)
    restored = faiss_index.deserialize_index(faiss_index.serialize_index(index))
    d1, i1 = faiss_index.search(index, data[2000:2050], k=5, nprobe=4)
    d2, i2 = faiss_index.search(restored, data[2000:2050], k=5, nprobe=4)
    assert np.array_equal(i1, i2) and np.allclose(d1, d2)
    assert set(i1[:, 0]) <= set(ids.tolist())
    assert (i1[:, 0] == ids[:50]).mean() > 0.5  # vectors find themselves most of the time
    assert sorted(faiss_index.stored_ids(restored).tolist()) == sorted(ids.tolist())


def test_inner_product_metric(data: np.ndarray):
    index = train("IVF16,Flat", data[:2000], metric="ip")
    faiss_index.add_with_ids(index, data[:100], big_ids(100))
    scores, ids = faiss_index.search(index, data[:10], k=1, nprobe=16)
    assert np.array_equal(ids[:, 0], big_ids(100)[:10]) and np.allclose(scores[:, 0], 1, atol=1e-5)


@pytest.mark.parametrize(
    "factory", ["IVF16,PQ8x4", "OPQ4,IVF16,PQ4x4", "PCA16,IVF16,PQ4x4", "PQ8x4", "OPQ4,PQ4x4"]
)
def test_reconstruction_targets_are_faiss_decodings(factory: str, data: np.ndarray):
    index = train(factory, data[:2000])
    x, ids = data[2000:2040], big_ids(40)
    targets = faiss_index.activation_targets(index, x)
    inner = faiss_index.unwrap(index)
    assert np.allclose(targets, inner.sa_decode(inner.sa_encode(x)), atol=1e-6)
    faiss_index.add_with_ids(index, x, ids)
    stored = faiss.clone_index(index)
    ivf = faiss_index.ivf_of(stored)
    if ivf is not None:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    reconstructed = np.stack([stored.reconstruct(int(i)) for i in ids])
    assert np.allclose(targets, reconstructed, atol=1e-5)
    # the target is in the input space: closer to x than a random other vector
    assert np.mean(np.sum((targets - x) ** 2, 1)) < np.mean(np.sum((targets - x[::-1]) ** 2, 1))


@pytest.mark.parametrize("factory", ["IVF16,PQ8x4", "OPQ4,IVF16,PQ4x4", "PCA16,IVF16,PQ4x4"])
def test_centroid_targets_through_pretransforms(factory: str, data: np.ndarray):
    index = train(factory, data[:2000])
    x = data[2000:2020]
    centroids = faiss_index.activation_targets(index, x, kind="centroid")
    chain, base = faiss_index.split_transforms(index)
    ivf = faiss_index.ivf_of(base)
    transformed = x
    for transform in chain:
        transformed = transform.apply(transformed)
    _, lists = ivf.quantizer.search(transformed, 1)
    mapped = centroids
    for transform in chain:
        mapped = transform.apply(mapped)
    assert np.allclose(mapped, ivf.quantizer.reconstruct_batch(lists[:, 0]), atol=1e-4)


@pytest.mark.parametrize("factory", ["LSH", "PCA16,LSH"])
def test_lsh_hyperplanes_give_the_code_bits(factory: str, data: np.ndarray):
    index = train(factory, data[:2000])
    planes = faiss_index.lsh_hyperplanes(index)
    x = data[2000:2200]
    codes = faiss_index.unwrap(index).sa_encode(x)
    bits = np.unpackbits(codes, axis=1, bitorder="little")[:, : planes.bias.shape[0]].astype(bool)
    assert faiss_index.is_binary(index)
    assert (bits == (planes.margins(x) > 0)).mean() > 0.999


def test_too_few_training_vectors_refused(data: np.ndarray):
    with pytest.raises(ValueError, match=r"at least 64 training vectors.*IVF with 64 lists"):
        faiss_index.train_index("IVF64,Flat", data[:50])
    with pytest.raises(ValueError, match=r"at least 256 .*PQ with 8 bits"):
        faiss_index.train_index("PQ4x8", data[:200])
    with pytest.warns(UserWarning, match="recommended"):
        faiss_index.train_index("IVF16,Flat", data[:100])


def test_bad_input_refused(data: np.ndarray):
    index = train("IVF16,Flat", data[:1000])
    with pytest.raises(ValueError, match="dimension 16 does not match the index"):
        faiss_index.add_with_ids(index, data[:5, :16], np.arange(5))
    with pytest.raises(ValueError, match="dimension"):
        faiss_index.search(index, data[:5, :16], k=1)
    with pytest.raises(ValueError, match="cannot be built"):
        faiss_index.train_index("PQ7", data[:1000])
    with pytest.raises(ValueError, match="metric"):
        faiss_index.train_index("Flat", data[:100], metric="cosine")
    with pytest.raises(ValueError, match="not a serialized"):
        faiss_index.deserialize_index(b"garbage")


@pytest.mark.parametrize(
    "factory", ["IVF16,PQ8x4", "OPQ4,IVF16,PQ4x4", "PQ8x4", "Flat", "PCA16,LSH"]
)
def test_merged_shards_equal_one_index(factory: str, data: np.ndarray):
    trained = train(factory, data[:2000])
    x, ids = data[2000:2600], big_ids(600)
    whole = faiss_index.empty_shard(trained)
    faiss_index.add_with_ids(whole, x, ids)
    shards = []
    for part in np.array_split(np.arange(600), 3):
        shard = faiss_index.empty_shard(trained)
        faiss_index.add_with_ids(shard, x[part], ids[part])
        shards.append(shard)
    shards.append(faiss_index.empty_shard(trained))  # an empty batch merges too
    merged = faiss_index.merge_shards(trained, shards)
    queries = data[2500:2700]
    d1, i1 = faiss_index.search(whole, queries, k=10, nprobe=3)
    d2, i2 = faiss_index.search(merged, queries, k=10, nprobe=3)
    assert np.array_equal(i1, i2) and np.allclose(d1, d2)
    assert shards[0].ntotal == 200  # shards are left intact
    with pytest.raises(ValueError, match="already in another shard"):
        faiss_index.merge_shards(trained, [shards[0], shards[0]])
    if factory == "Flat":
        return  # nothing trained: any Flat shard is compatible
    other = train(factory, data[1000:3000])
    with pytest.raises(ValueError, match="not built from this trained index"):
        faiss_index.merge_shards(trained, [faiss_index.empty_shard(other)])


def test_a_small_training_set_is_said_once_in_words_without_faiss_own_warnings(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """faiss prints a warning per k-means on stderr (one per PQ sub-quantizer): a newcomer's
    first output used to be eight of them after the project's own sentence."""
    vectors = np.random.default_rng(0).standard_normal((1500, 32)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        faiss_index.train_index("IVF32,PQ8x8", vectors)
    assert [w.category for w in caught] == [faiss_index.SmallTrainingSet]
    assert "1500 training vectors, 9984 recommended" in str(caught[0].message)
    assert "WARNING clustering" not in capfd.readouterr().err
