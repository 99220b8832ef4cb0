"""Copy detection decisions: the top catalog match of a query and a calibrated threshold.

A query is searched in the served index; its *top match* is the best-scored result among
the top k whose id is a catalog image (ids at or above `distractor_base` stand for the
rest of the world's images, never an original: a query whose top k holds only those has
no catalog match and is not a copy). `reranked_top_match` scores the catalog candidates
exactly against their original descriptors, `top_catalog_match` keeps the index's own
scores. The query is declared a copy when the top match's score passes a threshold: a
distance at or below it (L2, lower is better) or a similarity at or above it (inner
product, higher is better).

The threshold is calibrated on two sets of queries whose truth is known: matching
queries (edited copies of indexed images, each with the id of its original) and
non-matching queries (edited images known not to be in the index). Every query with a
catalog match contributes one prediction (query, top match id, score); the predictions
are pooled into the ISC 2021 precision-recall curve of `lib.metrics` (a matching query
whose top match is the wrong image counts as a false positive; matching queries that
found nothing lower recall). The threshold is the loosest score at which precision on
this pool is still at least the target (default 90%), placed halfway to the next,
rejected, prediction. When no score reaches the target (the very first prediction is a
false one), or there are no matching queries, it falls back to a conservative threshold
just inside the closest non-matching score, so that no calibration non-match would be
declared a copy, and says so in `note`.

Precision depends on the mix: it is measured on this pool, whose sizes are reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from aindex_assets.lib.metrics import precision_recall_curve

DEFAULT_TARGET_PRECISION = 0.9


@dataclass(frozen=True)
class TopMatch:
    """The best catalog result of one query: its 0-based rank in the top k, id and score."""

    rank: int
    image_id: int
    score: float


@dataclass(frozen=True)
class ThresholdCalibration:
    """A copy / not-a-copy threshold and how it was obtained.

    `reached` is False when the target precision could not be reached and the
    conservative fallback was used; `precision` and `recall` are measured on the
    calibration pool at the chosen threshold (None when nothing was accepted).
    """

    threshold: float
    higher_is_better: bool
    target_precision: float
    reached: bool
    precision: float | None
    recall: float | None
    n_matching: int
    n_non_matching: int
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_catalog_match(scores: np.ndarray, ids: np.ndarray, distractor_base: int) -> TopMatch | None:
    """The first result of one query's (score, id) row that is a catalog image, or None.

    FAISS returns results best first, padded with id -1; ids at or above
    `distractor_base` are distractors.
    """
    for rank, (score, found) in enumerate(zip(scores.tolist(), ids.tolist(), strict=True)):
        if 0 <= found < distractor_base:
            return TopMatch(rank=rank, image_id=int(found), score=float(score))
    return None


def reranked_top_match(
    query: np.ndarray,
    ids: np.ndarray,
    originals: Mapping[int, np.ndarray],
    distractor_base: int,
    higher_is_better: bool = False,
) -> TopMatch | None:
    """The catalog candidate among one query's top-k ids whose ORIGINAL descriptor is closest.

    The index finds the candidates (activation is what keeps an edited copy among them);
    the score is then exact, between the query's descriptor and the candidate's stored
    original descriptor: squared L2 (lower is better) or inner product (higher is
    better). Compressed codes (PQ) give distances too coarse to tell a copy from an
    unrelated image with one threshold. Candidates without a known descriptor are skipped.
    """
    best: TopMatch | None = None
    for rank, found in enumerate(ids.tolist()):
        if not 0 <= found < distractor_base or found not in originals:
            continue
        original = originals[found]
        if higher_is_better:
            score = float(np.dot(query, original))
        else:
            score = float(np.sum((query - original) ** 2))
        if best is None or (score > best.score if higher_is_better else score < best.score):
            best = TopMatch(rank=rank, image_id=int(found), score=score)
    return best


def passes(score: float | None, threshold: float, higher_is_better: bool) -> bool:
    """Whether a top-match score declares a copy (no match never does)."""
    if score is None:
        return False
    return score >= threshold if higher_is_better else score <= threshold


def calibrate_threshold(
    matching: Sequence[tuple[int, TopMatch | None]],
    non_matching: Sequence[TopMatch | None],
    higher_is_better: bool = False,
    target_precision: float = DEFAULT_TARGET_PRECISION,
) -> ThresholdCalibration:
    """The loosest threshold whose pooled precision is at least `target_precision`.

    `matching` holds (true image id, top match or None) per matching query,
    `non_matching` the top match (or None) per non-matching query. See the module
    docstring for the method and the fallback.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must be in (0, 1], got {target_precision}")
    sizes = {"n_matching": len(matching), "n_non_matching": len(non_matching)}
    common = {"higher_is_better": higher_is_better, "target_precision": target_precision, **sizes}
    queries, refs, scores, truth = _pool(matching, non_matching)
    if not matching:
        return _fallback(scores, common, "no matching queries (nothing indexed to calibrate on)")
    if len(scores) == 0:
        return _fallback(scores, common, "no query found any catalog image")
    curve = precision_recall_curve(
        queries, refs, scores, truth, higher_is_better, n_ground_truth=len(matching)
    )
    good = np.flatnonzero(curve.precision >= target_precision)
    if len(good) == 0:
        wrong = curve.thresholds[0]
        return _fallback(
            np.array([wrong]),
            common,
            f"target precision {target_precision:.0%} unreachable: the best-scored prediction "
            "is a non-match",
        )
    last = int(good[-1])
    threshold = float(curve.thresholds[last])
    if last + 1 < len(curve.thresholds):
        threshold = (threshold + float(curve.thresholds[last + 1])) / 2.0
    return ThresholdCalibration(
        threshold=threshold,
        reached=True,
        precision=float(curve.precision[last]),
        recall=float(curve.recall[last]),
        note=(
            f"precision {curve.precision[last]:.3f} >= {target_precision:.2f} at recall "
            f"{curve.recall[last]:.3f} on {len(matching)} matching and {len(non_matching)} "
            "non-matching queries"
        ),
        **common,
    )


def _pool(
    matching: Sequence[tuple[int, TopMatch | None]], non_matching: Sequence[TopMatch | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[tuple[int, int]]]:
    """(query ids, reference ids, scores) of every prediction, and the ground-truth pairs."""
    queries, refs, scores = [], [], []
    matches = [match for _, match in matching] + list(non_matching)
    for query, match in enumerate(matches):
        if match is not None:
            queries.append(query)
            refs.append(match.image_id)
            scores.append(match.score)
    truth = {(query, int(image_id)) for query, (image_id, _) in enumerate(matching)}
    return np.array(queries, np.int64), np.array(refs, np.int64), np.array(scores), truth


def _fallback(
    false_scores: np.ndarray, common: dict[str, Any], reason: str
) -> ThresholdCalibration:
    """Just inside the closest non-matching score; with none, only exact matches pass."""
    higher = common["higher_is_better"]
    if len(false_scores):
        closest = float(np.max(false_scores) if higher else np.min(false_scores))
        threshold = float(np.nextafter(closest, np.inf if higher else -np.inf))
        where = f"just inside the closest non-matching score {closest:.4g}"
    else:
        threshold = 1.0 if higher else 0.0
        where = "at an exact match"
    return ThresholdCalibration(
        threshold=threshold,
        reached=False,
        precision=None,
        recall=None,
        note=f"{reason}: conservative threshold {where}",
        **common,
    )


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold set for a false-positive rate on non-matching queries, and what it gives.

    `fpr` is the share of non-matching queries declared copies at `threshold`, `tpr` the
    share of matching queries whose top match is their own original and passes. With fewer
    than 1/`target_fpr` non-matching queries the rate cannot be resolved: `resolved` is then
    False and the threshold lets no calibration non-match through.
    """

    threshold: float
    target_fpr: float
    fpr: float
    tpr: float
    n_matching: int
    n_non_matching: int
    resolved: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def threshold_for_fpr(
    non_matching: Sequence[TopMatch | None], target_fpr: float, higher_is_better: bool = False
) -> float:
    """The loosest threshold that declares at most `target_fpr` of the non-matches copies.

    It sits halfway between the last allowed non-matching score and the first refused one,
    so that ties never let one more through.
    """
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target false-positive rate must be in [0, 1), got {target_fpr}")
    scores = np.array([m.score for m in non_matching if m is not None], dtype=np.float64)
    best_first = np.sort(-scores if higher_is_better else scores)
    allowed = int(np.floor(target_fpr * len(non_matching) + 1e-9))
    if allowed >= len(best_first):  # fewer non-matches found anything than may pass
        return -np.inf if higher_is_better else np.inf
    refused = best_first[allowed]
    edge = (refused + best_first[allowed - 1]) / 2.0 if allowed else refused
    if edge == refused:  # nothing between them: stay just inside the refused score
        edge = float(np.nextafter(refused, -np.inf))
    return float(-edge if higher_is_better else edge)


def operating_point(
    matching: Sequence[tuple[int, TopMatch | None]],
    non_matching: Sequence[TopMatch | None],
    target_fpr: float,
    higher_is_better: bool = False,
) -> OperatingPoint:
    """The threshold for `target_fpr` and the rates it gives on these queries."""
    threshold = threshold_for_fpr(non_matching, target_fpr, higher_is_better)
    false = sum(passes(m.score if m else None, threshold, higher_is_better) for m in non_matching)
    true = sum(
        m is not None and m.image_id == truth and passes(m.score, threshold, higher_is_better)
        for truth, m in matching
    )
    return OperatingPoint(
        threshold=threshold,
        target_fpr=target_fpr,
        fpr=false / len(non_matching) if non_matching else 0.0,
        tpr=true / len(matching) if matching else 0.0,
        n_matching=len(matching),
        n_non_matching=len(non_matching),
        resolved=len(non_matching) * target_fpr >= 1.0,
    )
