"""The PSNR floor: no visibly altered image reaches the index or the report."""

import dagster as dg

from aindex_assets.defs.activation.assets import activated_images
from aindex_assets.defs.metadata import DB_DIGITS, rounded
from aindex_assets.defs.resources import StorageResource

PSNR_FLOOR_CHECK = "psnr_above_floor"


class PsnrFloorConfig(dg.Config):
    """Lowest PSNR (dB) an activated image may have before its release is stopped."""

    floor_db: float = 40.0


@dg.asset_check(asset=activated_images, name=PSNR_FLOOR_CHECK, blocking=True)
def psnr_above_floor(
    context: dg.AssetCheckExecutionContext, config: PsnrFloorConfig, storage: StorageResource
) -> dg.AssetCheckResult:
    """Every image activated in this batch has a PSNR at or above the floor (default 40 dB).

    Blocking: a batch with a visibly altered image does not reach the index or the report.
    """
    records = storage.catalog().activations(batch_id=context.partition_key)
    below = [(r.image_id, round(r.psnr, 2)) for r in records if r.psnr < config.floor_db]
    return dg.AssetCheckResult(
        passed=not below,
        metadata={
            "floor_db": config.floor_db,
            "images": len(records),
            "below_floor": dg.MetadataValue.json(below[:100]),
            "min_psnr": rounded(min((r.psnr for r in records), default=None), DB_DIGITS),
        },
    )
