"""Copy detection decisions: the top catalog match of a query and a threshold set for a
target false-positive rate.

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
non-matching queries (edited images known not to be in the index). It is set for a
target FALSE-POSITIVE RATE (default 1%) on the non-matching queries: the loosest score
that declares at most that share of them copies (`threshold_for_fpr`). The true-positive
rate (share of matching queries whose top match is their own original and passes) and
the false-positive rate are then measured at that threshold (`operating_point`). Unlike
precision, neither depends on the mix of copies and non-copies a deployment will see.

A rate below 1/n cannot be resolved with n non-matching queries: the threshold then lets
no calibration non-match through and `resolved` is False. When fewer non-matching
queries found any catalog image than the rate lets through, the non-matches set no bound;
`calibrate_for_fpr` then falls back to the loosest correct calibration match (at an exact
match when there is none), never to an infinite threshold. Both cases are said in `note`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_TARGET_FPR = 0.01
# The operating points every robustness report shows beside micro-AP.
REPORT_FPRS = (0.01, 0.001)


@dataclass(frozen=True)
class TopMatch:
    """The best catalog result of one query: its 0-based rank in the top k, id and score."""

    rank: int
    image_id: int
    score: float


@dataclass(frozen=True)
class ThresholdCalibration:
    """A copy / not-a-copy threshold set for a target false-positive rate, and what it gives.

    `tpr` and `fpr` are measured on the calibration queries at `threshold` (None when
    there were no matching, respectively non-matching, queries); `precision` is that of
    the calibration pool (its mix, not a deployment's; None when nothing passes).
    `resolved` is False when there are fewer than 1/`target_fpr` non-matching queries.
    """

    threshold: float
    higher_is_better: bool
    target_fpr: float
    resolved: bool
    tpr: float | None
    fpr: float | None
    precision: float | None
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
    true, _, false = _passing(matching, non_matching, threshold, higher_is_better)
    return OperatingPoint(
        threshold=threshold,
        target_fpr=target_fpr,
        fpr=false / len(non_matching) if non_matching else 0.0,
        tpr=true / len(matching) if matching else 0.0,
        n_matching=len(matching),
        n_non_matching=len(non_matching),
        resolved=fpr_resolved(len(non_matching), target_fpr),
    )


def fpr_resolved(n_non_matching: int, target_fpr: float) -> bool:
    """Whether `n_non_matching` queries can resolve a false-positive rate of `target_fpr`."""
    return n_non_matching * target_fpr >= 1.0 - 1e-9


def min_non_matching(target_fpr: float) -> int:
    """The fewest non-matching queries that resolve `target_fpr` (1/target, rounded up)."""
    return math.ceil(1.0 / target_fpr - 1e-9) if target_fpr > 0 else 0


def _passing(
    matching: Sequence[tuple[int, TopMatch | None]],
    non_matching: Sequence[TopMatch | None],
    threshold: float,
    higher_is_better: bool,
) -> tuple[int, int, int]:
    """(true positives, wrong-image matches, passing non-matches) at `threshold`.

    A matching query is a true positive when its top match is its own original and passes;
    one whose top match is another image and passes names the wrong original.
    """
    true = wrong = 0
    for truth, match in matching:
        if match is not None and passes(match.score, threshold, higher_is_better):
            if match.image_id == truth:
                true += 1
            else:
                wrong += 1
    false = sum(passes(m.score if m else None, threshold, higher_is_better) for m in non_matching)
    return true, wrong, false


def calibrate_for_fpr(
    matching: Sequence[tuple[int, TopMatch | None]],
    non_matching: Sequence[TopMatch | None],
    target_fpr: float = DEFAULT_TARGET_FPR,
    higher_is_better: bool = False,
) -> ThresholdCalibration:
    """The threshold for `target_fpr` on the non-matching queries, and the rates it gives.

    `matching` holds (true image id, top match or None) per matching query,
    `non_matching` the top match (or None) per non-matching query. See the module
    docstring for the unresolved case and the fallback when the non-matches set no bound.
    """
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target false-positive rate must be in (0, 1), got {target_fpr}")
    point = operating_point(matching, non_matching, target_fpr, higher_is_better)
    threshold, notes = point.threshold, []
    if not math.isfinite(threshold):
        correct = [m.score for truth, m in matching if m is not None and m.image_id == truth]
        if correct:
            threshold = float(min(correct) if higher_is_better else max(correct))
            where = "at the loosest correct calibration match"
        else:
            threshold = 1.0 if higher_is_better else 0.0
            where = "at an exact match"
        notes.append(
            f"no bound from the non-matching queries (too few found a catalog image): "
            f"threshold {where}"
        )
    # Rates at the threshold actually recorded (the fallback may have moved it).
    true, wrong, false = _passing(matching, non_matching, threshold, higher_is_better)
    tpr = true / len(matching) if matching else None
    fpr = false / len(non_matching) if non_matching else None
    # Precision of the calibration pool: a wrong-image match is a false positive too.
    precision = true / (true + wrong + false) if true + wrong + false else None
    rates = (
        f"TPR {_rate(tpr)} at FPR {_rate(fpr)} (target {target_fpr:.2%}) on "
        f"{len(matching)} matching and {len(non_matching)} non-matching queries"
    )
    if not matching:
        notes.append("no matching queries (nothing indexed to calibrate on): TPR unmeasured")
    if not point.resolved:
        notes.insert(
            0,
            f"target FPR {target_fpr:.2%} cannot be resolved: {len(non_matching)} non-matching "
            f"queries, fewer than the {min_non_matching(target_fpr)} it needs, so the "
            "threshold lets no calibration non-match through",
        )
    return ThresholdCalibration(
        threshold=threshold,
        higher_is_better=higher_is_better,
        target_fpr=target_fpr,
        resolved=point.resolved,
        tpr=tpr,
        fpr=fpr,
        precision=precision,
        n_matching=len(matching),
        n_non_matching=len(non_matching),
        note="; ".join([rates, *notes]),
    )


def _rate(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.3f}"


def pooled_predictions(
    matching: Sequence[tuple[int, TopMatch | None]], non_matching: Sequence[TopMatch | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, set[tuple[int, int]]]:
    """(query positions, top-match ids, scores) of every query with a top match, and the truth.

    One prediction per query, as the decision makes it: matching queries first, then the
    non-matching ones; the ground truth is one (position, original id) pair per matching
    query, found or not. Input of `lib.metrics.precision_recall_curve`.
    """
    queries, refs, scores = [], [], []
    matches = [match for _, match in matching] + list(non_matching)
    for query, match in enumerate(matches):
        if match is not None:
            queries.append(query)
            refs.append(match.image_id)
            scores.append(match.score)
    truth = {(query, int(image_id)) for query, (image_id, _) in enumerate(matching)}
    return (
        np.array(queries, np.int64),
        np.array(refs, np.int64),
        np.array(scores, np.float64),
        truth,
    )
