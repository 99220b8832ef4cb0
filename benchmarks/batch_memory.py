"""Peak memory of one batch's activation: the whole batch at once vs pixel-budgeted chunks.

Sets up a local store and a SQLite catalog with one ingested, embedded batch of large
synthetic photos (real photos upscaled to `--width` x `--height`, with a little grain so
that the PNGs are photo-like) and a trained index, then activates the batch twice, each
time in a fresh child process on a fresh copy of that state (embedded):

- `whole`: what `services.activation.activate_batch` did before chunking, reproduced here:
  every original decoded, one `lib.activation.activate` call on the whole batch, then
  every release stored and recorded;
- `chunked`: `services.activation.activate_batch` as it is now: load, activate, store and
  record one chunk of at most `max_pixels_per_batch` pixels at a time.

Each child prints its resident memory before activation (torch, the extractor and the
index loaded) and its peak (`ru_maxrss`) after it. For comparison, a third child measures
the batch's `image_embeddings` step (`services.embeddings.embed_batch`, which this change
leaves as it was: it still decodes the whole batch at once). `--flat` adds the case of the issue:
one flat (single-colour) 7000 x 7000 PNG, one image that no chunking can split.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batch_memory.py            # 4 x 12 Mpx
    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/batch_memory.py --flat
    .venv/bin/python benchmarks/batch_memory.py --images 8 --iterations 10
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from aindex_assets.lib.activation import ActivationParams
from aindex_assets.lib.extractors import load_extractor
from aindex_assets.lib.images import encode_png
from aindex_assets.lib.photos import split_demo_photos
from aindex_assets.services.activation import activate_batch, record_release
from aindex_assets.services.embeddings import embed_batch
from aindex_assets.services.index import (
    register_extractor,
    train_version,
)
from aindex_assets.services.ingest import ingest_batch
from aindex_assets.storage.arrays import encode_descriptors
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.inbox import BatchManifest
from aindex_assets.storage.keys import training_embeddings_key
from aindex_assets.storage.objectstore import LocalObjectStore
from aindex_assets_tests.whole_batch import activate_whole_batch

BATCH = "bench-memory"
EXTRACTOR = "efficientnet_lite0"
FACTORY = "IVF16,PQ8x8"
MODES = ("embed", "whole", "chunked")


def rss_mb() -> float:
    """Current resident set size (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_photos(count: int, width: int, height: int, seed: int = 0) -> list[bytes]:
    """Real photos upscaled to width x height with a little grain, as PNG."""
    to_ingest, _ = split_demo_photos()
    rng = np.random.default_rng(seed)
    out = []
    for _, data in to_ingest[:count]:
        photo = Image.open(io.BytesIO(data)).convert("RGB").resize((width, height), Image.BICUBIC)
        pixels = np.asarray(photo, dtype=np.int16) + rng.integers(-2, 3, (height, width, 3))
        out.append(encode_png(np.clip(pixels, 0, 255).astype(np.uint8)))
    return out


def flat_photo(side: int) -> bytes:
    return encode_png(np.full((side, side, 3), 128, np.uint8))


def set_up(root: Path, photos: list[bytes]) -> None:
    """One ingested batch and a trained index, in a local store + SQLite catalog."""
    store, catalog = LocalObjectStore(root / "objects"), Catalog.open(f"sqlite:///{root}/c.db")
    extractor = load_extractor(EXTRACTOR, device="cpu")
    rng = np.random.default_rng(0)
    training = rng.standard_normal((10_000, extractor.dim)).astype(np.float32)
    training /= np.linalg.norm(training, axis=1, keepdims=True)
    store.put_bytes(
        training_embeddings_key(extractor.identity),
        encode_descriptors(np.arange(len(training)), training),
    )
    register_extractor(catalog, extractor, EXTRACTOR)
    train_version(store, catalog, extractor, FACTORY, "l2")
    keys = []
    for i, data in enumerate(photos):
        key = f"uploads/photo-{i}.png"
        store.put_bytes(key, data, content_type="image/png")
        keys.append(key)
    manifest = BatchManifest(BATCH, "ingest", tuple(keys), "2026-01-01T00:00:00Z")
    outcome = ingest_batch(store, catalog, manifest)
    assert len(outcome.registered) == len(photos), outcome


def release_whole_batch(store, catalog, extractor, params: ActivationParams) -> None:
    """`activate_batch` before chunking (kept here to measure it): the whole batch at once."""
    version, released = activate_whole_batch(store, catalog, extractor, BATCH, params)
    for image, result in released:
        record_release(store, catalog, version.id, extractor, params, image, result)
    catalog.set_status([image.id for image, _ in released], "activated")


def child(mode: str, root: Path, iterations: int) -> None:
    """Runs in a fresh process: prints one JSON line with the figures."""
    store, catalog = LocalObjectStore(root / "objects"), Catalog.open(f"sqlite:///{root}/c.db")
    extractor = load_extractor(EXTRACTOR, device="cpu")
    params = dataclasses.replace(ActivationParams(), iterations=iterations)
    images = catalog.images_in_batch(BATCH)
    before_rss, before_peak = rss_mb(), peak_mb()
    start = time.perf_counter()
    if mode == "embed":
        embed_batch(store, catalog, extractor, BATCH)
    elif mode == "whole":
        release_whole_batch(store, catalog, extractor, params)
    else:
        activate_batch(store, catalog, extractor, BATCH, params)
    seconds = time.perf_counter() - start
    activations = catalog.activations(batch_id=BATCH)
    print(
        json.dumps(
            {
                "mode": mode,
                "images": len(images),
                "megapixels": round(sum(i.width * i.height for i in images) / 1e6, 1),
                "activated": len(activations),
                "psnr": [round(a.psnr, 2) for a in activations],
                "rss_before_mb": round(before_rss),
                "peak_before_mb": round(before_peak),
                "peak_mb": round(peak_mb()),
                "seconds": round(seconds, 1),
            }
        )
    )


def measure(base: Path, work: Path, iterations: int) -> list[dict]:
    """One child per mode; the embedding child's copy (now embedded) is the base of the others."""
    rows = []
    for mode in MODES:
        copy = work / mode
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(base, copy)
        command = [sys.executable, __file__, "--child", mode, "--root", str(copy)]
        output = subprocess.run(
            [*command, "--iterations", str(iterations)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        if mode == "embed":
            shutil.rmtree(base)
            copy.rename(base)
        else:
            shutil.rmtree(copy, ignore_errors=True)
    return rows


def table(title: str, rows: list[dict]) -> str:
    lines = [
        f"{title}",
        "| mode | images | Mpx | RSS before (MB) | peak RSS (MB) | peak - before (MB) | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['images']} | {r['megapixels']} | {r['rss_before_mb']} | "
            f"{r['peak_mb']} | {r['peak_mb'] - r['rss_before_mb']} | {r['seconds']} |"
        )
    psnrs = {r["mode"]: r["psnr"] for r in rows if r["mode"] != "embed"}
    lines.append(f"PSNR per image: {psnrs}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--flat", action="store_true", help="also one flat 7000 x 7000 PNG")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, args.iterations)
        return
    with tempfile.TemporaryDirectory(prefix="aindex-bench-memory-") as tmp:
        work = Path(tmp)
        cases = [
            (
                f"{args.images} photos of {args.width} x {args.height} "
                f"({args.width * args.height / 1e6:.0f} Mpx each)",
                lambda: synthetic_photos(args.images, args.width, args.height),
            )
        ]
        if args.flat:
            cases.append(("one flat 7000 x 7000 PNG (49 Mpx)", lambda: [flat_photo(7000)]))
        for title, make in cases:
            base = work / "base"
            shutil.rmtree(base, ignore_errors=True)
            set_up(base, make())
            print(table(title, measure(base, work, args.iterations)), flush=True)


if __name__ == "__main__":
    main()
