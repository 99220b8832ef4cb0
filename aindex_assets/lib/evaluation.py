"""Robustness evaluation of passive versus activated images, as in the paper.

For every edit and every variant ("passive": the original images, "active": the activated
ones) each image is edited, embedded and searched; the rank of its own id gives R@1,
R@10 (R@100 when k allows) and the mean of 1/(rank+1). Copy detection: the edited images
are matching queries and edited `negatives` (images that are not in the index) are
non-matching queries, scored with the ISC 2021 micro-AP and with the true-positive rate at
fixed false-positive rates (`lib.copydetection.REPORT_FPRS`: 1% and 0.1%) on the
non-matching queries.

The function knows nothing of extractors or indexes: it receives an `embed` callable
(list of PIL images -> (n, d) array), a `search` callable ((queries, k) -> (scores or
distances, ids), FAISS style, ids padded with -1) and, optionally, a `rerank` callable
((queries, their top-k ids) -> each query's `TopMatch` or None). With `rerank`, each query
is one prediction: its re-ranked top match and that score, the decision `aindex query`
makes (the pipeline passes the re-rank on the stored original descriptors). Without it,
every top-k result is a prediction with the index's own score (the index alone, as the
index comparison uses it) and a query's top match for the rates is its first result.

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

from aindex_assets.lib.copydetection import (
    REPORT_FPRS,
    OperatingPoint,
    TopMatch,
    fpr_resolved,
    operating_point,
    pooled_predictions,
)
from aindex_assets.lib.edits import PAPER_EDITS, Edit
from aindex_assets.lib.metrics import (
    PrecisionRecall,
    mean_reciprocal,
    precision_recall_curve,
    ranks_of_truth,
    recall_at_k,
)
from aindex_assets.lib.progress import progress_bar

Embed = Callable[[list[Image.Image]], np.ndarray]
Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
Rerank = Callable[[np.ndarray, np.ndarray], Sequence[TopMatch | None]]

VARIANTS = ("passive", "active")
_MATCHING, _NEGATIVE = 0, 1


def tpr_key(target_fpr: float) -> str:
    """Row key of the true-positive rate at a false-positive rate: `tpr_at_fpr_0.01`."""
    return f"tpr_at_fpr_{target_fpr:g}"


TPR_KEYS = tuple(tpr_key(fpr) for fpr in REPORT_FPRS)


def edit_seed(seed: int, role: int, key: int) -> int:
    """Seed of the random edit for one image: `role` 0 = indexed image, 1 = negative."""
    sequence = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, role, int(key) & 0xFFFFFFFFFFFF])
    return int(sequence.generate_state(1)[0])


@dataclass
class RobustnessResult:
    """Per-edit metrics of each variant, per-query ranks and copy-detection PR curves.

    `rows` holds one dict per (edit, variant): edit, variant, params, n, n_negatives,
    recall_at_1, recall_at_10 (and recall_at_100 when k >= 100), mrr (mean 1/(rank+1)),
    micro_ap, recall_at_p90 and the TPR at each of `REPORT_FPRS` (`tpr_at_fpr_0.01`, ...;
    resolved per edit only with at least 1/FPR negatives) (NaN/absent when not computable).
    `per_query_ranks[(edit, variant)]` are 0-based ranks, -1 when not in the top k;
    `top_matches[(edit, variant)]` each query's top match (re-ranked when `reranked`),
    `negative_top_matches[edit]` those of the edited negatives. `higher_is_better` says
    whether scores and the curves' thresholds are similarities or distances.
    """

    k: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    per_query_ranks: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    pr_curves: dict[tuple[str, str], PrecisionRecall] = field(default_factory=dict)
    higher_is_better: bool = False
    truth: list[int] = field(default_factory=list)
    top_matches: dict[tuple[str, str], list[TopMatch | None]] = field(default_factory=dict)
    negative_top_matches: dict[str, list[TopMatch | None]] = field(default_factory=dict)
    reranked: bool = False

    @property
    def metric_names(self) -> list[str]:
        cutoffs = (f"recall_at_{r}" for r in _recall_cutoffs(self.k))
        return [*cutoffs, "mrr", "micro_ap", *TPR_KEYS]

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

    def pooled_operating_point(self, variant: str, target_fpr: float) -> OperatingPoint:
        """The threshold for `target_fpr` on every edit's negatives and the TPR it gives.

        Matching queries: every image under every edit of `variant`; non-matching: every
        negative under every edit (n_negatives x edits of them).
        """
        edits = [edit for (edit, name) in self.top_matches if name == variant]
        if not edits:
            raise KeyError(f"no top matches for variant {variant!r}")
        matching = [
            (truth, match)
            for edit in edits
            for truth, match in zip(self.truth, self.top_matches[(edit, variant)], strict=True)
        ]
        non_matching = [m for edit in edits for m in self.negative_top_matches.get(edit, [])]
        return operating_point(matching, non_matching, target_fpr, self.higher_is_better)

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
        """Table: one line per edit and a final average, one column per metric and variant.

        The copy-detection columns (μAP, then the TPR at each report FPR) always follow.
        """
        shown = [m for m in (*metrics, "micro_ap", *TPR_KEYS) if m in self.metric_names]
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


def tpr_label(target_fpr: float) -> str:
    """`TPR@1%FPR` and the like."""
    return f"TPR@{target_fpr * 100:g}%FPR"


_LABELS = {"recall_at_1": "R@1", "recall_at_10": "R@10", "recall_at_100": "R@100"}
_LABELS |= {"mrr": "1/(rank+1)", "micro_ap": "μAP"}
_LABELS |= {tpr_key(fpr): tpr_label(fpr) for fpr in REPORT_FPRS}


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
    rerank: Rerank | None = None,
) -> RobustnessResult:
    """Edit, embed and search every image under every edit; see the module docstring.

    `active` may be None to evaluate the passive images alone. `higher_is_better` says
    whether the scores (the re-rank's when `rerank` is given, else `search`'s) are
    similarities (True) or distances (False, the default: L2).
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
    result = RobustnessResult(
        k=k, higher_is_better=higher_is_better, truth=truth.tolist(), reranked=rerank is not None
    )
    negative_keys = list(range(len(negatives)))
    with progress_bar(len(edits), "evaluation", unit="edit") as bar:
        for edit_name, edit in edits.items():
            negative_hits = None
            negative_tops: list[TopMatch | None] = []
            if len(negatives):
                edited = _embed_edited(
                    negatives, negative_keys, _NEGATIVE, edit, embed, seed, batch_size
                )
                negative_hits = search(edited, k)
                negative_tops = _top_matches(edited, negative_hits, rerank)
            result.negative_top_matches[edit_name] = negative_tops
            for variant, images in variants.items():
                queries = _embed_edited(
                    images, truth.tolist(), _MATCHING, edit, embed, seed, batch_size
                )
                scores, found = search(queries, k)
                tops = _top_matches(queries, (scores, found), rerank)
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
                if rerank is None:
                    curve = _copy_detection_curve(
                        (np.asarray(scores), np.asarray(found)),
                        truth,
                        negative_hits,
                        higher_is_better,
                    )
                else:
                    curve = _top_match_curve(tops, truth, negative_tops, higher_is_better)
                row["micro_ap"] = curve.average_precision()
                row["recall_at_p90"] = curve.recall_at_precision(0.9)
                matching = list(zip(truth.tolist(), tops, strict=True))
                for fpr in REPORT_FPRS:
                    point = operating_point(matching, negative_tops, fpr, higher_is_better)
                    row[tpr_key(fpr)] = point.tpr if negative_tops else float("nan")
                result.rows.append(row)
                result.per_query_ranks[(edit_name, variant)] = ranks
                result.pr_curves[(edit_name, variant)] = curve
                result.top_matches[(edit_name, variant)] = tops
            bar.update()
    return result


def _top_matches(
    queries: np.ndarray, hits: tuple[np.ndarray, np.ndarray], rerank: Rerank | None
) -> list[TopMatch | None]:
    """Each query's top match: re-ranked, or (without `rerank`) its first result."""
    scores, found = np.asarray(hits[0]), np.asarray(hits[1])
    if rerank is not None:
        tops = list(rerank(queries, found))
        if len(tops) != len(queries):
            raise ValueError(f"rerank returned {len(tops)} matches for {len(queries)} queries")
        return tops
    return [_first_result(s, i) for s, i in zip(scores, found, strict=True)]


def _first_result(scores: np.ndarray, ids: np.ndarray) -> TopMatch | None:
    for rank, (score, found) in enumerate(zip(scores.tolist(), ids.tolist(), strict=True)):
        if found >= 0:
            return TopMatch(rank=rank, image_id=int(found), score=float(score))
    return None


def _top_match_curve(
    tops: Sequence[TopMatch | None],
    truth: np.ndarray,
    negative_tops: Sequence[TopMatch | None],
    higher_is_better: bool,
) -> PrecisionRecall:
    """One prediction per query (its top match); one true pair per image, found or not."""
    queries, refs, scores, pairs = pooled_predictions(
        list(zip(truth.tolist(), tops, strict=True)), negative_tops
    )
    return precision_recall_curve(
        queries, refs, scores, pairs, higher_is_better=higher_is_better, n_ground_truth=len(truth)
    )


def tpr_resolved(row: Mapping[str, Any], target_fpr: float) -> bool:
    """Whether a row's negatives (`n_negatives`, one edit's) resolve `target_fpr`."""
    return fpr_resolved(int(row.get("n_negatives") or 0), target_fpr)


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
