"""Resources: where the bytes and facts live, and which extractor computes descriptors.

Both resources are plain configuration; the heavy objects they open (the object
store client, the catalog engine, the loaded network) are cached per process so
that every asset of a run shares them.
"""

from functools import lru_cache

import dagster as dg

from aindex_assets.lib.extractors import Extractor, load_extractor
from aindex_assets.services.packaged import PackagedPhotos
from aindex_assets.settings import (
    DEFAULT_BUCKET,
    DEFAULT_DATA_DIR,
    DEFAULT_EXTRACTOR,
    Settings,
    redact_extractor_spec,
    redact_url,
)
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.objectstore import ObjectStore, open_object_store


class StorageResource(dg.ConfigurableResource):
    """The object store (local folder or S3/MinIO) and the catalog (SQLite or PostgreSQL).

    The storage fields of `Settings` as Dagster config (unset: the settings' defaults), so
    that the UI shows where a run reads and writes; secrets arrive as `EnvVar`s.
    """

    data_dir: str = str(DEFAULT_DATA_DIR)
    object_store: str = "local"
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = DEFAULT_BUCKET
    s3_region: str | None = None
    database_url: str | None = None
    packaged_photos: bool | None = None

    def settings(self) -> Settings:
        return Settings(**{k: v for k, v in self.model_dump().items() if v is not None})

    def store(self) -> ObjectStore:
        return _open_store(self.settings())

    def catalog(self) -> Catalog:
        return _open_catalog(self.settings().database_url)

    def packaged_photo_policy(self) -> PackagedPhotos:
        return PackagedPhotos(self.settings().allows_packaged_photos)


class ExtractorResource(dg.ConfigurableResource):
    """The frozen feature extractor.

    `sscd_distilled` (offline default), `sscd`, `efficientnet_lite0`,
    `torchscript:<path|url>[#sha256=<hex>]` or `torchvision:<arch>:<weights file>`.
    """

    spec: str = DEFAULT_EXTRACTOR
    device: str = "auto"

    def load(self) -> Extractor:
        return _load_extractor(self.spec, self.device)


@lru_cache(maxsize=4)
def _open_store(settings: Settings) -> ObjectStore:
    return open_object_store(settings)


@lru_cache(maxsize=4)
def _open_catalog(url: str) -> Catalog:
    return Catalog.open(url)


@lru_cache(maxsize=2)
def _load_extractor(spec: str, device: str) -> Extractor:
    return load_extractor(spec, device=device)


def storage_from_settings(settings: Settings) -> StorageResource:
    """The storage resource for an environment; secrets stay environment references.

    Dagster shows resource config in its UI, so S3 keys, and a database URL that carries
    a password, are passed as `EnvVar`s and resolved only inside the run.
    """
    has_password = redact_url(settings.database_url) != settings.database_url
    common = {
        "data_dir": str(settings.data_dir),
        "object_store": settings.object_store,
        "packaged_photos": settings.packaged_photos,
        "database_url": (
            dg.EnvVar("AINDEX_DATABASE_URL") if has_password else settings.database_url
        ),
    }
    if settings.object_store != "s3":
        return StorageResource(**common)
    return StorageResource(
        **common,
        s3_endpoint=settings.s3_endpoint,
        s3_bucket=settings.s3_bucket,
        s3_region=settings.s3_region,
        s3_access_key=dg.EnvVar("AINDEX_S3_ACCESS_KEY"),
        s3_secret_key=dg.EnvVar("AINDEX_S3_SECRET_KEY"),
    )


def extractor_from_settings(settings: Settings) -> ExtractorResource:
    """The extractor resource; a model URL that carries a secret stays an environment
    reference (`AINDEX_EXTRACTOR`), resolved only inside the run, since the UI shows
    resource config."""
    secret = redact_extractor_spec(settings.extractor_spec) != settings.extractor_spec
    return ExtractorResource(
        spec=dg.EnvVar("AINDEX_EXTRACTOR") if secret else settings.extractor_spec,
        device=settings.device,
    )
