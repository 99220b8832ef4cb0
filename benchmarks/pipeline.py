"""Dagster overhead: one ingestion batch through the asset graph vs the same work called directly.

Both sides do the same work on the same photos with the same trained index: decode,
embed, activate, write the PNGs, build the batch's shard, merge the served index and run
the robustness evaluation. The Dagster side adds what the pipeline is for: the catalog
rows, the manifest, partitions, run and event storage, metadata and the asset checks.
Target: overhead at most 20% for a 32-image batch. Side by side in one run; the order
alternates over `--repeat` rounds because these machines are noisy.

    .venv/bin/python benchmarks/pipeline.py                 # 32 images, 1 round
    .venv/bin/python benchmarks/pipeline.py --images 8 --repeat 2
"""

import argparse
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np

from aindex_assets.definitions import build_definitions
from aindex_assets.defs.claims import with_request_config
from aindex_assets.defs.ingest.sensors import inbox_sensor
from aindex_assets.defs.jobs import BOOTSTRAP_ASSETS, activate_batch_job
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.activation import ActivationParams, activate
from aindex_assets.lib.evaluation import evaluate_robustness
from aindex_assets.lib.extractors import load_extractor
from aindex_assets.lib.images import decode_image, encode_png
from aindex_assets.lib.photos import small_demo_photos
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.objectstore import LocalObjectStore, open_object_store

BOOTSTRAP_CONFIG = {
    "ops": {
        "training_embeddings": {"config": {"crops": 1000, "crop_size": 160}},
        "index_distractors": {"config": {"crops": 1000, "crop_size": 160}},
        "trained_index": {"config": {"factory": "IVF16,PQ8x8"}},
    }
}


def bootstrap(settings: Settings) -> None:
    defs = build_definitions(settings)
    result = dg.materialize(
        [defs.resolve_assets_def(key) for key in BOOTSTRAP_ASSETS],
        run_config=BOOTSTRAP_CONFIG,
    )
    assert result.success


def through_dagster(settings: Settings, photos: list[tuple[str, bytes]]) -> float:
    defs = build_definitions(settings)
    store = open_object_store(settings)
    start = time.perf_counter()
    for name, data in photos:
        store.put_bytes(upload_key(name, prefix=INBOX_PREFIX), data)
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(
            instance=instance, resources={"storage": defs.resources["storage"]}
        ) as context:
            [run] = inbox_sensor(context).run_requests
        instance.add_dynamic_partitions(INGEST_BATCHES.name, [run.partition_key])
        outcome = defs.resolve_job_def(activate_batch_job.name).execute_in_process(
            instance=instance,
            partition_key=run.partition_key,
            run_config=with_request_config({}, run),
        )
        assert outcome.success
    return time.perf_counter() - start


def direct(settings: Settings, photos: list[tuple[str, bytes]], folder: Path) -> float:
    catalog = Catalog.open(settings.database_url)
    source = open_object_store(settings)
    version = catalog.active_index_version()
    trained = faiss_index.deserialize_index(source.get_bytes(version.object_key))
    served_before = faiss_index.merge_shards(
        trained,
        [
            faiss_index.deserialize_index(source.get_bytes(s.object_key))
            for s in catalog.shards(version.id)
        ],
    )
    extractor = load_extractor(settings.extractor_spec, device=settings.device)
    store = LocalObjectStore(folder)
    start = time.perf_counter()
    originals = [decode_image(data, name).image for name, data in photos]
    features = extractor.embed_images(originals)
    results = activate(
        originals,
        extractor,
        trained,
        ActivationParams(),
        original_features=features,
        database=served_before,
    )
    ids = np.arange(len(photos), dtype=np.int64) + 10_000_000
    for image_id, result in zip(ids, results, strict=True):
        store.put_bytes(f"activated/{image_id}.png", encode_png(result.image))
    shard = faiss_index.empty_shard(trained)
    faiss_index.add_with_ids(shard, features, ids)
    store.put_bytes("shard.faiss", faiss_index.serialize_index(shard))
    merged = faiss_index.merge_shards(trained, [served_before, shard])
    store.put_bytes("served.faiss", faiss_index.serialize_index(merged))
    active = [decode_image(store.get_bytes(f"activated/{i}.png"), str(i)).image for i in ids]
    evaluate_robustness(
        originals,
        active,
        ids.tolist(),
        extractor.embed_images,
        lambda q, k: faiss_index.search(merged, q, k=k, nprobe=1),
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--side", type=int, default=384, help="longest side of the photos")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    photos = small_demo_photos(args.images, args.side)
    print(f"{len(photos)} photos, longest side {args.side} px")
    timings: dict[str, list[float]] = {"dagster": [], "direct": []}
    for round_ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            settings = Settings.from_env({"AINDEX_DATA_DIR": str(Path(tmp) / "data")}, dotenv=None)
            bootstrap(settings)
            # Warm the extractor cache of this process so neither side pays its load.
            load_extractor(settings.extractor_spec, device=settings.device)
            order = ["direct", "dagster"] if round_ % 2 == 0 else ["dagster", "direct"]
            for side in order:
                seconds = (
                    direct(settings, photos, Path(tmp) / "direct")
                    if side == "direct"
                    else through_dagster(settings, photos)
                )
                timings[side].append(seconds)
                print(f"round {round_ + 1}: {side:8s} {seconds:7.1f} s")
    dagster_s, direct_s = np.median(timings["dagster"]), np.median(timings["direct"])
    print(
        f"median: dagster {dagster_s:.1f} s, direct {direct_s:.1f} s, "
        f"overhead {100 * (dagster_s / direct_s - 1):+.1f}% (target <= +20%)"
    )


if __name__ == "__main__":
    main()
