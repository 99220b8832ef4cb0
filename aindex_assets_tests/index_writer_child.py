"""Child process of test_crash_safety.py: writes a shard and the merged index, and stops dead.

Run as ``python -m aindex_assets_tests.index_writer_child MOMENT``, with the storage
settings in the environment. It adds the shard of batch ``batch-b`` and merges the served
index through the pipeline's own functions; at MOMENT it prints ``AT MOMENT`` and blocks,
so that the parent can SIGKILL it exactly there:

- ``shard_upload``: half of the shard object has been handed to the store;
- ``served_upload``: half of the merged index object has been handed to the store;
- ``before_switch``: the merged object is stored, the catalog pointer not yet switched;
- ``inside_switch``: inside the switch transaction, after the old pointer was cleared.
"""

from __future__ import annotations

import io
import sys
import time
from typing import Any

import numpy as np
from sqlalchemy import event

from aindex_assets.services.index import merge_served_index, write_shard
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.objectstore import ObjectStore, open_object_store

MOMENTS = ("shard_upload", "served_upload", "before_switch", "inside_switch")
NEW_BATCH = "batch-b"
NEW_IDS = np.arange(51, 101, dtype=np.int64)


def stop_here(moment: str) -> None:
    print(f"AT {moment}", flush=True)
    time.sleep(600)


class HangingStream(io.RawIOBase):
    """Gives the first half of the bytes, then blocks: a write caught halfway."""

    def __init__(self, data: bytes, moment: str) -> None:
        self.data, self.moment, self.given = data, moment, False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.given:
            stop_here(self.moment)
        self.given = True
        return self.data[: len(self.data) // 2]


def hang_uploads(store: ObjectStore, folder: str, moment: str) -> None:
    original = store.put_bytes

    def put_bytes(key: str, data: bytes, *args: Any, **kwargs: Any) -> Any:
        if f"/{folder}/" in key:
            return store.put_stream(key, HangingStream(data, moment), len(data))
        return original(key, data, *args, **kwargs)

    store.put_bytes = put_bytes  # type: ignore[method-assign]


def hang_inside_switch(catalog: Catalog) -> None:
    @event.listens_for(catalog.engine, "after_cursor_execute")
    def _after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE SERVED_INDEXES"):
            stop_here("inside_switch")


def hang_before_switch(catalog: Catalog) -> None:
    def set_served_index(*_args: Any, **_kwargs: Any) -> int:
        stop_here("before_switch")
        raise AssertionError("unreachable")

    catalog.set_served_index = set_served_index  # type: ignore[method-assign]


def main(moment: str) -> None:
    settings = Settings.from_env(dotenv=None)
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    version = catalog.active_index_version()
    assert version is not None
    catalog.create_batch(NEW_BATCH, kind="ingest")
    if moment == "shard_upload":
        hang_uploads(store, "shards", moment)
    elif moment == "served_upload":
        hang_uploads(store, "served", moment)
    elif moment == "before_switch":
        hang_before_switch(catalog)
    elif moment == "inside_switch":
        hang_inside_switch(catalog)
    vectors = np.random.default_rng(2).standard_normal((len(NEW_IDS), version.dim))
    write_shard(store, catalog, version, NEW_BATCH, NEW_IDS, vectors.astype(np.float32))
    merge_served_index(store, catalog, version)
    print("DONE without stopping", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
