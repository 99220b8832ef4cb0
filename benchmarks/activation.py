"""Activation benchmark: speed against the extractor-bound floor, quality, and recall vs passive.

Runs on the packaged real photos (lib.photos): the photos to ingest are activated, crops of
the held-out photos train the index and serve as distractors. Side by side, in the same run:
- this project's engine (`lib.activation.activate`, project defaults, competitors from the
  distractor database);
- a straightforward per-image implementation of METHOD.md, the way the authors' script works
  (one image at a time, heatmap recomputed every iteration at full resolution, paper
  parameters, target = reconstruction, no margin, PSNR logged every iteration);
- the engine again, its scaling set so that its mean PSNR matches the per-image METHOD's
  (PSNR moves by -20 log10 of the scaling ratio), to compare the recall gains at equal quality;
- with `--release-formats`, the engine's releases encoded in each format and decoded back, as
  a reader gets them: PSNR after encoding, recall@1 of the edits against the originals
  encoded the same way (passive), and bytes per pixel against the source JPEGs'.

    .venv/bin/python benchmarks/activation.py            # default, < 10 min on 2 cores
    .venv/bin/python benchmarks/activation.py --images 8 --distractors 1000 --train 1000
    .venv/bin/python benchmarks/activation.py --release-formats png,jpeg:95,webp:95
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import resource
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib import photos
from aindex_assets.lib.activation import ActivationParams, ActivationResult, activate
from aindex_assets.lib.edits import PAPER_EDITS
from aindex_assets.lib.evaluation import evaluate_robustness
from aindex_assets.lib.extractors import IMAGENET_MEAN, IMAGENET_STD, load_extractor
from aindex_assets.lib.images import decode_release, encode_release, pil_to_tensor, release_format
from aindex_assets.lib.metrics import psnr, ssim
from aindex_assets.lib.perceptual import jnd_heatmap


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def decode(data: bytes, max_side: int) -> Image.Image:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    scale = max_side / max(image.size)
    if scale < 1:
        image = image.resize(
            (round(image.width * scale), round(image.height * scale)), Image.BICUBIC
        )
    return image


def floor_seconds(extractor, batch: int, iterations: int) -> float:
    """10 x (forward + input-gradient backward) of `batch` images at input_size."""
    pixels = torch.rand(batch, 3, extractor.input_size, extractor.input_size)
    pixels.requires_grad_(True)
    extractor.embed_resized(pixels).sum().backward()  # warm-up
    start = time.perf_counter()
    for _ in range(iterations):
        pixels.grad = None
        extractor.embed_resized(pixels).sum().backward()
    return time.perf_counter() - start


def per_image_reference(
    image: Image.Image, extractor, target: np.ndarray, p: ActivationParams
) -> np.ndarray:
    """METHOD.md, one image at a time, as the authors' script does it."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    alpha = torch.tensor(p.alpha).view(1, 3, 1, 1)
    x0 = (pil_to_tensor(image)[None] - mean) / std
    t = torch.from_numpy(target)[None]
    delta = (1e-6 * torch.randn(x0.shape)).requires_grad_(True)
    optimizer = torch.optim.Adam([delta], lr=p.learning_rate)
    for _ in range(p.iterations):
        heat = jnd_heatmap((x0 * std + mean).clamp(0, 1))  # recomputed each iteration
        x = x0 + p.scaling * heat * torch.tanh(delta) * alpha
        feature = extractor.embed(x * std + mean)
        loss = -F.cosine_similarity(feature, t).mean() * p.lambda_feature
        loss = loss + p.lambda_image * F.mse_loss(x, x0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # the authors log image quality every iteration
            out = ((x * std + mean).clamp(0, 1) * 255).round()
            psnr(
                out[0].permute(1, 2, 0).numpy(), (x0 * std + mean)[0].permute(1, 2, 0).numpy() * 255
            )
    with torch.no_grad():
        x = x0 + p.scaling * jnd_heatmap((x0 * std + mean).clamp(0, 1)) * torch.tanh(delta) * alpha
        pixels = (x * std + mean).clamp(0, 1)[0]
    return pixels.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def recall_table(result, variant: str) -> dict[str, float]:
    return {row["edit"]: row["recall_at_1"] for row in result.rows if row["variant"] == variant}


def parse_release_formats(text: str) -> list[tuple[str, int]]:
    """`png,jpeg:95,webp:90` -> [(format, quality)], quality 95 when unsaid."""
    formats = []
    for item in filter(None, text.split(",")):
        name, _, quality = item.partition(":")
        formats.append((release_format(name).value, int(quality or 95)))
    return formats


def source_bytes_per_pixel(to_ingest: list[tuple[str, bytes]]) -> list[float | None]:
    """Bytes per pixel of each source file; None for a source that is not a JPEG."""
    rates: list[float | None] = []
    for _, data in to_ingest:
        with Image.open(io.BytesIO(data)) as image:
            jpeg = image.format == "JPEG"
            rates.append(len(data) / (image.width * image.height) if jpeg else None)
    return rates


def encoded(
    images: list[np.ndarray], name: str, quality: int
) -> tuple[list[np.ndarray], list[int]]:
    """The images as a reader decodes them from their files in this format, and the sizes."""
    files = [encode_release(pixels, name, quality) for pixels in images]
    return [decode_release(f) for f in files], [len(f) for f in files]


def size_ratio(
    sizes: list[int], decoded: list[np.ndarray], sources_bpp: list[float | None]
) -> float:
    """Total bytes over what the source JPEGs would take at the released sizes (their file
    sizes when the photos are not downscaled); images from non-JPEG sources left out."""
    pairs = [
        (size, image.shape[0] * image.shape[1] * bpp)
        for size, image, bpp in zip(sizes, decoded, sources_bpp, strict=True)
        if bpp
    ]
    return sum(b for b, _ in pairs) / sum(s for _, s in pairs) if pairs else float("nan")


def release_format_rows(
    formats: list[tuple[str, int]],
    queried: list[Image.Image],
    results: list[ActivationResult],
    sources_bpp: list[float | None],
    recall: Callable[[list[Image.Image]], dict[str, float]],
) -> None:
    """Per format: the decoded releases' PSNR, recall@1 of the originals encoded the same way
    (passive) and of the releases (active), and bytes against the source JPEGs'."""
    originals = [np.asarray(image) for image in queried]
    print(
        "\nrelease | KiB/image | x source JPEG | PSNR (dB) | none | avg passive | avg active | gain"
    )
    for name, quality in formats:
        decoded, sizes = encoded([r.image for r in results], name, quality)
        active = recall([Image.fromarray(d) for d in decoded])
        passive = recall([Image.fromarray(p) for p in encoded(originals, name, quality)[0]])
        psnrs = np.array([psnr(o, d) for o, d in zip(originals, decoded, strict=True)])
        gain = np.mean(list(active.values())) - np.mean(list(passive.values()))
        print(
            f"{name if name == 'png' else f'{name} q{quality}'} | {np.mean(sizes) / 1024:.0f} | "
            f"{size_ratio(sizes, decoded, sources_bpp):.2f} | "
            f"{psnrs.mean():.1f} +- {psnrs.std():.1f} (min {psnrs.min():.1f}) | "
            f"{passive['none']:.2f} -> {active['none']:.2f} | "
            f"{np.mean(list(passive.values())):.3f} | {np.mean(list(active.values())):.3f} | "
            f"{gain:+.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--max-side", type=int, default=1024)
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--distractors", type=int, default=3000)
    parser.add_argument("--factory", default="IVF64,PQ8x8")
    parser.add_argument("--nprobe", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--extractor", default="efficientnet_lite0", help="extractor spec (see lib/extractors.py)"
    )
    parser.add_argument("--scaling", type=float, help="override the engine's scaling")
    parser.add_argument("--iterations", type=int, help="override the engine's iterations")
    parser.add_argument("--edited-views", type=int, help="override the engine's edited views")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--no-matched", action="store_true", help="skip the engine run at the METHOD's PSNR"
    )
    parser.add_argument("--edits", default="", help="comma-separated subset of the paper's edits")
    parser.add_argument(
        "--release-formats",
        default="",
        help="formats to release the engine's images in, e.g. png,jpeg:95,webp:95 (quality "
        "after the colon, 95 when unsaid): PSNR, recall@1 and size after encoding",
    )
    parser.add_argument(
        "--antialias",
        choices=("off", "activation", "everywhere"),
        default="off",
        help="antialiased resize: nowhere, in the activation's optimization only, or as the "
        "extractor's preprocessing (index, activation and queries)",
    )
    args = parser.parse_args()
    formats = parse_release_formats(args.release_formats)
    torch.manual_seed(0)

    extractor = load_extractor(
        args.extractor, device=args.device, antialias=args.antialias == "everywhere"
    )
    to_ingest, held_out = photos.split_demo_photos()
    queried = [decode(data, args.max_side) for _, data in to_ingest[: args.images]]
    sources = [decode(data, 1024) for _, data in held_out]
    start = time.perf_counter()
    crops = photos.random_crops(sources, args.train + args.distractors, 256, seed=0)
    vectors = extractor.embed_images(crops, batch_size=64)
    print(f"embedded {len(crops)} crops in {time.perf_counter() - start:.1f} s")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = faiss_index.train_index(args.factory, vectors[: args.train])
    database = faiss_index.empty_shard(trained)
    faiss_index.add_with_ids(database, vectors[args.train :], 2**62 + np.arange(args.distractors))
    features = extractor.embed_images(queried)
    ids = np.arange(len(queried), dtype=np.int64)
    served = faiss_index.merge_shards(trained, [database])
    faiss_index.add_with_ids(served, features, ids)

    params = ActivationParams(antialias=True if args.antialias == "activation" else None)
    overrides = {
        "scaling": args.scaling,
        "iterations": args.iterations,
        "edited_views": args.edited_views,
    }
    params = dataclasses.replace(params, **{k: v for k, v in overrides.items() if v is not None})
    batch = min(params.batch_size, len(queried))
    floors = [floor_seconds(extractor, batch, params.iterations) * len(queried) / batch]
    start = time.perf_counter()
    results = activate(queried, extractor, trained, params, features, database=database)
    engine_s = time.perf_counter() - start
    # The floor is measured just before and just after the engine: the machine's load drifts.
    floors.append(floor_seconds(extractor, batch, params.iterations) * len(queried) / batch)
    floor = float(np.mean(floors))
    print(
        f"engine: {len(queried) / engine_s:.2f} images/s, {engine_s:.1f} s; "
        f"floor {floor:.1f} s (before {floors[0]:.1f}, after {floors[1]:.1f}); "
        f"ratio to floor {engine_s / floor:.2f}; peak RSS {peak_rss_mib():.0f} MiB"
    )
    released = {"engine": [Image.fromarray(r.image) for r in results]}
    quality = {"engine": [(r.psnr, r.ssim) for r in results]}

    if not args.no_baseline:
        paper = ActivationParams.paper()
        targets = faiss_index.activation_targets(trained, features)
        start = time.perf_counter()
        outputs = [
            per_image_reference(im, extractor, t, paper)
            for im, t in zip(queried, targets, strict=True)
        ]
        baseline_s = time.perf_counter() - start
        print(
            f"per-image METHOD baseline: {len(queried) / baseline_s:.2f} images/s, "
            f"{baseline_s:.1f} s; "
            f"ratio to floor {baseline_s / floor:.2f}; engine speed-up x{baseline_s / engine_s:.2f}"
        )
        released["baseline"] = [Image.fromarray(o) for o in outputs]
        quality["baseline"] = [
            (psnr(np.asarray(a), o), ssim(np.asarray(a), o))
            for a, o in zip(queried, outputs, strict=True)
        ]
        if not args.no_matched:
            gap_db = np.mean([p for p, _ in quality["engine"]]) - np.mean(
                [p for p, _ in quality["baseline"]]
            )
            matched = dataclasses.replace(params, scaling=params.scaling * 10 ** (gap_db / 20))
            again = activate(queried, extractor, trained, matched, features, database=database)
            print(f"engine at the METHOD's PSNR: scaling {matched.scaling:.2f}")
            released["engine@METHOD PSNR"] = [Image.fromarray(r.image) for r in again]
            quality["engine@METHOD PSNR"] = [(r.psnr, r.ssim) for r in again]

    edits = {k: v for k, v in PAPER_EDITS.items() if not args.edits or k in args.edits.split(",")}

    def search(queries: np.ndarray, k: int):
        return faiss_index.search(served, queries, k=k, nprobe=args.nprobe)

    def recall(images: list[Image.Image]) -> dict[str, float]:
        # An image set evaluated alone is evaluated as the "passive" variant.
        result = evaluate_robustness(
            images, None, ids.tolist(), extractor.embed_images, search, edits, k=10
        )
        return recall_table(result, "passive")

    tables = {name: recall(images) for name, images in {"passive": queried, **released}.items()}
    names = list(edits)
    print("\nrecall@1 | " + " | ".join(names) + " | avg")
    for variant, table in tables.items():
        row = [table[n] for n in names]
        print(f"{variant} | " + " | ".join(f"{v:.2f}" for v in row) + f" | {np.mean(row):.3f}")
    for variant, pairs in quality.items():
        p, s = np.array(pairs).T
        print(
            f"{variant}: PSNR {p.mean():.1f} +- {p.std():.1f} dB (min {p.min():.1f}), "
            f"SSIM {s.mean():.4f} +- {s.std():.4f}"
        )
    if formats:
        sources_bpp = source_bytes_per_pixel(to_ingest[: args.images])
        release_format_rows(formats, queried, results, sources_bpp, recall)
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
