"""The flows of the pipeline, free of Dagster: the CLI, the sensors and the assets all call these.

Each module is one flow (`inbox`, `ingest`, `embeddings`, `index`, `activation`, `reports`,
`comparison`, `copy_detection`). A flow moves bytes between the object store, the catalog and
the method in `lib/`, and raises domain errors (`NoIndex`, `ExtractorMismatch`, ...) that the
Dagster glue turns into `dg.Failure` and the CLI into one line on stderr.
"""
