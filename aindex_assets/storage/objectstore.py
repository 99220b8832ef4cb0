"""Object store: one interface, a local folder or an S3-compatible server (MinIO, SeaweedFS, AWS).

Both implementations give readers the same guarantees:

- a key is visible only once all its bytes are written (local: temp file in the
  same folder, fsync, ``os.replace``; S3: a PUT, or a multipart upload, completes
  atomically and an interrupted one is aborted);
- ``list`` walks keys in lexicographic (UTF-8 byte) order after ``start_after``, so
  a caller can page through a prefix with the last key it saw as its cursor. (One
  server caveat: SeaweedFS lists a folder ``a/`` before a sibling object whose name
  continues with a byte below '/', such as ``a-b``; AWS and MinIO do not. The keys
  built in :mod:`~aindex_assets.storage.keys` never have such siblings.);
- a missing key raises :class:`ObjectNotFound`; keys are checked by
  :func:`~aindex_assets.storage.keys.validate_key`;
- a write the store cannot complete (local: a full disk, a quota, a read-only or
  unwritable folder; S3: a server out of space or over quota) raises
  :class:`StoreWriteFailed` naming the store, the key and the reason, and leaves no
  partial object behind.

The local store keeps content type, user metadata and the MD5 etag in a sidecar
JSON file under ``<root>/.aindex-meta/`` that never appears in listings. Its
``presigned_url`` returns a ``file://`` URI: there is no server to sign for, and
the URI is only meaningful on the machine holding the folder.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError as Urllib3Error

from aindex_assets.settings import Settings
from aindex_assets.storage.keys import RESERVED_PREFIX, validate_key, validate_prefix

DEFAULT_CONTENT_TYPE = "application/octet-stream"
CHUNK_SIZE = 1024 * 1024
# Smallest part S3 accepts; objects above it go up in parts of this size.
S3_PART_SIZE = 8 * 1024 * 1024
META_DIR = f"{RESERVED_PREFIX}-meta"
TMP_PREFIX = f"{RESERVED_PREFIX}-tmp-"


class ObjectStoreError(RuntimeError):
    """Base class of object store failures."""


class ObjectNotFound(ObjectStoreError, KeyError):
    """No object under this key."""

    def __init__(self, key: str, where: str = "") -> None:
        super().__init__(f"no object {key!r}" + (f" in {where}" if where else ""))
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0])


class BucketNotFound(ObjectStoreError):
    """The configured bucket does not exist."""


class CredentialsRejected(ObjectStoreError):
    """The server refused the access key or the secret key."""


class StoreUnreachable(ObjectStoreError):
    """The endpoint did not answer (after retries for transient failures)."""


class StoreWriteFailed(ObjectStoreError):
    """A write could not complete: no space left, over quota, read-only, no permission.

    ``errno`` is the operating system's error number for a local write (None from S3).
    """

    def __init__(self, message: str, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code


# What a person should read for the usual reasons a local write fails.
_WRITE_REASONS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for the file system",
    errno.EIO: "input/output error",
}
# S3 error codes of a server that has no room left for the object.
_S3_FULL_CODES = {
    "XMinioStorageFull": "no space left on the server",
    "XMinioAdminBucketQuotaExceeded": "bucket quota exceeded",
    "QuotaExceeded": "quota exceeded",
    "EntityTooLarge": "object larger than the server accepts",
}


def write_failure_reason(error: OSError) -> str:
    """``no space left on the device (ENOSPC)``: the reason and its symbolic errno."""
    code = error.errno
    if code is None:
        return str(error) or type(error).__name__
    text = _WRITE_REASONS.get(code) or os.strerror(code)
    return f"{text} ({errno.errorcode.get(code, code)})"


class _WriteError(Exception):
    """An OSError raised while writing (not while reading the source), for the store to name."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


@contextlib.contextmanager
def _writing() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise _WriteError(exc) from exc


@dataclass(frozen=True)
class ObjectInfo:
    """What a store knows about one object.

    ``list`` fills key, size, etag and last_modified only; ``stat`` and the put
    methods fill content_type and metadata too.
    """

    key: str
    size: int
    etag: str | None = None
    content_type: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    last_modified: datetime | None = None


@runtime_checkable
class ObjectStore(Protocol):
    """The operations the pipeline needs from a blob store."""

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo: ...

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo: ...

    def put_file(
        self,
        key: str,
        path: Path | str,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo: ...

    def get_bytes(self, key: str) -> bytes: ...

    def get_file(self, key: str, path: Path | str) -> Path: ...

    def open(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]: ...

    def exists(self, key: str) -> bool: ...

    def stat(self, key: str) -> ObjectInfo: ...

    def list(
        self, prefix: str = "", start_after: str | None = None, limit: int | None = None
    ) -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def presigned_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str: ...

    def uri(self, key: str) -> str: ...

    def describe(self) -> str: ...

    def ensure_bucket(self) -> None: ...


def _check_metadata(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """User metadata travels as HTTP headers on S3: ASCII names and printable values only."""
    checked = {}
    for name, value in (metadata or {}).items():
        if not name.replace("-", "").replace("_", "").isalnum() or not name.isascii():
            raise ValueError(f"metadata name {name!r}: use ASCII letters, digits, '-' and '_'")
        if not (isinstance(value, str) and value.isascii() and value.isprintable()):
            raise ValueError(f"metadata {name!r}: value must be printable ASCII, got {value!r}")
        checked[name.lower()] = value
    return checked


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(target: Path, chunks: Iterator[bytes]) -> tuple[int, str]:
    """Write ``chunks`` to ``target`` so readers see the old file or the whole new one.

    A failure to write (disk full...) raises `_WriteError`; one while reading ``chunks``
    propagates as it is. Either way the temporary file is removed.
    """
    with _writing():
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f"{TMP_PREFIX}{secrets.token_hex(8)}"
    digest, size = hashlib.md5(usedforsecurity=False), 0
    try:
        with _writing():
            out = open(tmp, "wb")  # noqa: SIM115 (closed below, its errors are write errors)
        try:
            for chunk in chunks:
                with _writing():
                    out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            with _writing():
                out.flush()
                os.fsync(out.fileno())
        finally:
            with _writing():
                out.close()
        with _writing():
            os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    with _writing():
        _fsync_dir(target.parent)
    return size, digest.hexdigest()


def _read_chunks(stream: BinaryIO, length: int | None) -> Iterator[bytes]:
    remaining = length
    while remaining is None or remaining > 0:
        chunk = stream.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
        if not chunk:
            break
        if remaining is not None:
            remaining -= len(chunk)
        yield chunk
    if remaining:
        raise ObjectStoreError(f"stream ended {remaining} bytes before the announced length")


class _StreamedStore:
    """What both stores share: every put is one `put_stream`, every get one `open`."""

    def open(self, key: str) -> contextlib.AbstractContextManager[BinaryIO]:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        with self.open(key) as reader:
            return reader.read()

    def describe(self) -> str:
        raise NotImplementedError

    def get_file(self, key: str, path: Path | str) -> Path:
        target = Path(path)
        with self.open(key) as reader:
            try:
                _atomic_write(target, _read_chunks(reader, None))
            except _WriteError as exc:
                raise StoreWriteFailed(
                    f"cannot write {target} (a copy of {key!r} from {self.describe()}): "
                    f"{write_failure_reason(exc.error)}",
                    exc.error.errno,
                ) from exc.error
        return target

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        raise NotImplementedError

    def put_bytes(
        self,
        key: str,
        data: bytes,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        return self.put_stream(key, io.BytesIO(data), len(data), content_type, metadata)

    def put_file(
        self,
        key: str,
        path: Path | str,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        with open(path, "rb") as stream:
            return self.put_stream(
                key, stream, os.fstat(stream.fileno()).st_size, content_type, metadata
            )


class LocalObjectStore(_StreamedStore):
    """Objects as files under ``root``; metadata in hidden sidecar files."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()

    def describe(self) -> str:
        return f"local folder {self.root}"

    def ensure_bucket(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def presigned_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        """A ``file://`` URI (no expiry: nothing can sign a local file)."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(key, self.describe())
        return path.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _meta_path(self, key: str) -> Path:
        return self.root / META_DIR / f"{validate_key(key)}.json"

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        target, meta = self._path(key), _check_metadata(metadata)
        with self._write_errors(key):
            size, etag = _atomic_write(target, _read_chunks(stream, length))
            sidecar = {"content_type": content_type, "metadata": meta, "etag": etag, "size": size}
            # The data is already in place: a crash here leaves it with default metadata,
            # never metadata without data.
            _atomic_write(self._meta_path(key), iter([json.dumps(sidecar).encode()]))
        return ObjectInfo(key, size, etag, content_type, meta, self._mtime(target))

    @contextlib.contextmanager
    def _write_errors(self, key: str) -> Iterator[None]:
        """A failed write names the store, the key and why (the bare OSError names neither)."""
        try:
            yield
        except _WriteError as exc:
            raise StoreWriteFailed(
                f"{self.describe()}: cannot write {key!r}: {write_failure_reason(exc.error)}",
                exc.error.errno,
            ) from exc.error

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        try:
            reader = open(self._path(key), "rb")  # noqa: SIM115 (closed below)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(key, self.describe()) from None
        with reader:
            yield reader

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(key, self.describe()) from None
        if not path.is_file():
            raise ObjectNotFound(key, self.describe())
        sidecar = self._read_sidecar(key)
        etag = sidecar.get("etag") if sidecar.get("size") == st.st_size else None
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=etag or _md5_of(path),
            content_type=sidecar.get("content_type", DEFAULT_CONTENT_TYPE),
            metadata=dict(sidecar.get("metadata", {})),
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
        )

    def _read_sidecar(self, key: str) -> dict:
        try:
            return json.loads(self._meta_path(key).read_bytes())
        except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
            return {}

    @staticmethod
    def _mtime(path: Path) -> datetime:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)

    def delete(self, key: str) -> None:
        """Remove the object (a missing key is not an error: deletes are idempotent)."""
        self._path(key).unlink(missing_ok=True)
        self._meta_path(key).unlink(missing_ok=True)

    def list(
        self, prefix: str = "", start_after: str | None = None, limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        base = prefix.rpartition("/")[0]
        walk = self._walk(self.root / base if base else self.root, base, prefix, start_after)
        return islice(walk, limit)

    def _walk(
        self, folder: Path, folder_key: str, prefix: str, start_after: str | None
    ) -> Iterator[ObjectInfo]:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        # A folder's keys all start with "<name>/": sorting it by that string yields keys
        # in exact lexicographic order (e.g. "a-b" before "a/c").
        named = []
        for entry in entries:
            if entry.name.startswith(RESERVED_PREFIX):
                continue
            key = f"{folder_key}/{entry.name}" if folder_key else entry.name
            is_dir = entry.is_dir(follow_symlinks=False)
            named.append((key + "/" if is_dir else key, is_dir, entry))
        for sort_key, is_dir, entry in sorted(named, key=lambda item: item[0]):
            if is_dir:
                if not (sort_key.startswith(prefix) or prefix.startswith(sort_key)):
                    continue
                if start_after and sort_key < start_after and not start_after.startswith(sort_key):
                    continue
                yield from self._walk(Path(entry.path), sort_key[:-1], prefix, start_after)
            elif (
                sort_key.startswith(prefix)
                and (start_after is None or sort_key > start_after)
                and entry.is_file(follow_symlinks=False)
            ):
                st = entry.stat()
                yield ObjectInfo(
                    sort_key, st.st_size, last_modified=datetime.fromtimestamp(st.st_mtime, UTC)
                )


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as reader:
        for chunk in iter(lambda: reader.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _http_client(secure: bool) -> urllib3.PoolManager:
    """Retries transient failures (resets, 5xx, SlowDown) with backoff; refused connections
    are retried only briefly, so a wrong or stopped endpoint fails within seconds."""
    retry = urllib3.Retry(
        total=6,
        connect=2,
        read=4,
        status=5,
        backoff_factor=0.3,
        backoff_max=8,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=None,
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    options: dict = {
        "timeout": urllib3.Timeout(connect=5, read=120),
        "maxsize": 16,
        "retries": retry,
    }
    if secure:
        options.update(
            cert_reqs="CERT_REQUIRED", ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where()
        )
    return urllib3.PoolManager(**options)


_CREDENTIAL_CODES = {
    "SignatureDoesNotMatch",
    "InvalidAccessKeyId",
    "AccessDenied",
    "InvalidSignature",
}


class S3ObjectStore(_StreamedStore):
    """Objects in one bucket of an S3-compatible server, through the MinIO client."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        region: str | None = None,
        part_size: int = S3_PART_SIZE,
    ) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"S3 endpoint {endpoint!r} must look like http://host:port")
        self.endpoint = f"{parts.scheme}://{parts.netloc}"
        self.bucket = bucket
        self.part_size = part_size
        secure = parts.scheme == "https"
        self.client = Minio(
            parts.netloc,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(secure),
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> S3ObjectStore:
        return cls(
            endpoint=settings.s3_endpoint or "",
            access_key=settings.s3_access_key or "",
            secret_key=settings.s3_secret_key or "",
            bucket=settings.s3_bucket,
            region=settings.s3_region,
        )

    def describe(self) -> str:
        return f"S3 bucket {self.bucket!r} at {self.endpoint}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{validate_key(key)}"

    @contextlib.contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Turn client errors into messages that say what is wrong and what to set."""
        try:
            yield
        except S3Error as exc:
            raise self._translate(exc, key) from exc
        except Urllib3Error as exc:
            raise StoreUnreachable(
                f"cannot reach the S3 server at {self.endpoint} ({type(exc).__name__}): is it "
                "running? check AINDEX_S3_ENDPOINT"
            ) from exc

    def _translate(self, exc: S3Error, key: str | None) -> ObjectStoreError:
        if exc.code in ("NoSuchKey", "NoSuchObject") and key is not None:
            return ObjectNotFound(key, self.describe())
        if exc.code == "NoSuchBucket":
            return self._bucket_missing()
        if exc.code in _CREDENTIAL_CODES:
            return CredentialsRejected(
                f"S3 rejected the credentials for {self.endpoint} ({exc.code}): check "
                "AINDEX_S3_ACCESS_KEY / AINDEX_S3_SECRET_KEY"
            )
        if exc.code in _S3_FULL_CODES:
            return StoreWriteFailed(
                f"{self.describe()}: cannot write {key!r}: {_S3_FULL_CODES[exc.code]} "
                f"({exc.code}: {exc.message})"
            )
        return ObjectStoreError(f"{self.describe()}: {exc.code}: {exc.message} (key {key!r})")

    def ensure_bucket(self) -> None:
        """Create the bucket unless it exists (also checks the endpoint and the credentials)."""
        with self._errors():
            if not self.client.bucket_exists(self.bucket):
                with contextlib.suppress(S3Error):
                    self.client.make_bucket(self.bucket)
                if not self.client.bucket_exists(self.bucket):
                    raise BucketNotFound(
                        f"could not create bucket {self.bucket!r} at {self.endpoint}"
                    )

    def check(self) -> None:
        """Fail now, with a clear message, if the endpoint, credentials or bucket are wrong."""
        with self._errors():
            if not self.client.bucket_exists(self.bucket):
                raise self._bucket_missing()

    def _bucket_missing(self) -> BucketNotFound:
        return BucketNotFound(
            f"bucket {self.bucket!r} does not exist at {self.endpoint}: create it "
            "(ObjectStore.ensure_bucket()) or set AINDEX_S3_BUCKET to an existing bucket"
        )

    def put_stream(
        self,
        key: str,
        stream: BinaryIO,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> ObjectInfo:
        """Upload in one PUT, or in parts of ``part_size`` (unknown length or large objects);
        a failed multipart upload is aborted, so nothing half-written becomes visible."""
        validate_key(key)
        meta = _check_metadata(metadata)
        with self._errors(key):
            result = self.client.put_object(
                self.bucket,
                key,
                stream,
                -1 if length is None else length,
                content_type=content_type,
                metadata=dict(meta),
                part_size=self.part_size if length is None or length > self.part_size else 0,
            )
        size = length if length is not None else self.stat(key).size
        return ObjectInfo(key, size, result.etag, content_type, meta, None)

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        validate_key(key)
        with self._errors(key):
            response = self.client.get_object(self.bucket, key)
        try:
            with self._errors(key):
                yield response  # type: ignore[misc]
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        try:
            self.stat(key)
        except ObjectNotFound:
            return False
        return True

    def stat(self, key: str) -> ObjectInfo:
        validate_key(key)
        with self._errors(key):
            st = self.client.stat_object(self.bucket, key)
        return ObjectInfo(
            key=key,
            size=st.size or 0,
            etag=st.etag,
            content_type=st.content_type,
            metadata=_user_metadata(st.metadata),
            last_modified=st.last_modified,
        )

    def list(
        self, prefix: str = "", start_after: str | None = None, limit: int | None = None
    ) -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        return islice(self._list(prefix, start_after), limit)

    def _list(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        with self._errors():
            for obj in self.client.list_objects(
                self.bucket, prefix=prefix or None, recursive=True, start_after=start_after
            ):
                if obj.is_dir or obj.object_name is None:
                    continue
                yield ObjectInfo(
                    obj.object_name, obj.size or 0, obj.etag, last_modified=obj.last_modified
                )

    def delete(self, key: str) -> None:
        validate_key(key)
        with self._errors(key):
            self.client.remove_object(self.bucket, key)

    def presigned_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        validate_key(key)
        with self._errors(key):
            return self.client.presigned_get_object(self.bucket, key, expires=expires)


def _user_metadata(headers: Mapping[str, str] | None) -> dict[str, str]:
    prefix = "x-amz-meta-"
    return {
        name[len(prefix) :].lower(): value
        for name, value in (headers or {}).items()
        if name.lower().startswith(prefix)
    }


def open_object_store(settings: Settings) -> ObjectStore:
    """The store the settings select (nothing is contacted until the first call)."""
    if settings.object_store == "s3":
        return S3ObjectStore.from_settings(settings)
    return LocalObjectStore(settings.objects_dir)


def copy_object(
    source: ObjectStore, target: ObjectStore, key: str, target_key: str | None = None
) -> ObjectInfo:
    """Stream one object between stores (e.g. a local folder into a bucket)."""
    info = source.stat(key)
    with source.open(key) as reader:
        return target.put_stream(
            target_key or key,
            reader,
            info.size,
            info.content_type or DEFAULT_CONTENT_TYPE,
            info.metadata,
        )


__all__ = [
    "BucketNotFound",
    "CredentialsRejected",
    "LocalObjectStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "S3ObjectStore",
    "StoreUnreachable",
    "StoreWriteFailed",
    "copy_object",
    "open_object_store",
]
