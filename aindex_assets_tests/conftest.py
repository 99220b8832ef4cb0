"""Shared fixtures: real servers (S3, PostgreSQL) live in servers.py."""

pytest_plugins = ["aindex_assets_tests.servers"]
