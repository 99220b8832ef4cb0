"""Ingestion: the inbox sensor and the batch's validated originals."""
