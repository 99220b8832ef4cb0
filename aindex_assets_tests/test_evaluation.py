"""Robustness evaluation on a hand-made case whose ranks and muAP are known in advance.

Images are solid colours, the "descriptor" is the mean colour in [0, 1] and the index is
an exact L2 search over four stored vectors, so every distance can be worked out by hand.
"""

import json

import numpy as np
import pytest
from PIL import Image

from aindex_assets.lib.copydetection import TopMatch, reranked_top_match
from aindex_assets.lib.edits import Edit
from aindex_assets.lib.evaluation import evaluate_robustness, tpr_resolved


def solid(rgb: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (32, 32), rgb)


def mean_colour(images: list[Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.float64).mean(axis=(0, 1)) / 255 for im in images])


# Stored database: 10 and 12 are the evaluated images; 11 and 13 are distractors.
DB_IDS = np.array([10, 11, 12, 13])
DB = mean_colour([solid((204, 0, 0)), solid((38, 0, 0)), solid((0, 204, 0)), solid((0, 0, 204))])


def exact_l2(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    distances = np.linalg.norm(queries[:, None, :] - DB[None, :, :], axis=2)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), DB_IDS[order]


PASSIVE = [solid((204, 0, 0)), solid((0, 204, 0))]  # exactly the stored vectors of 10, 12
ACTIVE = [solid((255, 0, 0)), solid((0, 255, 0))]  # pushed away from the distractors
IDS = [10, 12]
EDITS = {"none": Edit("none"), "brightness_0.5": Edit("brightness", 0.5)}
NEGATIVES = [solid((0, 0, 204))]  # not in the index, but identical to distractor 13


@pytest.fixture(scope="module")
def result():
    return evaluate_robustness(
        PASSIVE, ACTIVE, IDS, mean_colour, exact_l2, edits=EDITS, k=2, negatives=NEGATIVES
    )


def test_ranks_worked_out_by_hand(result):
    ranks = result.per_query_ranks
    assert ranks[("none", "passive")].tolist() == [0, 0]
    assert ranks[("none", "active")].tolist() == [0, 0]
    # Passive red halved: 0.4 is 0.25 from distractor 11 (0.15) but 0.4 from 10 (0.8).
    # Passive green halved: 0.4 from 12, 0.43 from 11: still first.
    assert ranks[("brightness_0.5", "passive")].tolist() == [1, 0]
    # Active red halved: 0.5 is 0.30 from 10 and 0.35 from 11: first.
    assert ranks[("brightness_0.5", "active")].tolist() == [0, 0]


def test_rows_and_averages(result):
    row = result.row("brightness_0.5", "passive")
    assert (row["n"], row["n_negatives"], row["params"]) == (2, 1, {"factor": 0.5})
    assert row["recall_at_1"] == 0.5 and row["recall_at_2"] == 1.0
    assert row["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert result.row("brightness_0.5", "active")["recall_at_1"] == 1.0
    assert result.average("passive")["recall_at_1"] == pytest.approx((1 + 0.5) / 2)
    assert result.average("active")["recall_at_1"] == 1.0
    assert result.edits == ["none", "brightness_0.5"]
    assert result.variants == ["passive", "active"]


def test_micro_ap_pools_matching_and_negative_queries(result):
    # "none", passive: three predictions at distance 0 -- (q0, 10) and (q1, 12) true, the
    # negative query's (q2, 13) false. Ties count worst-first: precisions 1/2 then 2/3,
    # over 2 ground-truth pairs. The farther predictions add no true pair.
    assert result.row("none", "passive")["micro_ap"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    curve = result.pr_curves[("none", "passive")]
    assert curve.recall[-1] == 1.0 and len(curve.precision) == 6  # 3 queries x top-2


def test_without_negatives_the_unedited_images_score_perfectly():
    result = evaluate_robustness(PASSIVE, None, IDS, mean_colour, exact_l2, edits=EDITS, k=2)
    assert result.variants == ["passive"]
    assert result.row("none", "passive")["micro_ap"] == 1.0
    assert result.row("none", "passive")["n_negatives"] == 0


def test_auto_edit_is_the_same_for_both_variants_and_reproducible():
    photo = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8), "RGB"
    )
    images = [photo, photo.transpose(Image.Transpose.FLIP_TOP_BOTTOM)]
    seen: list[np.ndarray] = []

    def recording_embed(batch: list[Image.Image]) -> np.ndarray:
        vectors = mean_colour(batch)
        seen.append(vectors)
        return vectors

    auto = {"auto": Edit("auto")}
    run = evaluate_robustness(images, images, IDS, recording_embed, exact_l2, edits=auto, seed=3)
    passive_vectors, active_vectors = seen
    assert np.array_equal(passive_vectors, active_vectors)
    seen.clear()
    evaluate_robustness(images, images, IDS, recording_embed, exact_l2, edits=auto, seed=3)
    assert np.array_equal(seen[0], passive_vectors)
    seen.clear()
    evaluate_robustness(images, images, IDS, recording_embed, exact_l2, edits=auto, seed=4)
    assert not np.array_equal(seen[0], passive_vectors)
    same = run.row("auto", "active") | {"variant": "passive"}
    assert json.dumps(run.row("auto", "passive")) == json.dumps(same)  # NaN: no negatives


def test_batches_give_the_same_result(result):
    batched = evaluate_robustness(
        PASSIVE,
        ACTIVE,
        IDS,
        mean_colour,
        exact_l2,
        edits=EDITS,
        k=2,
        negatives=NEGATIVES,
        batch_size=1,
    )
    assert batched.rows == result.rows


def test_serialisation(result):
    data = json.loads(result.to_json(include_curves=True))
    assert data["k"] == 2 and len(data["rows"]) == 4
    assert data["per_query_ranks"]["brightness_0.5/passive"] == [1, 0]
    assert data["average"]["active"]["recall_at_1"] == 1.0
    assert len(data["pr_curves"]["none/passive"]["precision"]) == 6
    table = result.to_markdown().splitlines()
    assert table[0].startswith("| edit | passive R@1 | active R@1 |")
    assert table[3].startswith("| brightness_0.5 | 0.500 | 1.000 |")
    assert table[-1].startswith("| **average** | 0.750 | 1.000 |")


def test_input_validation():
    with pytest.raises(ValueError, match="ids"):
        evaluate_robustness(PASSIVE, ACTIVE[:1], IDS, mean_colour, exact_l2, edits=EDITS)
    with pytest.raises(ValueError, match="no images"):
        evaluate_robustness([], [], [], mean_colour, exact_l2, edits=EDITS)


def test_pooled_curve_merges_every_edit_and_the_negatives(result):
    # Passive predictions of both edits and of the negative, by distance (ties worst-first):
    # 0: neg F, T, T | 0.251: F | 0.4: neg F, T, T | farther: F only. Ground truth: 2 images
    # x 2 edits = 4 pairs, so muAP = (1/2 + 2/3 + 3/6 + 4/7) / 4.
    pooled = result.pooled_curve("passive")
    assert pooled.average_precision() == pytest.approx((1 / 2 + 2 / 3 + 3 / 6 + 4 / 7) / 4)
    assert len(pooled.precision) == 12 and pooled.recall[-1] == 1.0
    # Per edit, brightness alone ranks F(0.251), F, T, T at 0.4: (1/3 + 2/4) / 2.
    assert result.row("brightness_0.5", "passive")["micro_ap"] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert result.pooled_curve("active").average_precision() > pooled.average_precision()
    with pytest.raises(KeyError):
        result.pooled_curve("nothing")


# With the re-rank: 10 and 12 are the catalog images (their original descriptors known),
# 11 and 13 have none (distractors). Negatives: blue, which only finds distractor 13 and so
# has no catalog match, and a dark red (0.6) whose re-ranked top match is 10.
ORIGINALS = {10: DB[0], 12: DB[2]}
RERANK_NEGATIVES = [solid((0, 0, 204)), solid((153, 0, 0))]


def exact_rerank(queries: np.ndarray, ids: np.ndarray) -> list[TopMatch | None]:
    pairs = zip(queries, ids, strict=True)
    return [reranked_top_match(query, row, ORIGINALS, 1 << 62) for query, row in pairs]


def evaluate_reranked():
    """The toy evaluation as the pipeline runs it: copy detection on the re-ranked match."""
    return evaluate_robustness(
        PASSIVE,
        ACTIVE,
        IDS,
        mean_colour,
        exact_l2,
        edits=EDITS,
        k=2,
        negatives=RERANK_NEGATIVES,
        rerank=exact_rerank,
    )


@pytest.fixture(scope="module")
def reranked():
    return evaluate_reranked()


def test_reranked_copy_detection_is_one_prediction_per_query_on_its_top_match(reranked):
    # Passive, by squared distance to the original: none: q0 -> 10 at 0, q1 -> 12 at 0, dark
    # red -> 10 at 0.04 (a false positive); brightness: q0 -> 10 at 0.16 (rank 1 in the
    # index: the distractor 11 came first), q1 -> 12 at 0.16, dark red -> 10 at 0.25.
    # Blue never finds a catalog image: no prediction. Pooled, T T F T T F over 4 pairs.
    assert reranked.reranked
    none = reranked.top_matches[("none", "passive")]
    assert [(m.image_id, m.rank) for m in none] == [(10, 0), (12, 0)]
    assert none[0].score == pytest.approx(0.0, abs=1e-9)
    bright = reranked.top_matches[("brightness_0.5", "passive")]
    assert [(m.image_id, m.rank) for m in bright] == [(10, 1), (12, 0)]
    assert bright[0].score == pytest.approx(0.16)
    blue, red = reranked.negative_top_matches["brightness_0.5"]
    assert blue is None and red.image_id == 10 and red.score == pytest.approx(0.252, abs=2e-3)
    assert reranked.row("none", "passive")["micro_ap"] == 1.0
    assert len(reranked.pr_curves[("none", "passive")].precision) == 3  # 3 queries matched
    pooled = reranked.pooled_curve("passive")
    assert pooled.average_precision() == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)


def test_tpr_at_fixed_fpr_per_edit_and_pooled(reranked):
    # Per edit, 2 negatives: 1% lets none through, the dark red's 0.04 (none) and 0.25
    # (brightness) are refused, every passive copy passes.
    row = reranked.row("brightness_0.5", "passive")
    assert row["tpr_at_fpr_0.01"] == 1.0 and row["tpr_at_fpr_0.001"] == 1.0
    assert not tpr_resolved(row, 0.01) and tpr_resolved({"n_negatives": 100}, 0.01)
    # Pooled: 4 negatives, threshold just inside 0.04: the two unedited copies pass.
    point = reranked.pooled_operating_point("passive", 0.01)
    assert (point.n_matching, point.n_non_matching) == (4, 4)
    assert point.tpr == 0.5 and point.fpr == 0.0 and not point.resolved
    assert 0.0 < point.threshold < 0.04
    quarter = reranked.pooled_operating_point("passive", 0.25)  # one negative may pass
    assert quarter.resolved and quarter.fpr == 0.25 and quarter.tpr == 0.5
    assert quarter.threshold == pytest.approx((0.04 + 0.252) / 2, abs=2e-3)
    assert reranked.average("passive")["tpr_at_fpr_0.01"] == 1.0
    with pytest.raises(KeyError):
        reranked.pooled_operating_point("nothing", 0.01)
    table = reranked.to_markdown().splitlines()
    assert "passive μAP | active μAP | passive TPR@1%FPR | active TPR@1%FPR" in table[0]
    assert "TPR@0.1%FPR" in table[0]


def test_without_rerank_the_top_match_is_the_first_result(result):
    assert not result.reranked
    # "none", passive: the negative's first result is distractor 13 at distance 0.
    [negative] = result.negative_top_matches["none"]
    assert negative.image_id == 13 and negative.score == pytest.approx(0.0, abs=1e-6)
    assert result.top_matches[("brightness_0.5", "passive")][0].image_id == 11
    # So nothing passes at 1% FPR: the negative ties the unedited copies.
    assert result.row("none", "passive")["tpr_at_fpr_0.01"] == 0.0
