"""Image quality (PSNR, SSIM, L-infinity) and retrieval metrics (ranks, R@k, muAP).

Conventions:
- Image metrics take uint8 arrays HxWx3 (or HxW) on the 0-255 scale. `psnr` of two
  identical images is `float("inf")`.
- `ssim` is the Gaussian-window SSIM of Wang et al. (2004): sigma 1.5, an 11x11 window,
  K1 = 0.01, K2 = 0.03, data range 255, computed per colour channel and averaged.
- A rank is 0-based (0 = first result); -1 means "not among the k results".
- `micro_average_precision` is the ISC 2021 / DISC21 micro-AP: all (query, reference,
  score) predictions pooled, sorted by decreasing score with ties ordered worst-first
  (negatives before positives), and AP = sum over positives of the precision at that
  point divided by the number of ground-truth pairs, retrieved or not.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity

MISSING_RANK = -1


def _same_shape_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a.astype(np.float64), b.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for 0-255 images; inf when identical."""
    x, y = _same_shape_pair(a, b)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Gaussian-window SSIM (Wang et al. 2004) over colour channels, 0-255 range.

    Needs at least 11 pixels per side (the window).
    """
    x, y = _same_shape_pair(a, b)
    if min(x.shape[:2]) < 11:
        raise ValueError(f"SSIM needs at least 11x11 pixels, got {x.shape[:2]}")
    return float(
        structural_similarity(
            x,
            y,
            data_range=255.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            channel_axis=-1 if x.ndim == 3 else None,
        )
    )


def linf(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute pixel difference."""
    x, y = _same_shape_pair(a, b)
    return float(np.max(np.abs(x - y))) if x.size else 0.0


def ranks_of_truth(result_ids: np.ndarray, truth_ids: np.ndarray) -> np.ndarray:
    """0-based position of each query's true id in its result row, -1 when absent.

    `result_ids` is (Q, k) as returned by a k-NN search (FAISS pads with -1);
    `truth_ids` is (Q,). If the true id appears twice, its first position counts.
    """
    results = np.asarray(result_ids)
    truth = np.asarray(truth_ids).reshape(-1)
    if results.ndim != 2 or results.shape[0] != truth.shape[0]:
        raise ValueError(f"need results (Q, k) and truth (Q,), got {results.shape}, {truth.shape}")
    hits = results == truth[:, None]
    found = hits.any(axis=1)
    return np.where(found, hits.argmax(axis=1), MISSING_RANK).astype(np.int64)


def recall_at_k(ranks: np.ndarray, k: int) -> float:
    """Share of queries whose true id is among the first k results."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return float("nan")
    return float(np.mean((ranks >= 0) & (ranks < k)))


def mean_reciprocal(ranks: np.ndarray) -> float:
    """Mean of 1/(rank+1), 0 for a missing truth: the paper's "1/(rank+1) averaged"."""
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return float("nan")
    return float(np.mean(np.where(ranks >= 0, 1.0 / (np.maximum(ranks, 0) + 1.0), 0.0)))


def _ranked_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by decreasing score; among equal scores negatives first (the worst case)."""
    order = np.lexsort((labels.astype(np.int8), -scores))
    return scores[order], labels[order]


def average_precision(
    scores: np.ndarray, labels: np.ndarray, n_positives: int | None = None
) -> float:
    """AP over scored predictions (higher = more confident), ties worst-first.

    `n_positives` is the number of true items in total, including those never scored;
    by default the number of positive labels.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    total = int(labels.sum()) if n_positives is None else int(n_positives)
    if total <= 0:
        return float("nan")
    _, ranked = _ranked_labels(scores, labels)
    precision_at_hits = np.cumsum(ranked)[ranked] / (np.flatnonzero(ranked) + 1.0)
    return float(precision_at_hits.sum() / total)


@dataclass(frozen=True)
class PrecisionRecall:
    """Precision and recall after each prediction, in decreasing score order."""

    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray

    def average_precision(self) -> float:
        recall_steps = np.diff(self.recall, prepend=0.0)
        return float(np.dot(recall_steps, self.precision))

    def recall_at_precision(self, min_precision: float = 0.9) -> float:
        """Largest recall reached at a precision of at least `min_precision` (0 if never)."""
        ok = self.precision >= min_precision
        return float(self.recall[ok].max()) if ok.any() else 0.0


def precision_recall_curve(
    query_ids: Sequence[int] | np.ndarray,
    ref_ids: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    ground_truth: Collection[tuple[int, int]],
    higher_is_better: bool = True,
    n_ground_truth: int | None = None,
) -> PrecisionRecall:
    """The ISC 2021 precision-recall curve of pooled (query, reference, score) predictions.

    A (query, reference) pair predicted more than once counts once, with its best score.
    Recall is divided by `n_ground_truth` (default: `len(ground_truth)`), so ground-truth
    pairs that were never retrieved lower it. For distances pass `higher_is_better=False`.
    """
    queries = np.asarray(query_ids, dtype=np.int64).reshape(-1)
    refs = np.asarray(ref_ids, dtype=np.int64).reshape(-1)
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not queries.shape == refs.shape == values.shape:
        raise ValueError("query_ids, ref_ids and scores must have the same length")
    total = len(ground_truth) if n_ground_truth is None else int(n_ground_truth)
    if total <= 0:
        raise ValueError("micro-AP needs at least one ground-truth pair")
    confidence = values if higher_is_better else -values
    queries, refs, confidence = _best_per_pair(queries, refs, confidence)
    truth = set(ground_truth)
    labels = np.fromiter(
        ((int(q), int(r)) in truth for q, r in zip(queries, refs, strict=True)),
        dtype=bool,
        count=len(queries),
    )
    ranked_scores, ranked = _ranked_labels(confidence, labels)
    hits = np.cumsum(ranked)
    precision = hits / np.arange(1.0, len(ranked) + 1.0)
    thresholds = ranked_scores if higher_is_better else -ranked_scores
    return PrecisionRecall(precision=precision, recall=hits / total, thresholds=thresholds)


def _best_per_pair(
    queries: np.ndarray, refs: np.ndarray, confidence: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort((-confidence, refs, queries))
    queries, refs, confidence = queries[order], refs[order], confidence[order]
    first = np.ones(len(queries), dtype=bool)
    first[1:] = (queries[1:] != queries[:-1]) | (refs[1:] != refs[:-1])
    return queries[first], refs[first], confidence[first]


def micro_average_precision(
    query_ids: Sequence[int] | np.ndarray,
    ref_ids: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    ground_truth: Collection[tuple[int, int]],
    higher_is_better: bool = True,
    n_ground_truth: int | None = None,
) -> float:
    """ISC 2021 micro average precision (muAP); see `precision_recall_curve`."""
    curve = precision_recall_curve(
        query_ids, ref_ids, scores, ground_truth, higher_is_better, n_ground_truth
    )
    return curve.average_precision()
