"""Storage throughput: object put/get (1 MB and 20 MB) on the local folder and on SeaweedFS,
and catalog image registrations per second on SQLite and PostgreSQL.

Starts its own SeaweedFS (``weed mini``) and a scratch PostgreSQL database, prints a
Markdown table, and removes what it created. Run: ``.venv/bin/python benchmarks/storage.py``.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
import time
from pathlib import Path

from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.objectstore import LocalObjectStore, ObjectStore, S3ObjectStore
from aindex_assets_tests.devservers import (
    SeaweedServer,
    postgres_admin_url,
    postgres_answers,
    scratch_database,
)

MB = 1024 * 1024
ROWS = 10_000


def throughput(store: ObjectStore, size_mb: int, repeats: int) -> tuple[float, float]:
    data = os.urandom(size_mb * MB)
    started = time.perf_counter()
    for i in range(repeats):
        store.put_bytes(f"bench/{size_mb}/{i}", data)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(repeats):
        assert len(store.get_bytes(f"bench/{size_mb}/{i}")) == len(data)
    get_s = time.perf_counter() - started
    return size_mb * repeats / put_s, size_mb * repeats / get_s


def catalog_inserts(url: str) -> float:
    catalog = Catalog.open(url)
    catalog.create_batch("bench", "ingest", "inbox/", ROWS)
    started = time.perf_counter()
    for n in range(ROWS):
        content_hash = hashlib.sha256(str(n).encode()).hexdigest()
        catalog.register_image(
            content_hash,
            f"inbox/{n}.jpg",
            f"originals/{content_hash}.jpg",
            "bench",
            1000,
            "JPEG",
            8,
            8,
        )
    elapsed = time.perf_counter() - started
    assert catalog.count_images() == ROWS
    catalog.close()
    return ROWS / elapsed


def main() -> None:
    print(f"# storage benchmark ({platform.node()}, {os.cpu_count()} CPUs)\n")
    print("| store | object | put MB/s | get MB/s |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        stores: list[tuple[str, ObjectStore]] = [("local", LocalObjectStore(Path(tmp) / "objects"))]
        server = SeaweedServer(Path(tmp) / "seaweedfs").start()
        try:
            s3 = S3ObjectStore(server.endpoint, server.access_key, server.secret_key, "bench")
            s3.ensure_bucket()
            stores.append(("s3 (SeaweedFS)", s3))
            for name, store in stores:
                for size_mb, repeats in ((1, 50), (20, 5)):
                    put, get = throughput(store, size_mb, repeats)
                    print(f"| {name} | {size_mb} MB x {repeats} | {put:.0f} | {get:.0f} |")
        finally:
            server.stop()
        print(f"\n| catalog | register_image, {ROWS} rows, one transaction each | rows/s |")
        print("|---|---|---|")
        rate = catalog_inserts(f"sqlite:///{Path(tmp) / 'catalog.db'}")
        print(f"| SQLite (WAL) | INSERT .. ON CONFLICT + SELECT | {rate:.0f} |")
    if postgres_answers():
        with scratch_database(postgres_admin_url(), prefix="aindex_bench") as url:
            rate = catalog_inserts(url)
        print(f"| PostgreSQL 15 (127.0.0.1) | INSERT .. ON CONFLICT + SELECT | {rate:.0f} |")
    else:
        print("| PostgreSQL | not answering: skipped | - |")


if __name__ == "__main__":
    main()
