"""Every metric against values worked out by hand on small explicit cases."""

import math

import numpy as np
import pytest

from aindex_assets.lib.metrics import (
    average_precision,
    linf,
    mean_reciprocal,
    micro_average_precision,
    precision_recall_curve,
    psnr,
    ranks_of_truth,
    recall_at_k,
    ssim,
)


def test_psnr_by_hand():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = a.copy()
    b[1, 2, 0] = 10  # one of 48 samples off by 10: MSE = 100 / 48
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 * 48 / 100))
    assert psnr(a, a) == float("inf")
    with pytest.raises(ValueError, match="shape"):
        psnr(a, np.zeros((4, 5, 3), dtype=np.uint8))


def test_psnr_does_not_wrap_around_uint8():
    a = np.full((2, 2), 250, dtype=np.uint8)
    b = np.full((2, 2), 5, dtype=np.uint8)  # |250 - 5| = 245, not (5 - 250) mod 256 = 11
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 245**2))


def test_ssim_of_constant_images_by_hand():
    # With no variance SSIM reduces to its luminance term:
    # (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    a = np.full((16, 16, 3), 100, dtype=np.uint8)
    b = np.full((16, 16, 3), 50, dtype=np.uint8)
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 50 + c1) / (100**2 + 50**2 + c1))
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert ssim(noise, noise) == pytest.approx(1.0)
    assert ssim(noise, 255 - noise) < 0
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:8, :8], b[:8, :8])


def test_linf():
    a = np.array([[0, 10], [200, 255]], dtype=np.uint8)
    b = np.array([[3, 10], [180, 0]], dtype=np.uint8)
    assert linf(a, b) == 255.0
    assert linf(a, a) == 0.0


def test_ranks_of_truth():
    results = np.array([[5, 3, 7], [1, 2, 3], [9, 9, 4], [-1, -1, -1]])
    truth = np.array([3, 4, 9, 0])
    assert ranks_of_truth(results, truth).tolist() == [1, -1, 0, -1]
    with pytest.raises(ValueError):
        ranks_of_truth(results, truth[:2])


def test_recall_and_mean_reciprocal_rank():
    ranks = np.array([0, 1, -1, 2])
    assert recall_at_k(ranks, 1) == 0.25
    assert recall_at_k(ranks, 2) == 0.5
    assert recall_at_k(ranks, 100) == 0.75
    assert mean_reciprocal(ranks) == pytest.approx((1 + 1 / 2 + 0 + 1 / 3) / 4)
    assert math.isnan(recall_at_k(np.array([]), 1))


def test_average_precision_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([1, 0, 1, 0])
    # Hits at positions 1 and 3: precisions 1/1 and 2/3.
    assert average_precision(scores, labels) == pytest.approx((1 + 2 / 3) / 2)
    # Two more true items exist that were never scored: same sum, divided by 4.
    assert average_precision(scores, labels, n_positives=4) == pytest.approx((1 + 2 / 3) / 4)
    # Order of the input does not matter, only the scores.
    assert average_precision(scores[::-1], labels[::-1]) == pytest.approx((1 + 2 / 3) / 2)


def test_average_precision_orders_ties_worst_first():
    # Equal scores: the negative is counted first, so the positive has precision 1/2.
    assert average_precision(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert average_precision(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5


PREDICTIONS = {
    # (query, reference, score); ground truth pairs are (0, 10), (1, 11) and (2, 12).
    "query": [0, 0, 1, 3],
    "ref": [10, 13, 11, 10],
    "score": [0.9, 0.8, 0.7, 0.95],
}
GROUND_TRUTH = {(0, 10), (1, 11), (2, 12)}


def test_micro_average_precision_by_hand():
    # Ranked: (3,10) neg, (0,10) pos -> precision 1/2, (0,13) neg, (1,11) pos -> 2/4.
    # (2,12) is never retrieved but counts in the denominator: muAP = (1/2 + 1/2) / 3.
    p = PREDICTIONS
    assert micro_average_precision(p["query"], p["ref"], p["score"], GROUND_TRUTH) == pytest.approx(
        1 / 3
    )
    distances = [1 - s for s in p["score"]]
    assert micro_average_precision(
        p["query"], p["ref"], distances, GROUND_TRUTH, higher_is_better=False
    ) == pytest.approx(1 / 3)
    assert micro_average_precision(
        p["query"], p["ref"], p["score"], GROUND_TRUTH, n_ground_truth=4
    ) == pytest.approx(1 / 4)


def test_micro_average_precision_counts_a_repeated_pair_once_at_its_best_score():
    p = PREDICTIONS
    value = micro_average_precision(
        [*p["query"], 0], [*p["ref"], 10], [*p["score"], 0.1], GROUND_TRUTH
    )
    assert value == pytest.approx(1 / 3)


def test_micro_average_precision_ties_are_worst_first():
    # All three predictions score the same: the negative goes first -> (1/2 + 2/3) / 2.
    value = micro_average_precision([0, 1, 2], [10, 11, 99], [1.0, 1.0, 1.0], {(0, 10), (1, 11)})
    assert value == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_precision_recall_curve_points():
    p = PREDICTIONS
    curve = precision_recall_curve(p["query"], p["ref"], p["score"], GROUND_TRUTH)
    assert curve.precision.tolist() == pytest.approx([0, 1 / 2, 1 / 3, 1 / 2])
    assert curve.recall.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3])
    assert curve.thresholds.tolist() == pytest.approx([0.95, 0.9, 0.8, 0.7])
    assert curve.recall_at_precision(0.5) == pytest.approx(2 / 3)
    assert curve.recall_at_precision(0.9) == 0.0
    distances = precision_recall_curve(
        p["query"], p["ref"], [1 - s for s in p["score"]], GROUND_TRUTH, higher_is_better=False
    )
    assert distances.thresholds.tolist() == pytest.approx([0.05, 0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="ground-truth"):
        precision_recall_curve([0], [1], [0.5], set())
