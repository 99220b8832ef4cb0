"""The object store contract, run on the local folder and on a real S3 server (SeaweedFS)."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from minio.error import S3Error

from aindex_assets.settings import Settings
from aindex_assets.storage import keys, objectstore
from aindex_assets.storage.keys import InvalidKey, safe_name, validate_key
from aindex_assets.storage.objectstore import (
    BucketNotFound,
    CredentialsRejected,
    LocalObjectStore,
    ObjectNotFound,
    ObjectStoreError,
    S3ObjectStore,
    StoreUnreachable,
    StoreWriteFailed,
    open_object_store,
)
from aindex_assets_tests.devservers import free_ports
from aindex_assets_tests.servers import s3_store_for

MB = 1024 * 1024
HOSTILE_KEYS = ["../x", "/abs", "a/../../b", "a/\x00b", "a\\b", "a//b", "a/", "", "a/./b", "x\ny"]


class FailingStream(io.RawIOBase):
    """Yields ``fail_after`` bytes, then raises, like a client that dies mid-upload."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        self.data, self.position, self.fail_after = data, 0, fail_after

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.position >= self.fail_after:
            raise ConnectionResetError("uploader went away")
        size = len(self.data) if size is None or size < 0 else size
        end = min(self.position + size, self.fail_after)
        chunk = self.data[self.position : end]
        self.position = end
        return chunk


def test_put_get_stat_roundtrip(object_store):
    data = os.urandom(1000)
    written = object_store.put_bytes(
        "a/b/c.bin", data, content_type="image/png", metadata={"Source-Key": "inbox/x.png"}
    )
    info = object_store.stat("a/b/c.bin")
    assert object_store.get_bytes("a/b/c.bin") == data
    assert (info.size, info.content_type) == (1000, "image/png")
    assert info.metadata == {"source-key": "inbox/x.png"}
    assert info.etag == written.etag == hashlib.md5(data).hexdigest()
    assert info.last_modified is not None
    assert object_store.exists("a/b/c.bin") and not object_store.exists("a/b")


def test_overwrite_replaces_content_and_metadata(object_store):
    object_store.put_bytes("k", b"one", metadata={"v": "1"})
    object_store.put_bytes("k", b"two!", content_type="text/plain", metadata={"v": "2"})
    info = object_store.stat("k")
    assert object_store.get_bytes("k") == b"two!"
    assert (info.size, info.content_type, dict(info.metadata)) == (4, "text/plain", {"v": "2"})


def test_missing_key_raises_object_not_found(object_store):
    for call in (object_store.get_bytes, object_store.stat):
        with pytest.raises(ObjectNotFound) as caught:
            call("nope/missing.bin")
        assert caught.value.key == "nope/missing.bin"
    with pytest.raises(ObjectNotFound), object_store.open("nope/missing.bin"):
        pass
    assert not object_store.exists("nope/missing.bin")


def test_list_is_lexicographic_with_prefix_pagination_and_cursor(object_store):
    names = ["a/c", "a_b", "a/b/z", "a/b0", "b", "a/b/y", "inbox/2/x", "inbox/10/y", "é/u", "Z"]
    for name in names:
        object_store.put_bytes(name, name.encode())
    assert [i.key for i in object_store.list("")] == sorted(names)
    assert [i.key for i in object_store.list("a/")] == sorted(
        n for n in names if n.startswith("a/")
    )
    assert [i.key for i in object_store.list("a/b")] == ["a/b/y", "a/b/z", "a/b0"]
    assert [i.key for i in object_store.list("inbox/")] == ["inbox/10/y", "inbox/2/x"]
    assert [i.size for i in object_store.list("a/c")] == [3]
    pages, cursor = [], None
    while page := [i.key for i in object_store.list("", start_after=cursor, limit=3)]:
        pages.append(page)
        cursor = page[-1]
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [key for page in pages for key in page] == sorted(names)
    assert [i.key for i in object_store.list("a/", start_after="a/b/y")] == ["a/b/z", "a/b0", "a/c"]
    assert list(object_store.list("nothing-here/")) == []


def test_local_list_orders_names_below_slash_like_s3(local_store):
    # "a-b" sorts before "a/c" ('-' < '/'): a plain directory walk gets this wrong.
    names = ["a/c", "a-b", "a.b", "a/b", "a!"]
    for name in names:
        local_store.put_bytes(name, b"")
    assert [i.key for i in local_store.list("")] == sorted(names)
    assert [i.key for i in local_store.list("", start_after="a-b")] == ["a.b", "a/b", "a/c"]


def test_delete_is_idempotent_and_hides_the_object(object_store):
    object_store.put_bytes("x/y", b"1", metadata={"a": "b"})
    object_store.delete("x/y")
    object_store.delete("x/y")
    assert not object_store.exists("x/y")
    assert list(object_store.list("x/")) == []


def test_large_file_streams_both_ways(object_store, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * MB))
    object_store.put_file("big/file.bin", source, content_type="application/x-test")
    info = object_store.stat("big/file.bin")
    assert info.size == 12 * MB
    if isinstance(object_store, S3ObjectStore):
        assert info.etag.endswith("-2"), "12 MB with 8 MiB parts must be a multipart upload"
    target = tmp_path / "out" / "copy.bin"
    object_store.get_file("big/file.bin", target)
    assert target.read_bytes() == source.read_bytes()
    with object_store.open("big/file.bin") as reader:
        first = reader.read(MB)
        digest = hashlib.sha256(first)
        while chunk := reader.read(MB):
            digest.update(chunk)
    assert first == source.read_bytes()[:MB]
    assert digest.hexdigest() == hashlib.sha256(source.read_bytes()).hexdigest()


def test_interrupted_write_leaves_nothing_visible(object_store):
    data = os.urandom(12 * MB)
    object_store.put_bytes("keep/existing.bin", b"old")
    for key in ("new/object.bin", "keep/existing.bin"):
        with pytest.raises(Exception, match="uploader went away"):
            object_store.put_stream(key, FailingStream(data, fail_after=9 * MB))
    assert not object_store.exists("new/object.bin")
    assert object_store.get_bytes("keep/existing.bin") == b"old"
    assert [i.key for i in object_store.list("")] == ["keep/existing.bin"]
    if isinstance(object_store, LocalObjectStore):
        leftovers = [p for p in object_store.root.rglob("*") if p.is_file()]
        assert all(".aindex-tmp-" not in p.name for p in leftovers)
    else:
        uploads = object_store.client._list_multipart_uploads(object_store.bucket).uploads
        assert uploads == [], "the failed multipart upload must be aborted"


def test_get_file_is_atomic_on_missing_key(object_store, tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous")
    with pytest.raises(ObjectNotFound):
        object_store.get_file("missing", target)
    assert target.read_bytes() == b"previous"


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_path_escaping_keys_are_refused(object_store, key):
    with pytest.raises(InvalidKey):
        object_store.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        object_store.get_bytes(key)
    with pytest.raises(InvalidKey):
        object_store.delete(key)


def test_reserved_sidecar_folder_is_not_addressable(local_store):
    local_store.put_bytes("a", b"1", metadata={"m": "v"})
    with pytest.raises(InvalidKey):
        local_store.get_bytes(".aindex-meta/a.json")
    assert [i.key for i in local_store.list("")] == ["a"]


def test_uri_and_describe(object_store):
    object_store.put_bytes("r/x.json", b"{}")
    if isinstance(object_store, S3ObjectStore):
        assert object_store.uri("r/x.json") == f"s3://{object_store.bucket}/r/x.json"
        assert object_store.bucket in object_store.describe()
    else:
        assert Path(object_store.uri("r/x.json")).read_bytes() == b"{}"
        assert str(object_store.root) in object_store.describe()


def test_local_presigned_url_is_a_file_uri(local_store):
    local_store.put_bytes("p/q.txt", b"hello")
    url = local_store.presigned_url("p/q.txt", timedelta(minutes=1))
    assert url.startswith("file://")
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"hello"


@pytest.mark.services
def test_presigned_url_works_and_tampering_is_rejected(s3_store):
    s3_store.put_bytes("p/q.txt", b"hello")
    s3_store.put_bytes("p/r.txt", b"secret")
    url = s3_store.presigned_url("p/q.txt", timedelta(minutes=5))
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"hello"
    for tampered in (url.replace("p/q.txt", "p/r.txt"), url.replace("Signature=", "Signature=0")):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(tampered)
        assert caught.value.code == 403


@pytest.mark.services
def test_wrong_secret_key_is_rejected_with_a_clear_message(s3_server, s3_store):
    wrong = S3ObjectStore(s3_server.endpoint, s3_server.access_key, "wrong-secret", s3_store.bucket)
    with pytest.raises(CredentialsRejected, match="AINDEX_S3_SECRET_KEY") as caught:
        wrong.put_bytes("x", b"1")
    assert s3_server.endpoint in str(caught.value)
    unknown = S3ObjectStore(s3_server.endpoint, "NOBODY", s3_server.secret_key, s3_store.bucket)
    with pytest.raises(CredentialsRejected, match="AINDEX_S3_ACCESS_KEY"):
        unknown.check()
    assert not s3_store.exists("x")


@pytest.mark.services
def test_missing_bucket_names_the_bucket_and_the_variable(s3_server):
    store = s3_store_for(s3_server, "no-such-bucket-here")
    with pytest.raises(BucketNotFound, match=r"no-such-bucket-here.*AINDEX_S3_BUCKET"):
        store.check()
    with pytest.raises(BucketNotFound):
        store.put_bytes("k", b"v")


def test_unreachable_endpoint_fails_fast_with_a_clear_message():
    (port,) = free_ports(1)
    store = S3ObjectStore(f"http://127.0.0.1:{port}", "ak", "sk", "bucket")
    started = time.monotonic()
    with pytest.raises(StoreUnreachable, match="AINDEX_S3_ENDPOINT") as caught:
        store.get_bytes("k")
    assert time.monotonic() - started < 15, "a refused connection must not be retried for long"
    assert f"127.0.0.1:{port}" in str(caught.value)


@pytest.mark.services
def test_server_stopped_and_restarted_keeps_data(s3_server, s3_store):
    s3_store.put_bytes("durable/x", b"kept")
    s3_server.stop()
    try:
        with pytest.raises(StoreUnreachable):
            s3_store.get_bytes("durable/x")
    finally:
        s3_server.start()
    assert s3_store.get_bytes("durable/x") == b"kept"


def test_open_object_store_follows_settings(tmp_path):
    local = open_object_store(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalObjectStore) and local.root == (tmp_path / "objects").absolute()
    s3 = open_object_store(
        Settings(
            data_dir=tmp_path,
            object_store="s3",
            s3_endpoint="https://s3.example.org",
            s3_access_key="ak",
            s3_secret_key="sk",
            s3_bucket="photos",
        )
    )
    assert isinstance(s3, S3ObjectStore) and s3.uri("a/b") == "s3://photos/a/b"
    assert s3.endpoint == "https://s3.example.org"


# -- keys ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "..",
        ".",
        "",
        "/abs/x.jpg",
        "a\\b.png",
        "nul\x00.jpg",
        ".aindex-meta",
        "ünïcødé 写真.JPG",
        "x" * 500 + ".png",
        "CON",
        "a/b/c.jpg",
        "\u202etxt.exe",
        " .hidden",
    ],
)
def test_safe_name_makes_hostile_names_safe(name):
    safe = safe_name(name)
    assert validate_key(safe) == safe
    assert "/" not in safe and 0 < len(safe) <= keys.MAX_NAME_CHARS


def test_safe_name_keeps_plain_names_and_unicode_letters():
    assert safe_name("photo_01.jpg") == "photo_01.jpg"
    assert safe_name("été.png") == "été.png"
    assert safe_name("a b.png").endswith(".png") and "a_b" in safe_name("a b.png")


@given(st.text(min_size=0, max_size=120), st.text(min_size=0, max_size=120))
def test_safe_name_never_collides_for_distinct_names(first, second):
    assert validate_key(safe_name(first))
    if first != second:
        assert safe_name(first) != safe_name(second)


def test_key_builders_derive_from_hashes_and_ids():
    digest = hashlib.sha256(b"x").hexdigest()
    assert keys.original_key(digest, "JPEG") == f"originals/{digest[:2]}/{digest[2:4]}/{digest}.jpg"
    assert keys.activated_key(3, digest).startswith("activated/v3/")
    assert keys.shard_key(3, "20261127T060000Z-ab12cd") == (
        "indexes/v3/shards/20261127T060000Z-ab12cd.faiss"
    )
    assert keys.served_index_key(3, 12) == "indexes/v3/served/00000012.faiss"
    assert keys.trained_index_key(3) == "indexes/v3/trained.faiss"
    assert keys.embeddings_key(digest, "b1") == f"embeddings/{digest[:16]}/b1.npz"
    assert keys.report_key("b1", "robustness", 7) == "reports/b1/robustness-00000007.json"
    for bad in ("../etc", "a/b", ""):
        with pytest.raises(ValueError):
            keys.shard_key(1, bad)
    with pytest.raises(ValueError):
        keys.original_key("../../" + digest, "png")


# ---------------------------------------------------------------- a full disk, a full server


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 256 KiB tmpfs (root can mount one); None where mounting is not allowed."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)]
    try:
        mounted = subprocess.run(mount, capture_output=True, timeout=30).returncode == 0
    except OSError:
        mounted = False
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True, timeout=30)


def fill_disk_on_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where no tmpfs can be mounted: every file the store writes fails as a full disk does."""
    real_open = open

    class FullFile(io.FileIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def opener(path: object, mode: str = "r", *args: object, **kwargs: object) -> object:
        return FullFile(path, mode) if "w" in mode else real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(objectstore, "open", opener, raising=False)


def test_full_disk_names_the_store_the_key_and_the_reason(
    tiny_disk: Path | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalObjectStore((tiny_disk or tmp_path) / "objects")
    store.put_bytes("inbox/small.jpg", b"fits")
    if tiny_disk is None:
        fill_disk_on_write(monkeypatch)
    with pytest.raises(StoreWriteFailed) as caught:
        store.put_bytes("inbox/big.jpg", os.urandom(MB))
    message = str(caught.value)
    assert message == (
        f"local folder {store.root}: cannot write 'inbox/big.jpg': "
        "no space left on the device (ENOSPC)"
    )
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, ObjectStoreError)
    assert not store.exists("inbox/big.jpg")
    assert [i.key for i in store.list("")] == ["inbox/small.jpg"]
    leftovers = [p.name for p in store.root.rglob("*") if p.is_file()]
    assert not [name for name in leftovers if name.startswith(".aindex-tmp-")]


def test_write_errors_at_fsync_and_permissions_are_named_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalObjectStore(tmp_path / "objects")

    def no_room(fd: int) -> None:
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    with monkeypatch.context() as patch:
        patch.setattr(objectstore.os, "fsync", no_room)
        with pytest.raises(StoreWriteFailed, match=r"cannot write 'a/b.bin': disk quota exceeded"):
            store.put_bytes("a/b.bin", b"x")
    assert not store.exists("a/b.bin")
    if os.geteuid() != 0:  # root writes into a read-only folder anyway
        (tmp_path / "objects" / "ro").mkdir()
        (tmp_path / "objects" / "ro").chmod(0o500)
        with pytest.raises(StoreWriteFailed, match="permission denied"):
            store.put_bytes("ro/x.bin", b"x")


def test_get_file_onto_a_full_disk_names_the_target_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    store.put_bytes("index/v1.faiss", b"x" * 1000)
    fill_disk_on_write(monkeypatch)
    target = tmp_path / "scratch" / "v1.faiss"
    with pytest.raises(StoreWriteFailed) as caught:
        store.get_file("index/v1.faiss", target)
    assert str(caught.value) == (
        f"cannot write {target} (a copy of 'index/v1.faiss' from {store.describe()}): "
        "no space left on the device (ENOSPC)"
    )


def test_a_read_error_of_the_source_is_not_reported_as_a_full_store(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    with pytest.raises(ConnectionResetError):
        store.put_stream("a.bin", FailingStream(b"x" * 100, fail_after=10))


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("XMinioStorageFull", "no space left on the server"),
        ("XMinioAdminBucketQuotaExceeded", "bucket quota exceeded"),
    ],
)
def test_a_full_s3_server_names_the_bucket_the_key_and_the_reason(code: str, reason: str) -> None:
    store = S3ObjectStore("http://127.0.0.1:1", "key", "secret", "photos")
    error = S3Error(None, code, "Storage backend has reached its limit", "/photos/k", "r", "h")
    translated = store._translate(error, "inbox/a.jpg")
    assert isinstance(translated, StoreWriteFailed)
    assert str(translated).startswith(
        f"S3 bucket 'photos' at http://127.0.0.1:1: cannot write 'inbox/a.jpg': {reason} ({code}"
    )
