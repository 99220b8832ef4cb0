"""Materialization metadata as the UI should show it: rounded figures, clickable locations."""

import math

import dagster as dg

from aindex_assets.storage.objectstore import LocalObjectStore, ObjectStore

# Digits shown: a rate or recall to 0.1%, decibels to 0.01 dB, a score to 1e-4.
RATE_DIGITS = 3
DB_DIGITS = 2
SCORE_DIGITS = 4


def rounded(value: float | None, digits: int = RATE_DIGITS) -> dg.MetadataValue:
    """A float rounded for reading; NaN where there is no value (no negatives, no images)."""
    if value is None or not math.isfinite(value):
        return dg.MetadataValue.float(float("nan"))
    return dg.MetadataValue.float(round(float(value), digits))


def stored_object(store: ObjectStore, key: str) -> dg.MetadataValue:
    """Where an object lives: a local path (the UI links it), or the object's `s3://` URI."""
    if isinstance(store, LocalObjectStore):
        return dg.MetadataValue.path(store.uri(key))
    return dg.MetadataValue.url(store.uri(key))
