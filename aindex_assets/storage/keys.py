"""Object keys: validation, sanitising of user-supplied names, and the layout of the store.

Every key the pipeline writes is built here from content hashes and catalog ids,
never from a user's file name alone, so that two uploads cannot overwrite each
other and a hostile name cannot escape the store. ``validate_key`` is applied by
both object store implementations to every key they are given.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_KEY_BYTES = 1024
MAX_NAME_CHARS = 80
RESERVED_PREFIX = ".aindex"

INBOX_PREFIX = "inbox/"
QUERY_INBOX_PREFIX = "queries/inbox/"
TRAINING_IMAGES_PREFIX = "training/images/"
# Photos that are never ingested: the non-matching queries of robustness reports.
NEGATIVES_PREFIX = "negatives/"

# The distractor shard's batch id; distractors' FAISS ids live far above any catalog image id.
DISTRACTOR_BATCH = "distractors"
DISTRACTOR_ID_BASE = 1 << 62

_HEX = re.compile(r"^[0-9a-f]{16,128}$")
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_EXTENSION = re.compile(r"^[a-z0-9]{1,10}$")
_FORMAT_EXTENSIONS = {"jpeg": "jpg", "tiff": "tif"}


class InvalidKey(ValueError):
    """A key that could escape the store or is not portable between stores."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"invalid object key {key!r}: {reason}")
        self.key = key
        self.reason = reason


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative key, else raise :class:`InvalidKey`."""
    if not isinstance(key, str) or not key:
        raise InvalidKey(str(key), "empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(key[:64] + "...", f"longer than {MAX_KEY_BYTES} bytes")
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in key):
        raise InvalidKey(key, "contains NUL or control characters")
    if "\\" in key:
        raise InvalidKey(key, "contains a backslash")
    if key.startswith("/"):
        raise InvalidKey(key, "absolute path")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKey(key, "empty path segment (leading, trailing or doubled '/')")
        if segment in (".", ".."):
            raise InvalidKey(key, f"{segment!r} segment")
        if segment.startswith(RESERVED_PREFIX):
            raise InvalidKey(key, f"segments starting with {RESERVED_PREFIX!r} are reserved")
    return key


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, or a key-like string that may end with '/'."""
    if prefix:
        validate_key(prefix[:-1] if prefix.endswith("/") and len(prefix) > 1 else prefix)
    return prefix


def safe_name(user_name: str, max_chars: int = MAX_NAME_CHARS) -> str:
    """A safe, never-empty key segment for a user-supplied file name.

    Unicode letters, digits, '.', '-' and '_' are kept (NFC-normalised); anything
    else becomes '_'. When the name had to change, a short hash of the original is
    appended so that two different names never map to the same segment.
    """
    normalized = unicodedata.normalize("NFC", user_name)
    # No leading dots: no hidden files, no '.'/'..', no reserved '.aindex' segment.
    cleaned = "".join(ch if _is_safe_char(ch) else "_" for ch in normalized).lstrip(".")
    if cleaned and cleaned == user_name and len(cleaned) <= max_chars:
        return cleaned
    digest = hashlib.sha256(user_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem, dot, ext = cleaned.rpartition(".")
    if not (dot and stem and _EXTENSION.match(ext.lower())):
        stem, ext = cleaned, ""
    stem = stem.strip("._")[: max(1, max_chars - 11 - len(ext))] or "file"
    return f"{stem}-{digest}" + (f".{ext}" if ext else "")


def _is_safe_char(ch: str) -> bool:
    return ch in "-_." or unicodedata.category(ch)[0] in ("L", "N")


def check_hash(content_hash: str) -> str:
    if not _HEX.match(content_hash):
        raise ValueError(f"not a lowercase hex content hash: {content_hash!r}")
    return content_hash


def check_batch_id(batch_id: str) -> str:
    if not _BATCH_ID.match(batch_id):
        raise ValueError(
            f"invalid batch id {batch_id!r}: letters, digits, '.', '-', '_' only (max 128)"
        )
    return batch_id


def extension_for(image_format: str) -> str:
    """File extension for a format name such as Pillow's ``JPEG`` or ``.png``."""
    ext = image_format.lower().lstrip(".")
    ext = _FORMAT_EXTENSIONS.get(ext, ext)
    if not _EXTENSION.match(ext):
        raise ValueError(f"invalid file extension {image_format!r}")
    return ext


def _fanout(content_hash: str) -> str:
    """Two levels of hash prefix keep local directories small."""
    return f"{content_hash[:2]}/{content_hash[2:4]}/{content_hash}"


def original_key(content_hash: str, image_format: str) -> str:
    """``originals/ab/cd/<hash>.<ext>``: one object per distinct content."""
    return f"originals/{_fanout(check_hash(content_hash))}.{extension_for(image_format)}"


def activated_key(index_version: int, content_hash: str, release_format: str = "png") -> str:
    """``activated/v<version>/ab/cd/<hash>.<ext>``: released images, per index version, the
    extension that of their format (``png``, ``jpg``, ``webp``)."""
    fanout = _fanout(check_hash(content_hash))
    return f"activated/v{int(index_version)}/{fanout}.{extension_for(release_format)}"


def manifest_key(batch_id: str) -> str:
    return f"batches/{check_batch_id(batch_id)}/manifest.json"


def embeddings_key(extractor_identity: str, batch_id: str) -> str:
    """Descriptor matrix of one batch for one extractor (``.npz`` of ids and vectors)."""
    return f"embeddings/{check_hash(extractor_identity)[:16]}/{check_batch_id(batch_id)}.npz"


def training_embeddings_key(extractor_identity: str) -> str:
    return f"training/embeddings/{check_hash(extractor_identity)[:16]}.npz"


def trained_index_key(index_version: int) -> str:
    return f"indexes/v{int(index_version)}/trained.faiss"


def shard_key(index_version: int, batch_id: str) -> str:
    return f"indexes/v{int(index_version)}/shards/{check_batch_id(batch_id)}.faiss"


def served_index_key(index_version: int, served_id: int) -> str:
    return f"indexes/v{int(index_version)}/served/{int(served_id):08d}.faiss"


def report_key(batch_id: str, kind: str, report_id: int, ext: str = "json") -> str:
    """``reports/<batch>/<kind>-<id>.<ext>``; report ids are allocated by the catalog."""
    if not re.match(r"^[a-z][a-z0-9_]{0,31}$", kind):
        raise ValueError(f"invalid report kind {kind!r}")
    return f"reports/{check_batch_id(batch_id)}/{kind}-{int(report_id):08d}.{extension_for(ext)}"


def report_asset_key(report_id: int, name: str) -> str:
    """A file attached to a report (a plot, a table): ``reports/assets/<id>/<safe name>``."""
    return f"reports/assets/{int(report_id):08d}/{safe_name(name)}"


def copy_detections_key(batch_id: str, threshold_id: int) -> str:
    """``queries/results/<batch>/t<threshold id>.json``: a query batch's verdicts under one
    calibrated threshold (the same batch and threshold always give the same verdicts)."""
    return f"queries/results/{check_batch_id(batch_id)}/t{int(threshold_id):08d}.json"
