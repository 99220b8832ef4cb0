"""Whether the photos that ship inside packages may stand in for the store's own photos.

They make a fresh install work offline (the demo), but an index trained, or a threshold
set, on them says nothing about a real collection: outside the embedded default they are
used only when the deployment says so (`AINDEX_PACKAGED_PHOTOS=allow`).
"""

from __future__ import annotations

from dataclasses import dataclass

from aindex_assets.storage.keys import NEGATIVES_PREFIX, TRAINING_IMAGES_PREFIX

WHAT_TO_PUT = {
    TRAINING_IMAGES_PREFIX: (
        "put a sample of your collection there, drawn like the images you will index: "
        "at least 40 per IVF list and 256 per PQ sub-quantizer code (about 3,000 for the "
        "default IVF32,PQ8x8); they train the quantizer and stand as distractors"
    ),
    NEGATIVES_PREFIX: (
        "put photos unrelated to your collection there, like the images queries will bring: "
        "several hundred (a 1% false-positive rate cannot be set on fewer than 100); they "
        "set the copy threshold and test the reports"
    ),
}


class MissingPhotos(LookupError):
    """The store holds no photos where they are needed, and packaged ones may not stand in."""


@dataclass(frozen=True)
class PackagedPhotos:
    allowed: bool = True

    def require(self, prefix: str) -> None:
        """Raise `MissingPhotos`, saying what to put under `prefix`, unless allowed."""
        if not self.allowed:
            raise MissingPhotos(
                f"{prefix} in the object store holds no usable image: {WHAT_TO_PUT[prefix]}. "
                "The packaged demo photos stand in only on the embedded default or with "
                "AINDEX_PACKAGED_PHOTOS=allow"
            )
