"""The method: extractors, FAISS indexes, activation, edits, metrics. Never imports Dagster."""
