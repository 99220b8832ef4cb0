"""Index comparison benchmark: which FAISS index benefits from activation (the paper's table).

The packaged photos to ingest are the batch; crops of the held-out photos train every index
and serve as distractors. `lib.comparison.compare_indexes` trains each factory, activates the
batch for it and evaluates passive vs active recall@1 per edit, in one run.

    .venv/bin/python benchmarks/index_comparison.py              # default factories
    .venv/bin/python benchmarks/index_comparison.py --factories "IVF32,PQ8x8;Flat" --edits none
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from PIL import Image

from aindex_assets.lib import photos
from aindex_assets.lib.activation import ActivationParams
from aindex_assets.lib.comparison import EvaluationSettings, compare_indexes, default_factories
from aindex_assets.lib.edits import edits_by_name
from aindex_assets.lib.extractors import load_extractor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--train", type=int, default=1500)
    parser.add_argument("--distractors", type=int, default=800)
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--served", default="IVF32,PQ8x8", help="the served factory, listed first")
    parser.add_argument("--factories", default="", help="';'-separated (default: the asset's)")
    parser.add_argument("--edits", default="", help="comma-separated subset of the paper's edits")
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=1)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    start = time.perf_counter()
    extractor = load_extractor("efficientnet_lite0", device=args.device)
    to_ingest, held_out = photos.split_demo_photos()
    lanczos = Image.Resampling.LANCZOS
    batch = [photos.shrunk_photo(d, args.max_side, lanczos) for _, d in to_ingest[: args.images]]
    sources = [photos.shrunk_photo(d, 1024, lanczos) for _, d in held_out]
    crops = photos.random_crops(sources, args.train + args.distractors, args.crop_size, seed=0)
    vectors = extractor.embed_images(crops, batch_size=64)
    features = extractor.embed_images(batch)
    print(
        f"embedded {len(crops)} crops and {len(batch)} photos: {time.perf_counter() - start:.0f} s"
    )
    factories = (
        args.factories.split(";") if args.factories else default_factories(args.train, args.served)
    )
    edits = edits_by_name(args.edits.split(",") if args.edits else None)
    result = compare_indexes(
        batch,
        features,
        list(range(len(batch))),
        vectors[: args.train],
        vectors[args.train :],
        2**62 + np.arange(args.distractors, dtype=np.int64),
        extractor,
        factories,
        ActivationParams(iterations=args.iterations),
        edits,
        EvaluationSettings(nprobe=args.nprobe),
    )
    print(
        f"\n{len(batch)} photos (max side {args.max_side} px), {args.train} training crops, "
        f"{args.distractors} distractors, nprobe {args.nprobe}, {args.iterations} iterations\n"
    )
    print(result.to_markdown())
    print()
    print(result.per_edit_markdown())
    for factory in result.factories:
        print(f"{factory.factory}: evaluation {factory.evaluation_seconds:.0f} s")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
