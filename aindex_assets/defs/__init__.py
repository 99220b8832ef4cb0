"""Dagster glue: assets, checks, sensors and resources over `lib` and `storage`."""
