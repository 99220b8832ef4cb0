"""The method itself: extractors, FAISS indexes, activation, edits, metrics. Never imports Dagster."""
