"""Dagster glue: assets, checks, sensors and resources over aindex_assets.lib and aindex_assets.storage."""
