#!/usr/bin/env bash
# GPU check: activation and FAISS training/search throughput on CUDA. Installs nothing.
# Usage: bash benchmarks/gpu_check.sh   (from the repository root, with the project's venv active
# or PYTHON pointing at its interpreter)
set -euo pipefail
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3

"$PYTHON" - <<'PY'
import time
import warnings

import numpy as np
import torch

if not torch.cuda.is_available():
    print("no CUDA device visible to torch: nothing to check on GPU (CPU figures: benchmarks/activation.py)")
    raise SystemExit(0)

import faiss

from aindex_assets.lib import index as faiss_index
from aindex_assets.lib.activation import ActivationParams, activate
from aindex_assets.lib.extractors import load_extractor

print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0)}, faiss {faiss.__version__}, "
      f"faiss GPUs: {faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0}")
extractor = load_extractor("efficientnet_lite0", device="cuda")
rng = np.random.default_rng(0)
x = rng.standard_normal((20000, extractor.dim)).astype(np.float32)
x /= np.linalg.norm(x, axis=1, keepdims=True)

start = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    trained = faiss_index.train_index("IVF256,PQ16x8", x[:10000])
print(f"faiss train IVF256,PQ16x8 on 10k x {extractor.dim} (CPU index): {time.perf_counter() - start:.1f} s")
database = faiss_index.empty_shard(trained)
faiss_index.add_with_ids(database, x[10000:], np.arange(10000, dtype=np.int64))
gpu = faiss_index.to_gpu(database)
for name, index in (("cpu", database), ("gpu" if gpu is not database else "cpu (no faiss GPU)", gpu)):
    start = time.perf_counter()
    faiss_index.search(index, x[:10000], k=100, nprobe=8)
    print(f"faiss search {name}: {10000 / (time.perf_counter() - start):.0f} queries/s (k=100, nprobe=8)")

images = [torch.rand(3, 720 + 8 * i, 1080) for i in range(32)]
features = torch.cat([extractor.embed(im[None]) for im in images]).detach().cpu().numpy()
params = ActivationParams(batch_size=16)
activate(images[:2], extractor, trained, params, features[:2], database=database)  # warm-up
torch.cuda.synchronize()
torch.cuda.reset_peak_memory_stats()
start = time.perf_counter()
results = activate(images, extractor, trained, params, features, database=database)
torch.cuda.synchronize()
elapsed = time.perf_counter() - start
pixels = torch.rand(16, 3, extractor.input_size, extractor.input_size, device="cuda", requires_grad=True)
torch.cuda.synchronize()
start = time.perf_counter()
for _ in range(params.iterations * 2):
    pixels.grad = None
    extractor.embed_resized(pixels).sum().backward()
torch.cuda.synchronize()
floor = time.perf_counter() - start
print(f"activation: {len(images) / elapsed:.1f} images/s (1080p, batch 16), "
      f"ratio to floor {elapsed / floor:.2f}, peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB, "
      f"mean PSNR {np.mean([r.psnr for r in results]):.1f} dB")
PY
