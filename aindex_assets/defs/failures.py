"""Domain errors of the services become `dg.Failure`: one readable line in the UI, no trace."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from aindex_assets.lib.activation import FloorUnreachable
from aindex_assets.lib.index import IndexSpecError
from aindex_assets.services.copy_detection.detection import ExtractorMismatch
from aindex_assets.services.index import IncomparableVersion
from aindex_assets.services.reports import ReportExists

# LookupError covers `NoIndex`, `MissingPhotos`, a batch without a manifest and an unknown
# edit name.
DOMAIN_ERRORS = (
    LookupError,
    ExtractorMismatch,
    ReportExists,
    IndexSpecError,
    IncomparableVersion,
    FloorUnreachable,
)


@contextmanager
def domain_failures() -> Iterator[None]:
    try:
        yield
    except DOMAIN_ERRORS as exc:
        raise dg.Failure(description=str(exc).strip("\"'")) from exc
