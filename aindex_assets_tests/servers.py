"""Pytest plugin: real servers for the storage tests, and parametrized store/catalog fixtures.

Fixtures:

- ``s3_server`` (session): a SeaweedFS instance (``.endpoint``, ``.access_key``,
  ``.secret_key``, ``.stop()``, ``.start()`` on the same folder and ports).
- ``s3_store``: an :class:`S3ObjectStore` on a fresh bucket, emptied and removed after.
- ``local_store``: a :class:`LocalObjectStore` in a temporary folder.
- ``object_store``: parametrized ``local`` | ``s3``; the same test runs on both.
- ``s3_store_settings``: ``AINDEX_*`` variables selecting S3 with a fresh bucket
  (for ``Settings.from_env``); the bucket is emptied and removed after.
- ``postgres_url``: a fresh PostgreSQL database, dropped after the test.
- ``postgres_url_factory``: ``make(name) -> url`` for several fresh databases in one test.
- ``sqlite_url``: a SQLite file in a temporary folder.
- ``catalog_url`` / ``catalog``: parametrized ``sqlite`` | ``postgresql``.

A missing server skips the test, unless ``AINDEX_REQUIRE_SERVICES=1`` (CI), where it fails.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn

import pytest

from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.objectstore import LocalObjectStore, S3ObjectStore
from aindex_assets_tests.devservers import (
    SeaweedServer,
    ServerUnavailable,
    postgres_admin_url,
    postgres_answers,
    scratch_database,
)


def services_required() -> bool:
    return os.environ.get("AINDEX_REQUIRE_SERVICES") == "1"


def unavailable(reason: str) -> NoReturn:
    """Skip on a laptop without the server; fail where the servers are required."""
    if services_required():
        pytest.fail(f"{reason} (AINDEX_REQUIRE_SERVICES=1)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
    except ServerUnavailable as exc:
        unavailable(f"S3 test server unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


def s3_store_for(server: SeaweedServer, bucket: str, **options: object) -> S3ObjectStore:
    return S3ObjectStore(server.endpoint, server.access_key, server.secret_key, bucket, **options)


def empty_bucket(store: S3ObjectStore) -> None:
    if not store.client.bucket_exists(store.bucket):
        return
    for info in list(store.list("")):
        store.delete(info.key)
    for upload in store.client._list_multipart_uploads(store.bucket).uploads:
        store.client._abort_multipart_upload(store.bucket, upload.object_name, upload.upload_id)
    store.client.remove_bucket(store.bucket)


@pytest.fixture
def s3_store(s3_server: SeaweedServer) -> Iterator[S3ObjectStore]:
    if not s3_server.running:  # a test stopped it and failed before starting it again
        s3_server.start()
    store = s3_store_for(s3_server, f"aindex-test-{secrets.token_hex(4)}")
    store.ensure_bucket()
    yield store
    if not s3_server.running:
        s3_server.start()
    empty_bucket(store)


@pytest.fixture
def s3_store_settings(s3_server: SeaweedServer, s3_store: S3ObjectStore) -> dict[str, str]:
    return {
        "AINDEX_OBJECT_STORE": "s3",
        # A test stack has no collection of its own to train on.
        "AINDEX_PACKAGED_PHOTOS": "allow",
        "AINDEX_S3_ENDPOINT": s3_server.endpoint,
        "AINDEX_S3_ACCESS_KEY": s3_server.access_key,
        "AINDEX_S3_SECRET_KEY": s3_server.secret_key,
        "AINDEX_S3_BUCKET": s3_store.bucket,
    }


@pytest.fixture
def local_store(tmp_path: Path) -> LocalObjectStore:
    store = LocalObjectStore(tmp_path / "objects")
    store.ensure_bucket()
    return store


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.services)])
def object_store(request: pytest.FixtureRequest) -> LocalObjectStore | S3ObjectStore:
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture(scope="session")
def postgres_admin() -> str:
    url = postgres_admin_url()
    if not postgres_answers(url):
        unavailable(f"PostgreSQL is not answering at {url}")
    return url


@pytest.fixture
def postgres_url(postgres_admin: str) -> Iterator[str]:
    with scratch_database(postgres_admin) as url:
        yield url


@pytest.fixture
def postgres_url_factory(postgres_admin: str) -> Iterator[Callable[[str], str]]:
    with ExitStack() as databases:

        def make(name: str) -> str:
            return databases.enter_context(scratch_database(postgres_admin, f"aindex_test_{name}"))

        yield make


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'catalog.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def catalog_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url)
    yield opened
    opened.close()


def stop_process_group(process: subprocess.Popen, what: str) -> None:
    """End a process started with `start_new_session` and every member of its group.

    Dagster's code server (`dagster api grpc`, about 1 GB once torch is loaded) and run
    workers outlive the webserver or daemon that started them, orphaned: SIGTERM the group,
    SIGKILL what is left, then make sure no member survives.
    """
    with contextlib.suppress(ProcessLookupError):  # the whole group may have exited
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)

    def group_alive() -> list[str]:
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
                if int(group) == process.pid and state not in "ZX":
                    alive.append(stat.parent.name)
        return alive

    deadline = time.monotonic() + 10  # SIGKILLed: gone within moments
    while group_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not group_alive(), f"{what} processes survived: {group_alive()}"
