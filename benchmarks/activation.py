"""Activation benchmark: speed against the extractor-bound floor, quality, and recall vs passive.

Runs on the packaged real photos (lib.photos): the photos to ingest are activated, crops of
the held-out photos train the index and serve as distractors. Side by side, in the same run:
- this project's engine (`lib.activation.activate`, project defaults, competitors from the
  distractor database);
- a straightforward per-image implementation of METHOD.md, the way the authors' script works
  (one image at a time, heatmap recomputed every iteration at full resolution, paper
  parameters, target = reconstruction, no margin, PSNR logged every iteration);
- the engine again, its scaling set so that its mean PSNR matches the per-image METHOD's
  (PSNR moves by -20 log10 of the scaling ratio), to compare the recall gains at equal quality.

    .venv/bin/python benchmarks/activation.py            # default, < 10 min on 2 cores
    .venv/bin/python benchmarks/activation.py --images 8 --distractors 1000 --train 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import resource
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib import photos
from aindex_assets.lib.activation import ActivationParams, activate
from aindex_assets.lib.edits import PAPER_EDITS
from aindex_assets.lib.evaluation import evaluate_robustness
from aindex_assets.lib.extractors import IMAGENET_MEAN, IMAGENET_STD, load_extractor
from aindex_assets.lib.images import pil_to_tensor
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
        "--antialias",
        choices=("off", "activation", "everywhere"),
        default="off",
        help="antialiased resize: nowhere, in the activation's optimization only, or as the "
        "extractor's preprocessing (index, activation and queries)",
    )
    args = parser.parse_args()
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

    tables = {}
    # One evaluation per image set (a set alone is evaluated as the "passive" variant).
    for name, images in {"passive": queried, **released}.items():
        result = evaluate_robustness(
            images, None, ids.tolist(), extractor.embed_images, search, edits, k=10
        )
        tables[name] = recall_table(result, "passive")
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
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
