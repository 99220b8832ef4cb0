"""Small, fast settings for running the asset graph in tests on real photos."""

from __future__ import annotations

from aindex_assets.lib.photos import small_demo_photos

# Small enough for a 2-core CI, large enough for a real IVF-PQ index.
FAST_RUN_CONFIG = {
    "ops": {
        "training_embeddings": {"config": {"crops": 400, "crop_size": 96}},
        "index_distractors": {"config": {"crops": 200, "crop_size": 96}},
        "trained_index": {"config": {"factory": "IVF8,PQ8x4"}},
        "activated_images": {"config": {"iterations": 6}},
        "robustness_report": {"config": {"max_negatives": 2}},
    }
}


def small_photos(count: int, offset: int = 0, side: int = 160) -> list[tuple[str, bytes]]:
    """Real photos shrunk so that activation stays fast."""
    return small_demo_photos(count, side, offset)
