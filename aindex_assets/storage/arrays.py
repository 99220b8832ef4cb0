"""Descriptor matrices on the object store: NumPy ``.npz`` read without pickle."""

from __future__ import annotations

import io

import numpy as np


def encode_descriptors(ids: np.ndarray, vectors: np.ndarray) -> bytes:
    """Serialise ids (int64) and descriptors (float32) together."""
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} descriptors")
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.asarray(ids, dtype=np.int64),
        vectors=np.asarray(vectors, dtype=np.float32),
    )
    return buffer.getvalue()


def decode_descriptors(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`encode_descriptors`; refuses pickled payloads."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return archive["ids"], archive["vectors"]
