"""Load: about 1,000 files in several batches through the real stack, then an audit.

SeaweedFS (started here through `aindex_assets_tests.devservers`) is the object store, a scratch
PostgreSQL database the catalog. Inputs are small random crops (64-128 px, PNG and JPEG) of
the packaged photos plus a share of hostile files (empty, truncated, HTML, SVG, bombs,
animations, tiny, banners). They are uploaded to the inbox; the inbox sensor cuts batches
(64 files, up to 4 per tick) and each batch runs raw_images -> image_embeddings ->
activated_images -> index_shard -> search_index in process (the robustness report is left
out: it re-embeds every image under 15 edits, a cost of its own). At the end every input
must be either activated and in the served index, or rejected with a reason; the script
prints throughput and peak memory (max RSS of this process: Dagster, torch, FAISS).

    .venv/bin/python benchmarks/load.py                    # 1,000 files, 2 iterations
    .venv/bin/python benchmarks/load.py --files 200 --iterations 1
"""

import argparse
import multiprocessing
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import dagster as dg
import numpy as np
from PIL import Image

from aindex_assets.definitions import build_definitions
from aindex_assets.defs.claims import with_request_config
from aindex_assets.defs.ingest.sensors import inbox_sensor
from aindex_assets.defs.jobs import BATCH_SELECTION, BOOTSTRAP_ASSETS
from aindex_assets.defs.partitions import DISTRACTOR_BATCH, INGEST_BATCHES
from aindex_assets.defs.reports.assets import robustness_report
from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.images import decode_image
from aindex_assets.lib.photos import demo_photos
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import INBOX_PREFIX
from aindex_assets.storage.objectstore import open_object_store
from aindex_assets_tests.devservers import SeaweedServer, scratch_database
from aindex_assets_tests.hostile_files import encoded, png_claiming_size

BOOTSTRAP_CONFIG = {
    "ops": {
        "training_embeddings": {"config": {"crops": 400, "crop_size": 64}},
        "index_distractors": {"config": {"crops": 200, "crop_size": 64}},
        "trained_index": {"config": {"factory": "IVF16,PQ8x4"}},
    }
}
LOAD_JOB = dg.define_asset_job(
    "load_batch", selection=BATCH_SELECTION - dg.AssetSelection.assets(robustness_report)
)


def hostile_file(i: int, rng: np.random.Generator) -> tuple[str, bytes]:
    """One of nine kinds of unusable file; `i` makes its bytes unique."""
    kind = i % 9
    noise = Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    frames = [Image.new("RGB", (32, 32), (i % 256, v, 0)) for v in (0, 255)]
    files = {
        0: ("empty.jpg", b""),
        1: ("cut.jpg", encoded(noise, "JPEG")[:700]),
        2: ("page.png", f"<!DOCTYPE html><html>{i}</html>".encode()),
        3: ("random.jpg", rng.bytes(2048)),
        4: ("vector.svg", f"<svg xmlns='http://www.w3.org/2000/svg' id='{i}'/>".encode()),
        5: ("bomb.png", png_claiming_size(100_000 + i, 100_000)),
        6: ("anim.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])),
        7: ("tiny.png", encoded(Image.new("RGB", (1, 1), (i % 256, 0, 0)), "PNG")),
        8: ("banner.png", encoded(Image.new("RGB", (10_000, 10), (i % 256, 0, 0)), "PNG")),
    }
    name, data = files[kind]
    return f"hostile {i:04d} {name}", data


def crop_file(i: int, photos: list[Image.Image], rng: np.random.Generator) -> tuple[str, bytes]:
    """A random 64-128 px crop of a packaged photo, as PNG or JPEG."""
    photo = photos[i % len(photos)]
    side = int(rng.integers(64, 129))
    span = int(rng.integers(side, min(photo.size) + 1))
    left = int(rng.integers(0, photo.width - span + 1))
    top = int(rng.integers(0, photo.height - span + 1))
    crop = photo.crop((left, top, left + span, top + span)).resize((side, side))
    if i % 2:
        return f"crop {i:04d}.jpg", encoded(crop, "JPEG", quality=90)
    return f"crop {i:04d}.png", encoded(crop, "PNG")


def make_inputs(n_files: int, hostile_share: float, seed: int) -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(seed)
    photos = [decode_image(data, name).image for name, data in demo_photos()]
    n_hostile = round(n_files * hostile_share)
    files = [hostile_file(i, rng) for i in range(n_hostile)]
    files += [crop_file(i, photos, rng) for i in range(n_files - n_hostile)]
    return files


def upload(store, files: list[tuple[str, bytes]], uploader: int) -> None:
    """Drop files straight into the bucket, as `aws s3 cp` or `mc cp` would: names chosen
    by people, in no order, with no timestamp (uploader 1 nests them in a folder)."""
    for name, data in files:
        key = f"{INBOX_PREFIX}{name}" if uploader == 0 else f"{INBOX_PREFIX}from b/{name}"
        store.put_bytes(key, data)


def run_batch_in_child(home: str, env: dict[str, str], partition: str, run_config: dict) -> None:
    """One batch run in its own process, to be killed with SIGKILL mid-way."""
    os.environ.update(env)
    settings = Settings.from_env(env, dotenv=None)
    defs = dg.Definitions.merge(build_definitions(settings), dg.Definitions(jobs=[LOAD_JOB]))
    instance = dg.DagsterInstance.from_config(home)
    defs.resolve_job_def(LOAD_JOB.name).execute_in_process(
        instance=instance, partition_key=partition, run_config=run_config
    )


def kill_mid_activation(
    home: str, env: dict[str, str], partition: str, run_config: dict, catalog: Catalog
) -> str:
    """Start the batch in a child process and SIGKILL it once its images are embedded and
    activation is under way (the OOM killer's way); says where it was killed."""
    child = multiprocessing.get_context("spawn").Process(
        target=run_batch_in_child, args=(home, env, partition, run_config)
    )
    child.start()
    deadline = time.monotonic() + 600
    while child.is_alive() and time.monotonic() < deadline:
        statuses = {i.status for i in catalog.images_in_batch(partition)}
        if statuses & {"embedded", "activated"}:
            time.sleep(0.5)
            break
        time.sleep(0.05)
    where = ", ".join(sorted({i.status for i in catalog.images_in_batch(partition)})) or "none"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    return f"killed batch {partition} (image statuses then: {where})"


def run_batches(
    defs: dg.Definitions,
    iterations: int,
    home: str,
    env: dict[str, str],
    uploaders: list[threading.Thread],
    catalog: Catalog,
) -> tuple[int, float]:
    """Sensor ticks while the uploaders write and until the inbox is drained; one run per
    batch, the first one killed mid-way and run again (as a run retry would)."""
    job = defs.resolve_job_def(LOAD_JOB.name)
    config = {"ops": {"activated_images": {"config": {"iterations": iterations}}}}
    n_batches, started, killed = 0, time.perf_counter(), False
    instance = dg.DagsterInstance.from_config(home)
    while True:
        uploading = any(u.is_alive() for u in uploaders)
        with dg.build_sensor_context(
            instance=instance, resources={"storage": defs.resources["storage"]}
        ) as context:
            result = inbox_sensor(context)
        if isinstance(result, dg.SkipReason):
            if not uploading:
                break
            time.sleep(0.5)
            continue
        instance.add_dynamic_partitions(
            INGEST_BATCHES.name, [r.partition_key for r in result.run_requests]
        )
        for request in result.run_requests:
            run_config = with_request_config(config, request)
            if not killed:
                print(
                    "  "
                    + kill_mid_activation(home, env, request.partition_key, run_config, catalog)
                )
                killed = True
            outcome = job.execute_in_process(
                instance=instance, partition_key=request.partition_key, run_config=run_config
            )
            assert outcome.success, f"batch {request.partition_key} failed"
            n_batches += 1
            print(f"  batch {n_batches} done at {time.perf_counter() - started:.0f} s", flush=True)
    return n_batches, time.perf_counter() - started


def audit(settings: Settings, n_files: int) -> dict[str, int]:
    """Every input is accounted for: indexed (and in the served index) or rejected."""
    catalog, store = Catalog.open(settings.database_url), open_object_store(settings)
    counts = {"indexed": 0, "rejected": 0, "other": 0, "rejected_without_reason": 0}
    indexed_ids: set[int] = set()
    for batch in catalog.batches(kind="ingest"):
        for image in catalog.images_in_batch(batch.id):
            counts["indexed" if image.status == "indexed" else "other"] += 1
            if image.status == "indexed":
                indexed_ids.add(image.id)
        for rejected in catalog.rejected_in_batch(batch.id):
            counts["rejected"] += 1
            counts["rejected_without_reason"] += not rejected.reason.strip()
    version = catalog.active_index_version()
    served = catalog.current_served_index(version.id)
    ids = faiss_index.stored_ids(faiss_index.deserialize_index(store.get_bytes(served.object_key)))
    shards = catalog.shards(version.id)
    distractors = sum(s.n_vectors for s in shards if s.batch_id == DISTRACTOR_BATCH)
    counts["served_ntotal"] = len(ids)
    counts["served_duplicates"] = len(ids) - len(set(ids.tolist()))
    counts["indexed_missing_from_served"] = len(indexed_ids - set(ids.tolist()))
    counts["activations"] = len(catalog.activations(index_version=version.id))
    assert counts["indexed"] + counts["rejected"] == n_files, counts
    assert counts["other"] == counts["rejected_without_reason"] == 0, counts
    assert counts["served_duplicates"] == counts["indexed_missing_from_served"] == 0, counts
    assert counts["served_ntotal"] == counts["indexed"] + distractors, counts
    assert counts["activations"] == counts["indexed"], counts
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--hostile-share", type=float, default=0.05)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="aindex-load-")
    with (
        SeaweedServer(Path(folder) / "s3") as server,
        scratch_database(prefix="aindex_load") as database_url,
    ):
        env = {
            "AINDEX_DATA_DIR": str(Path(folder) / "data"),
            "AINDEX_OBJECT_STORE": "s3",
            # A test stack has no collection of its own to train on.
            "AINDEX_PACKAGED_PHOTOS": "allow",
            "AINDEX_S3_ENDPOINT": server.endpoint,
            "AINDEX_S3_ACCESS_KEY": server.access_key,
            "AINDEX_S3_SECRET_KEY": server.secret_key,
            "AINDEX_S3_BUCKET": "aindex-load",
            "AINDEX_DATABASE_URL": database_url,
        }
        os.environ.update(env)  # the resources read the S3 keys as EnvVar references
        settings = Settings.from_env(env, dotenv=None)
        store = open_object_store(settings)
        store.ensure_bucket()
        defs = dg.Definitions.merge(build_definitions(settings), dg.Definitions(jobs=[LOAD_JOB]))

        started = time.perf_counter()
        bootstrap = dg.materialize(
            [defs.resolve_assets_def(key) for key in BOOTSTRAP_ASSETS],
            run_config=BOOTSTRAP_CONFIG,
            instance=dg.DagsterInstance.ephemeral(),
        )
        assert bootstrap.success
        bootstrap_s = time.perf_counter() - started

        files = make_inputs(args.files, args.hostile_share, args.seed)
        uploaders = [
            threading.Thread(target=upload, args=(store, files[which::2], which))
            for which in (0, 1)
        ]
        for uploader in uploaders:
            uploader.start()
        home = str(Path(folder) / "dagster_home")  # removed with the rest at the end
        Path(home).mkdir()
        catalog = Catalog.open(settings.database_url)
        n_batches, batches_s = run_batches(defs, args.iterations, home, env, uploaders, catalog)
        counts = audit(settings, len(files))
        assert not list(store.list(INBOX_PREFIX)), "the inbox holds exactly what is unclaimed"
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"files: {len(files)} ({counts['indexed']} indexed, {counts['rejected']} rejected)")
    print(f"bootstrap (training descriptors, index, distractors): {bootstrap_s:.1f} s")
    print(
        f"{n_batches} batches: {batches_s:.1f} s, {len(files) / batches_s:.2f} files/s, "
        f"{counts['indexed'] / batches_s:.2f} activated+indexed images/s"
    )
    print(f"served index: {counts['served_ntotal']} vectors, 0 duplicate and 0 missing ids")
    print(f"peak memory (max RSS of this process): {peak_mb:.0f} MB")
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
