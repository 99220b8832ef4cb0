"""Robustness evaluation on a hand-made case whose ranks and muAP are known in advance.

Images are solid colours, the "descriptor" is the mean colour in [0, 1] and the index is
an exact L2 search over four stored vectors, so every distance can be worked out by hand.
"""

import json

import numpy as np
import pytest
from PIL import Image

from aindex_assets.lib.edits import Edit
from aindex_assets.lib.evaluation import evaluate_robustness


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
    assert run.row("auto", "passive") == run.row("auto", "active") | {"variant": "passive"}


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
