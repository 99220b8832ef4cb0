"""False positives and mild-edit recall of copy detection, per extractor, side by side.

What a user of `aindex query` meets: photos are activated and indexed; the threshold is
set for a 1% false-positive rate on unrelated photos (and mild edits of them); then
photos that did NOT set it are judged, with mildly edited copies of the released images.
Every score is the pipeline's: the index's top k re-ranked on the original descriptors.

Unrelated photos are the packaged photos that are not indexed, each with its 3x3
disjoint tiles (`photos.photo_tiles`): more non-matching images than there are photos.
They are split by source photo (alternately) into the set that sets the threshold and
the set that tests it, so that no tile of a test photo helped set the threshold.
Mild edits: JPEG 50, centre crop to 64% of the area (80% of each side), brightness 1.3,
rotation 10 degrees.

    .venv/bin/python benchmarks/false_positives.py
    .venv/bin/python benchmarks/false_positives.py --extractors efficientnet_lite0,sscd_distilled
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib import photos
from aindex_assets.lib.activation import ActivationParams, activate
from aindex_assets.lib.copydetection import (
    TopMatch,
    passes,
    reranked_top_match,
    threshold_for_fpr,
)
from aindex_assets.lib.edits import Edit
from aindex_assets.lib.extractors import Extractor, load_extractor

MILD_EDITS = (
    Edit("jpeg", 50),
    Edit("center_crop", 0.64),
    Edit("brightness", 1.3),
    Edit("rotate", 10),
)
DISTRACTOR_BASE = 2**62


def with_mild_edits(images: Sequence[Image.Image], unedited: bool) -> list[tuple[int, Image.Image]]:
    """(position, image) of each image under every mild edit (and unedited if asked)."""
    edited = [(i, edit(image)) for i, image in enumerate(images) for edit in MILD_EDITS]
    return [*enumerate(images), *edited] if unedited else edited


def unrelated_sets(
    indexed: int, grid: int
) -> tuple[list[Image.Image], list[Image.Image], int, int]:
    """(threshold-setting images, test images, their source photo counts)."""
    to_ingest, _ = photos.split_demo_photos()
    sources = [data for _, data in to_ingest[indexed:]] + [
        data for _, data in photos.negative_photos()
    ]
    setting, testing = [], []
    for position, data in enumerate(sources):
        tiles = photos.photo_tiles(photos.shrunk_photo(data, 768), grid)
        (setting if position % 2 == 0 else testing).extend(tiles)
    return setting, testing, (len(sources) + 1) // 2, len(sources) // 2


class Detector:
    """The pipeline's score: the index's top k, re-ranked on the original descriptors."""

    def __init__(
        self, extractor: Extractor, index, originals: np.ndarray, k: int, nprobe: int
    ) -> None:
        self.extractor, self.index, self.k, self.nprobe = extractor, index, k, nprobe
        self.originals = dict(enumerate(originals))

    def top_matches(self, images: Sequence[Image.Image]) -> list[TopMatch | None]:
        vectors = self.extractor.embed_images(list(images), batch_size=32)
        _, ids = faiss_index.search(self.index, vectors, k=self.k, nprobe=self.nprobe)
        return [
            reranked_top_match(v, row, self.originals, DISTRACTOR_BASE)
            for v, row in zip(vectors, ids, strict=True)
        ]


def recall(matches: list[TopMatch | None], truth: list[int], threshold: float) -> str:
    """Share of copies found with the right original and passing, overall and per edit."""
    hits = np.array(
        [
            m is not None and m.image_id == t and passes(m.score, threshold, False)
            for m, t in zip(matches, truth, strict=True)
        ]
    ).reshape(-1, len(MILD_EDITS))
    edits = zip(MILD_EDITS, hits.mean(axis=0), strict=True)
    per_edit = ", ".join(f"{e.name} {h:.2f}" for e, h in edits)
    return f"{hits.mean():.3f} ({per_edit})"


def measure(spec: str, args: argparse.Namespace, timed: Callable[[str], None]) -> dict:
    extractor = load_extractor(spec, device="cpu")
    to_ingest, held_out = photos.split_demo_photos()
    originals = [photos.shrunk_photo(data, args.max_side) for _, data in to_ingest[: args.indexed]]
    sources = [photos.shrunk_photo(data, 1024) for _, data in held_out]
    crops = photos.random_crops(sources, args.train + args.distractors, 256, seed=0)
    start = time.perf_counter()
    crop_vectors = extractor.embed_images(crops, batch_size=64)
    extraction_s = (time.perf_counter() - start) / len(crops)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = faiss_index.train_index(args.factory, crop_vectors[: args.train])
    database = faiss_index.empty_shard(trained)
    faiss_index.add_with_ids(
        database, crop_vectors[args.train :], DISTRACTOR_BASE + np.arange(args.distractors)
    )
    features = extractor.embed_images(originals)
    start = time.perf_counter()
    released = [
        Image.fromarray(r.image)
        for r in activate(
            originals, extractor, trained, ActivationParams(), features, database=database
        )
    ]
    activation_s = (time.perf_counter() - start) / len(originals)
    served = faiss_index.merge_shards(trained, [database])
    faiss_index.add_with_ids(served, features, np.arange(len(originals)))
    detector = Detector(extractor, served, features, args.k, args.nprobe)
    timed(f"{spec}: index and activation ready")

    setting, testing, n_setting, n_testing = unrelated_sets(args.indexed, args.grid)
    calibration = detector.top_matches([im for _, im in with_mild_edits(setting, unedited=True)])
    threshold = threshold_for_fpr(calibration, args.target_fpr)
    tested = detector.top_matches([im for _, im in with_mild_edits(testing, unedited=True)])
    unedited_tested = detector.top_matches(testing)
    positives = with_mild_edits(released, unedited=False)
    passive = with_mild_edits(originals, unedited=False)
    truth = [i for i, _ in positives]
    return {
        "threshold": threshold,
        "setting": f"{len(calibration)} ({len(setting)} images of {n_setting} photos)",
        "tested": len(tested),
        "tested_images": f"{len(testing)} images of {n_testing} photos",
        "false_positives": sum(passes(m and m.score, threshold, False) for m in tested),
        "false_positive_images": sum(
            passes(m and m.score, threshold, False) for m in unedited_tested
        ),
        "active_recall": recall(
            detector.top_matches([im for _, im in positives]), truth, threshold
        ),
        "passive_recall": recall(detector.top_matches([im for _, im in passive]), truth, threshold),
        "extraction_s": extraction_s,
        "activation_s": activation_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extractors", default="sscd_distilled,efficientnet_lite0")
    parser.add_argument("--indexed", type=int, default=24)
    parser.add_argument("--max-side", type=int, default=768)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--distractors", type=int, default=3000)
    parser.add_argument("--factory", default="IVF64,PQ8x8")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=1)
    parser.add_argument("--grid", type=int, default=3)
    parser.add_argument("--target-fpr", type=float, default=0.01)
    args = parser.parse_args()
    began = time.perf_counter()

    def timed(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {message}", flush=True)

    rows = {spec: measure(spec, args, timed) for spec in args.extractors.split(",")}
    print(
        "\nextractor | threshold | set on | tested (with edits) | false positives "
        "| FP unedited | mild-edit recall active | passive | s/image extract | s/image activate"
    )
    for spec, row in rows.items():
        print(
            f"{spec} | {row['threshold']:.4g} | {row['setting']} | {row['tested']} "
            f"({row['tested_images']}) | {row['false_positives']} "
            f"({row['false_positives'] / row['tested']:.2%}) | {row['false_positive_images']} "
            f"| {row['active_recall']} | {row['passive_recall']} "
            f"| {row['extraction_s']:.4f} | {row['activation_s']:.2f}"
        )


if __name__ == "__main__":
    main()
