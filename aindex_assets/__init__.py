"""Active Image Indexing as lineage-tracked Dagster assets."""

__version__ = "0.1.0"
