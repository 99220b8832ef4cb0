"""Where aindex keeps its bytes and facts, read from the environment in one place.

Variables (defaults in brackets):

- ``AINDEX_DATA_DIR`` [``./aindex_data``]: the embedded default's home.
- ``AINDEX_OBJECT_STORE`` [``local``]: ``local`` (the folder ``<data_dir>/objects``) or ``s3``.
- ``AINDEX_S3_ENDPOINT``: e.g. ``http://127.0.0.1:8333``; the scheme decides TLS.
- ``AINDEX_S3_ACCESS_KEY`` / ``AINDEX_S3_SECRET_KEY``: credentials (required with ``s3``).
- ``AINDEX_S3_BUCKET`` [``aindex``] and ``AINDEX_S3_REGION`` [unset].
- ``AINDEX_EXTRACTOR`` [``sscd_distilled``]: the feature extractor, also ``sscd``,
  ``efficientnet_lite0``, ``torchscript:<path|url>[#sha256=<hex>]`` or
  ``torchvision:<arch>:<weights path>``.
- ``AINDEX_DEVICE`` [``auto``]: ``auto``, ``cpu`` or ``cuda``.
- ``AINDEX_PACKAGED_PHOTOS`` [``allow`` on the embedded default, ``refuse`` otherwise]:
  whether the photos that ship inside packages may stand in for an empty
  ``training/images/`` (index training, distractors) or ``negatives/`` (copy thresholds,
  reports). A deployment on S3 or PostgreSQL must say ``allow`` to use them.
- ``AINDEX_DATABASE_URL`` [``sqlite:///<data_dir>/catalog.db``]: SQLite or PostgreSQL;
  ``postgres://`` and ``postgresql://`` become ``postgresql+psycopg2://`` (with a bare
  ``postgresql://`` SQLAlchemy 2.1 would pick psycopg 3, which is not installed).

A ``.env`` file in the working directory is read too; real environment variables win.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

OBJECT_STORE_KINDS = ("local", "s3")
DEFAULT_DATA_DIR = Path("aindex_data")
# The copy-detection descriptor (see README, "Which descriptor"); lib.extractors.DEFAULT_SPEC.
DEFAULT_EXTRACTOR = "sscd_distilled"
DEFAULT_BUCKET = "aindex"
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_DOTENV_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable to set."""


def normalize_database_url(url: str) -> str:
    """Pin PostgreSQL URLs to psycopg2, the driver that is installed."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


@dataclass(frozen=True)
class Settings:
    """Storage configuration; build it with :meth:`from_env` or directly (it validates itself)."""

    data_dir: Path = DEFAULT_DATA_DIR
    object_store: str = "local"
    s3_endpoint: str | None = None
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)
    s3_bucket: str = DEFAULT_BUCKET
    s3_region: str | None = None
    database_url: str = ""
    extractor_spec: str = DEFAULT_EXTRACTOR
    device: str = "auto"
    packaged_photos: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        url = self.database_url or self.default_database_url(self.data_dir)
        object.__setattr__(self, "database_url", normalize_database_url(url))
        self._validate()

    @staticmethod
    def default_database_url(data_dir: Path) -> str:
        return f"sqlite:///{Path(data_dir) / 'catalog.db'}"

    @property
    def allows_packaged_photos(self) -> bool:
        """Explicit setting, else only on the embedded default (local folder + SQLite)."""
        if self.packaged_photos is not None:
            return self.packaged_photos
        return self.object_store == "local" and self.database_url.startswith("sqlite")

    @property
    def objects_dir(self) -> Path:
        """The local object store's root (used when ``object_store`` is ``local``)."""
        return self.data_dir / "objects"

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] = os.environ, dotenv: Path | None = Path(".env")
    ) -> Settings:
        """Settings from ``env``, completed by ``dotenv`` when that file exists."""
        values = {**read_dotenv(dotenv), **env} if dotenv is not None else dict(env)

        def get(name: str) -> str | None:
            value = values.get(name, "").strip()
            return value or None

        return cls(
            data_dir=Path(get("AINDEX_DATA_DIR") or DEFAULT_DATA_DIR),
            object_store=(get("AINDEX_OBJECT_STORE") or "local").lower(),
            s3_endpoint=get("AINDEX_S3_ENDPOINT"),
            s3_access_key=get("AINDEX_S3_ACCESS_KEY"),
            s3_secret_key=get("AINDEX_S3_SECRET_KEY"),
            s3_bucket=get("AINDEX_S3_BUCKET") or DEFAULT_BUCKET,
            s3_region=get("AINDEX_S3_REGION"),
            database_url=get("AINDEX_DATABASE_URL") or "",
            extractor_spec=get("AINDEX_EXTRACTOR") or DEFAULT_EXTRACTOR,
            device=(get("AINDEX_DEVICE") or "auto").lower(),
            packaged_photos=parse_packaged_photos(get("AINDEX_PACKAGED_PHOTOS")),
        )

    def __repr__(self) -> str:
        shown = {
            "data_dir": str(self.data_dir),
            "object_store": self.object_store,
            "s3_endpoint": self.s3_endpoint,
            "s3_access_key": _redact(self.s3_access_key),
            "s3_secret_key": _redact(self.s3_secret_key),
            "s3_bucket": self.s3_bucket,
            "s3_region": self.s3_region,
            "database_url": redact_url(self.database_url),
            "extractor_spec": redact_extractor_spec(self.extractor_spec),
            "device": self.device,
            "packaged_photos": self.packaged_photos,
        }
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    __str__ = __repr__

    def _validate(self) -> None:
        if self.object_store not in OBJECT_STORE_KINDS:
            raise SettingsError(
                f"AINDEX_OBJECT_STORE={self.object_store!r} is not one of {OBJECT_STORE_KINDS}"
            )
        scheme = self.database_url.split(":", 1)[0]
        if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
            raise SettingsError(
                f"AINDEX_DATABASE_URL must be a sqlite:/// or postgresql:// URL, got "
                f"{redact_url(self.database_url)!r}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise SettingsError(f"AINDEX_DEVICE={self.device!r} is not one of auto, cpu, cuda")
        if self.object_store == "s3":
            self._validate_s3()

    def _validate_s3(self) -> None:
        missing = [
            name
            for name, value in (
                ("AINDEX_S3_ENDPOINT", self.s3_endpoint),
                ("AINDEX_S3_ACCESS_KEY", self.s3_access_key),
                ("AINDEX_S3_SECRET_KEY", self.s3_secret_key),
            )
            if not value
        ]
        if missing:
            raise SettingsError(
                f"AINDEX_OBJECT_STORE=s3 needs {', '.join(missing)}: set "
                f"{'it' if len(missing) == 1 else 'them'} in the environment or in .env"
            )
        parts = urlsplit(self.s3_endpoint or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SettingsError(
                f"AINDEX_S3_ENDPOINT={self.s3_endpoint!r} must look like "
                "http://host:port or https://host (the scheme decides TLS)"
            )
        if parts.path not in ("", "/") or parts.query:
            raise SettingsError(
                f"AINDEX_S3_ENDPOINT={self.s3_endpoint!r} must not have a path: "
                "the bucket goes in AINDEX_S3_BUCKET"
            )
        if not _BUCKET_NAME.match(self.s3_bucket):
            raise SettingsError(
                f"AINDEX_S3_BUCKET={self.s3_bucket!r} is not a valid bucket name "
                "(3-63 characters: lowercase letters, digits, dots and hyphens)"
            )


def parse_packaged_photos(value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() not in ("allow", "refuse"):
        raise SettingsError(f"AINDEX_PACKAGED_PHOTOS={value!r} must be 'allow' or 'refuse'")
    return value.lower() == "allow"


def _redact(secret: str | None) -> str | None:
    return None if secret is None else "***"


def redact_url(url: str) -> str:
    """The URL with any password replaced, safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def redact_extractor_spec(spec: str) -> str:
    """An extractor spec safe to log or store: the password and the query values (an access
    token, a signature) of a model URL are replaced."""
    kind, colon, location = spec.partition(":")
    if "://" not in location:
        return spec
    parts = urlsplit(redact_url(location))
    query = "&".join(f"{name}=***" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    return f"{kind}{colon}{parts._replace(query=query).geturl()}"


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a .env file ({} if absent); comments, ``export``, quotes allowed."""
    if not path.is_file():
        return {}
    values = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _DOTENV_LINE.match(line)
        if match is None:
            raise SettingsError(f"{path}: cannot parse line {line!r} (expected KEY=value)")
        name, value = match.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[name] = value
    return values
