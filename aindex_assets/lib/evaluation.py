"""Robustness evaluation of passive versus activated images, as in the paper.

For every edit and every variant ("passive": the original images, "active": the activated
ones) each image is edited, embedded and searched; the rank of its own id gives R@1,
R@10 (R@100 when k allows) and the mean of 1/(rank+1). Copy detection is scored with the
ISC 2021 micro-AP: the edited images are matching queries and edited `negatives` (images
that are not in the index) are non-matching queries; all top-k results of both are pooled.

The function knows nothing of extractors or indexes: it receives an `embed` callable
(list of PIL images -> (n, d) array) and a `search` callable ((queries, k) -> (scores or
distances, ids), FAISS style, ids padded with -1).

The "auto" edit draws a different random edit per image: its seed derives from `seed`
and the image's id, so the passive and the active copy of one image receive the same
edit, and the same image always gets the same edit whatever the batch order.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from aindex_assets.lib.edits import PAPER_EDITS, Edit
from aindex_assets.lib.metrics import (
    PrecisionRecall,
    mean_reciprocal,
    precision_recall_curve,
    ranks_of_truth,
    recall_at_k,
)

Embed = Callable[[list[Image.Image]], np.ndarray]
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]

VARIANTS = ("passive", "active")
_MATCHING, _NEGATIVE = 0, 1


def edit_seed(seed: int, role: int, key: int) -> int:
    """Seed of the random edit for one image: `role` 0 = indexed image, 1 = negative."""
    sequence = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, role, int(key) & 0xFFFFFFFFFFFF])
    return int(sequence.generate_state(1)[0])


@dataclass
class RobustnessResult:
    """Per-edit metrics of each variant, per-query ranks and copy-detection PR curves.

    `rows` holds one dict per (edit, variant): edit, variant, params, n, n_negatives,
    recall_at_1, recall_at_10 (and recall_at_100 when k >= 100), mrr (mean 1/(rank+1)),
    micro_ap and recall_at_p90 (NaN/absent when not computable).
    `per_query_ranks[(edit, variant)]` are 0-based ranks, -1 when not in the top k.
    `higher_is_better` says whether the curves' thresholds are similarities or distances.
    """

    k: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_query_ranks: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    pr_curves: dict[tuple[str, str], PrecisionRecall] = field(default_factory=dict)
    higher_is_better: bool = False

    @property
    def metric_names(self) -> list[str]:
        return [*(f"recall_at_{r}" for r in _recall_cutoffs(self.k)), "mrr", "micro_ap"]

    def row(self, edit: str, variant: str) -> dict[str, Any]:
        for row in self.rows:
            if row["edit"] == edit and row["variant"] == variant:
                return row
        raise KeyError(f"no result for edit {edit!r}, variant {variant!r}")

    def average(self, variant: str) -> dict[str, float]:
        """Mean of each metric over all evaluated edits ("none" included, as the paper)."""
        rows = [row for row in self.rows if row["variant"] == variant]
        if not rows:
            raise KeyError(f"no rows for variant {variant!r}")
        return {name: float(np.mean([row[name] for row in rows])) for name in self.metric_names}

    def pooled_curve(self, variant: str) -> PrecisionRecall:
        """One copy-detection curve over the queries of every edit of `variant`.

        The per-edit curves are merged: each prediction keeps its score and whether it was
        a true pair (recovered exactly from the cumulative hit counts), and the ground
        truth is one pair per image and edit. Its AP is the micro-AP of all edited copies
        and negatives together, as if they formed one query set.
        """
        scores, labels, total = [], [], 0
        for (edit, name), curve in self.pr_curves.items():
            if name != variant:
                continue
            hits = np.rint(curve.precision * np.arange(1.0, len(curve.precision) + 1.0))
            labels.append(np.diff(hits, prepend=0.0) > 0)
            scores.append(curve.thresholds)
            total += int(self.row(edit, name)["n"])
        if total == 0:
            raise KeyError(f"no curves for variant {variant!r}")
        truth = np.concatenate(labels) if labels else np.zeros(0, dtype=bool)
        positions = np.arange(len(truth))
        return precision_recall_curve(
            positions,
            np.zeros(len(truth), dtype=np.int64),
            np.concatenate(scores) if scores else np.zeros(0),
            {(int(i), 0) for i in positions[truth]},
            higher_is_better=self.higher_is_better,
            n_ground_truth=total,
        )

    @property
    def variants(self) -> list[str]:
        return [v for v in VARIANTS if any(row["variant"] == v for row in self.rows)]

    @property
    def edits(self) -> list[str]:
        return list(dict.fromkeys(row["edit"] for row in self.rows))

    def to_dict(self, include_curves: bool = False) -> dict[str, Any]:
        """A JSON-serialisable summary (NaN becomes null)."""
        data: dict[str, Any] = {
            "k": self.k,
            "rows": [_jsonable(row) for row in self.rows],
            "average": {v: _jsonable(self.average(v)) for v in self.variants},
            "per_query_ranks": {
                f"{edit}/{variant}": ranks.tolist()
                for (edit, variant), ranks in self.per_query_ranks.items()
            },
        }
        if include_curves:
            data["pr_curves"] = {
                f"{edit}/{variant}": {
                    "precision": curve.precision.tolist(),
                    "recall": curve.recall.tolist(),
                }
                for (edit, variant), curve in self.pr_curves.items()
            }
        return data

    def to_json(self, include_curves: bool = False) -> str:
        return json.dumps(self.to_dict(include_curves), allow_nan=False)

    def to_markdown(self, metrics: Sequence[str] = ("recall_at_1", "recall_at_10", "mrr")) -> str:
        """Table: one line per edit and a final average, one column per metric and variant."""
        shown = [m for m in (*metrics, "micro_ap") if m in self.metric_names]
        shown = list(dict.fromkeys(shown))
        header = ["edit"] + [f"{v} {_LABELS.get(m, m)}" for m in shown for v in self.variants]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for edit in self.edits:
            cells = [_fmt(self.row(edit, v)[m]) for m in shown for v in self.variants]
            lines.append("| " + " | ".join([edit, *cells]) + " |")
        averages = {v: self.average(v) for v in self.variants}
        cells = [_fmt(averages[v][m]) for m in shown for v in self.variants]
        lines.append("| " + " | ".join(["**average**", *cells]) + " |")
        return "\n".join(lines)


_LABELS = {"recall_at_1": "R@1", "recall_at_10": "R@10", "recall_at_100": "R@100"}
_LABELS |= {"mrr": "1/(rank+1)", "micro_ap": "μAP"}


def _fmt(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


def _jsonable(mapping: Mapping[str, Any]) -> dict[str, Any]:
    def clean(value: Any) -> Any:
        if isinstance(value, float | np.floating):
            return None if math.isnan(value) else float(value)
        if isinstance(value, np.integer):
            return int(value)
        if isinstance(value, Mapping):
            return {str(k): clean(v) for k, v in value.items()}
        return value

    return {key: clean(value) for key, value in mapping.items()}


def _recall_cutoffs(k: int) -> list[int]:
    return sorted({cutoff for cutoff in (1, 10, 100, k) if cutoff <= k})


def evaluate_robustness(
    passive: Sequence[Image.Image],
    active: Sequence[Image.Image] | None,
    ids: Sequence[int],
    embed: Embed,
    search: Search,
    edits: Mapping[str, Edit] = PAPER_EDITS,
    k: int = 10,
    seed: int = 0,
    negatives: Sequence[Image.Image] = (),
    higher_is_better: bool = False,
    batch_size: int = 64,
) -> RobustnessResult:
    """Edit, embed and search every image under every edit; see the module docstring.

    `active` may be None to evaluate the passive images alone. `higher_is_better` says
    whether `search` returns similarities (True) or distances (False, the default: L2).
    """
    truth = np.asarray(ids, dtype=np.int64)
    variants = {"passive": passive} if active is None else {"passive": passive, "active": active}
    for variant, images in variants.items():
        if len(images) != len(truth):
            raise ValueError(f"{len(images)} {variant} images but {len(truth)} ids")
    if len(truth) == 0:
        raise ValueError("nothing to evaluate: no images")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    result = RobustnessResult(k=k, higher_is_better=higher_is_better)
    negative_keys = list(range(len(negatives)))
    for edit_name, edit in edits.items():
        negative_hits = None
        if len(negatives):
            edited = _embed_edited(
                negatives, negative_keys, _NEGATIVE, edit, embed, seed, batch_size
            )
            negative_hits = search(edited, k)
        for variant, images in variants.items():
            queries = _embed_edited(
                images, truth.tolist(), _MATCHING, edit, embed, seed, batch_size
            )
            scores, found = search(queries, k)
            ranks = ranks_of_truth(np.asarray(found), truth)
            row: dict[str, Any] = {
                "edit": edit_name,
                "variant": variant,
                "params": edit.params,
                "n": len(truth),
                "n_negatives": len(negatives),
            }
            row |= {f"recall_at_{c}": recall_at_k(ranks, c) for c in _recall_cutoffs(k)}
            row["mrr"] = mean_reciprocal(ranks)
            curve = _copy_detection_curve(
                (np.asarray(scores), np.asarray(found)), truth, negative_hits, higher_is_better
            )
            row["micro_ap"] = curve.average_precision()
            row["recall_at_p90"] = curve.recall_at_precision(0.9)
            result.rows.append(row)
            result.per_query_ranks[(edit_name, variant)] = ranks
            result.pr_curves[(edit_name, variant)] = curve
    return result


def _embed_edited(
    images: Sequence[Image.Image],
    keys: Sequence[int],
    role: int,
    edit: Edit,
    embed: Embed,
    seed: int,
    batch_size: int,
) -> np.ndarray:
    """Edit and embed in batches so that only one batch of edited copies is in memory."""
    chunks = []
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        edited = [edit(images[i], seed=edit_seed(seed, role, keys[i])) for i in range(start, stop)]
        chunks.append(np.asarray(embed(edited), dtype=np.float32))
    return np.concatenate(chunks, axis=0)


def _copy_detection_curve(
    matching: tuple[np.ndarray, np.ndarray],
    truth: np.ndarray,
    negative_hits: tuple[np.ndarray, np.ndarray] | None,
    higher_is_better: bool,
) -> PrecisionRecall:
    """Pool the top-k of matching and non-matching queries; one true pair per image."""
    hits = (
        [matching] if negative_hits is None else [matching, tuple(map(np.asarray, negative_hits))]
    )
    query_ids, ref_ids, scores = [], [], []
    offset = 0
    for values, found in hits:
        rows = np.repeat(np.arange(found.shape[0]) + offset, found.shape[1])
        valid = found.reshape(-1) >= 0
        query_ids.append(rows[valid])
        ref_ids.append(found.reshape(-1)[valid])
        scores.append(values.reshape(-1)[valid])
        offset += found.shape[0]
    ground_truth = {(i, int(t)) for i, t in enumerate(truth)}
    return precision_recall_curve(
        np.concatenate(query_ids),
        np.concatenate(ref_ids),
        np.concatenate(scores),
        ground_truth,
        higher_is_better=higher_is_better,
    )
