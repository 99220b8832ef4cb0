"""The robustness report document: quality statistics, audit trail, summaries and tables.

A report is one JSON document (schema in `report_schema.json`, version `SCHEMA_VERSION`)
built from a `RobustnessResult`, the activation records of the evaluated images and
facts about what produced it (extractor, index version, package version, git commit).
This module only shapes data; `report_figures` draws it and `report_html` lays it out.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from aindex_assets.lib.copydetection import REPORT_FPRS, min_non_matching
from aindex_assets.lib.edits import PAPER_EDITS, Edit, sweep_edits
from aindex_assets.lib.evaluation import (
    RobustnessResult,
    tpr_key,
    tpr_label,
    tpr_resolved,
)
from aindex_assets.lib.metrics import PrecisionRecall

# 3: copy detection scored on the re-ranked top match (as `aindex query`), TPR at fixed FPRs.
SCHEMA_VERSION = 3
PACKAGE = "aindex_assets"
GIT_COMMIT_ENV = "AINDEX_GIT_COMMIT"
EDIT_SETS = ("paper", "sweep", "full_sweep")
QUALITY_METRICS = ("psnr", "ssim", "linf")
CURVE_POINTS = 101


RECALL_METRICS = (
    ("recall_at_1", "R@1"),
    ("recall_at_10", "R@10"),
    ("recall_at_100", "R@100"),
    ("mrr", "1/(rank+1)"),
)


def tpr_term(target_fpr: float) -> str:
    """How the HTML page and the definitions name a TPR column: `TPR at 1% FPR`."""
    return f"TPR at {target_fpr * 100:g}% FPR"


# The report's terms in plain words, shown by both renderings (HTML and markdown).
DEFINITIONS = {
    "passive": "The original images, indexed as they were submitted; their edited copies "
    "are searched as they are. This is what an ordinary index achieves.",
    "active": "The released (activated) images: each original changed imperceptibly before "
    "release so that its descriptor, and those of its edited copies, land closer to the "
    "image's own entry in the index. Their edited copies are searched in the same index.",
    "edit": "A change applied to every image to make a query (crop, rotation, JPEG, "
    "brightness…); `none` searches the image unedited.",
    "queries": "The edited copies searched on that row: one per image for an edit, every "
    "edit's together on the average and pooled rows.",
    "non-matching queries": "Edited copies of photos that are not in the index (listed "
    "below). A copy detector should report no match for them; they set the "
    "false-positive rate.",
    "R@1": "Recall at 1: the fraction of edited copies whose own image is the first search "
    "result. 1.000 means every copy was found first.",
    "R@10": "Recall at 10: the fraction of edited copies whose own image is among the first "
    "10 results.",
    "R@100": "Recall at 100: the same among the first 100 results.",
    "1/(rank+1)": "Mean reciprocal rank: 1 when the own image comes first, 1/2 when second, "
    "and so on; 0 when it is not among the results.",
    "μAP": "Micro average precision of copy detection: the matches proposed for every "
    "query, matching or not, ranked by score in one list, and the area under the "
    "precision-recall curve of that list. 1.000 means every true copy scores above every "
    "false match.",
    tpr_term(0.01): "True-positive rate at a 1% false-positive rate: the score threshold "
    "is set so that at most 1% of the non-matching queries are reported as copies; the "
    "TPR is the fraction of edited copies reported with their own image at that threshold.",
    tpr_term(0.001): "The same with at most 0.1% of the non-matching queries reported.",
    "*": "The false-positive rate is not resolved: it needs at least 1/FPR non-matching "
    "queries; with fewer, the threshold is set so that none of them is reported.",
    "recall at precision 0.9": "The largest fraction of true copies detected while at "
    "least 90% of the reported matches are right.",
    "predictions": "The (query, match) pairs scored in the pooled precision-recall curve.",
    "PSNR": "Peak signal-to-noise ratio between an original and its released image, in "
    "decibels; higher is closer. Above about 40 dB a change is generally not visible.",
    "SSIM": "Structural similarity between an original and its released image; 1 is identical.",
    "L∞": "The largest change of any pixel value, on the 0–255 scale.",
}


def report_terms(payload: Mapping[str, Any]) -> dict[str, str]:
    """DEFINITIONS, but the recall cut-offs the report's tables do not show."""
    average = next(iter(payload["result"]["average"].values()))
    absent = {label for key, label in RECALL_METRICS if key not in average}
    return {term: text for term, text in DEFINITIONS.items() if term not in absent}


def edits_for(edit_set: str, names: Sequence[str] | None = None) -> dict[str, Edit]:
    """The paper's edits, or them followed by the quick (`sweep`) or dense parameter sweep.

    `names` keeps only those edits of the set (in the set's order); None keeps them all.
    """
    if edit_set not in EDIT_SETS:
        raise ValueError(f"unknown edit set {edit_set!r}: use one of {EDIT_SETS}")
    edits = dict(PAPER_EDITS)
    if edit_set != "paper":
        for sweep in sweep_edits(full=edit_set == "full_sweep").values():
            edits |= {edit.name: edit for edit in sweep if edit.name not in edits}
    if names is None:
        return edits
    unknown = sorted(set(names) - set(edits))
    if unknown or not names:
        raise ValueError(f"unknown edits {unknown} in edit set {edit_set!r}: known {list(edits)}")
    return {name: edit for name, edit in edits.items() if name in names}


def summary_stats(values: Iterable[float]) -> dict[str, float | int | None]:
    """n, mean, min, max and the 5th/50th/95th percentiles of the finite values."""
    finite = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if finite.size == 0:
        return {"n": 0} | dict.fromkeys(("mean", "min", "max", "p5", "p50", "p95"))
    p5, p50, p95 = np.percentile(finite, [5, 50, 95])
    return {
        "n": int(finite.size),
        "mean": float(finite.mean()),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "p5": float(p5),
        "p50": float(p50),
        "p95": float(p95),
    }


def quality_section(per_image: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Statistics of PSNR (dB), SSIM and L-infinity (0-255) plus the per-image values.

    `per_image` holds one mapping per released image: image_id, psnr, ssim, linf. An
    infinite PSNR (an image released unchanged) is kept out of the statistics and
    recorded as null, since JSON has no infinity.
    """
    stats = {name: summary_stats(float(q[name]) for q in per_image) for name in QUALITY_METRICS}
    rows = [
        {"image_id": int(q["image_id"])}
        | {name: _finite_or_none(q[name]) for name in QUALITY_METRICS}
        for q in per_image
    ]
    return stats | {"per_image": rows}


def _finite_or_none(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def curve_points(curve: PrecisionRecall, max_points: int = CURVE_POINTS) -> dict[str, list]:
    """At most `max_points` evenly spaced points of a curve (the last one always kept)."""
    n = len(curve.precision)
    if n == 0:
        return {"precision": [], "recall": []}
    keep = np.unique(np.linspace(0, n - 1, min(n, max_points)).round().astype(int))
    return {
        "precision": [round(float(v), 6) for v in curve.precision[keep]],
        "recall": [round(float(v), 6) for v in curve.recall[keep]],
    }


def copy_detection_section(result: RobustnessResult) -> dict[str, Any]:
    """Pooled copy detection per variant: micro-AP, TPR at fixed FPRs, recall at P90, curve.

    `operating_points` holds, per false-positive rate of `REPORT_FPRS`, the threshold set
    on all edits' non-matching queries, the TPR and FPR it gives and whether the rate is
    resolved (at least 1/FPR non-matching queries).
    """
    section = {}
    for variant in result.variants:
        curve = result.pooled_curve(variant)
        points = [result.pooled_operating_point(variant, fpr) for fpr in REPORT_FPRS]
        section[variant] = {
            "micro_ap": _finite_or_none(curve.average_precision()),
            "recall_at_p90": float(curve.recall_at_precision(0.9)),
            "predictions": len(curve.precision),
            "curve": curve_points(curve),
            "operating_points": [
                {
                    "target_fpr": point.target_fpr,
                    "tpr": float(point.tpr),
                    "fpr": float(point.fpr),
                    "threshold": _finite_or_none(point.threshold),
                    "resolved": bool(point.resolved),
                    "n_matching": point.n_matching,
                    "n_non_matching": point.n_non_matching,
                }
                for point in points
            ],
        }
    return section


def operating_point_of(section: Mapping[str, Any], target_fpr: float) -> dict[str, Any] | None:
    """The pooled operating point at `target_fpr` (None in documents before schema 3)."""
    for point in section.get("operating_points", []):
        if math.isclose(point["target_fpr"], target_fpr):
            return point
    return None


def tpr_cell(point: Mapping[str, Any] | None) -> str:
    """A pooled TPR: the value, marked `*` when its rate is not resolved; a dash when absent."""
    if point is None:
        return "–"
    return number_cell(point["tpr"]) + ("" if point["resolved"] else "*")


def unresolved_notes(payload: Mapping[str, Any]) -> list[str]:
    """Plain sentences on TPRs whose false-positive rate is not resolved (pooled, per edit).

    A rate below 1/n cannot be resolved with n non-matching queries: its threshold lets
    none of them through. Pooled TPRs concerned are marked `*` in the tables.
    """
    grouped: dict[tuple[float, int], list[str]] = {}
    for variant, section in payload["copy_detection"].items():
        for point in section.get("operating_points", []):
            if not point["resolved"]:
                key = (point["target_fpr"], point["n_non_matching"])
                grouped.setdefault(key, []).append(variant)
    notes = [
        f"* not resolved at FPR {fpr * 100:g}% ({', '.join(variants)}): {n} non-matching "
        f"queries where it needs at least {min_non_matching(fpr)}; the threshold lets none "
        "of them through."
        for (fpr, n), variants in grouped.items()
    ]
    rows = payload["result"]["rows"]
    if rows and any(tpr_key(f) in rows[0] for f in REPORT_FPRS):
        unresolved = [f"{f * 100:g}%" for f in REPORT_FPRS if not tpr_resolved(rows[0], f)]
        if unresolved:
            notes.append(
                f"Per edit, the TPR at FPR {' and '.join(unresolved)} is not resolved "
                f"(non-matching queries per edit: {rows[0]['n_negatives']})."
            )
    return notes


def package_version() -> str | None:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit(environ: Mapping[str, str] = os.environ) -> str | None:
    """The commit of the running code: `AINDEX_GIT_COMMIT`, else the checkout's HEAD, else None.

    The variable is for images built without `.git`; a source checkout answers itself.
    """
    if environ.get(GIT_COMMIT_ENV):
        return environ[GIT_COMMIT_ENV].strip()
    here = Path(__file__).resolve().parent
    try:
        completed = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = completed.stdout.strip()
    return commit if completed.returncode == 0 and commit else None


def distinct(mappings: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The distinct mappings, in first-seen order (activation parameters of a batch)."""
    seen: dict[str, dict[str, Any]] = {}
    for mapping in mappings:
        seen.setdefault(json.dumps(mapping, sort_keys=True, default=str), dict(mapping))
    return list(seen.values())


def utc_timestamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_payload(
    result: RobustnessResult,
    audit: Mapping[str, Any],
    quality: Mapping[str, Any],
    edits: Mapping[str, Edit],
) -> dict[str, Any]:
    """The report document (schema `SCHEMA_VERSION`) from a result and its audit trail.

    `audit` must hold report_id, batch_id, created_at, extractor, index, activation,
    evaluation, negatives and image_ids, and may hold image_names, the source key of each
    image (see `report_schema.json`); package and git
    commit are added here. Index version, factory, extractor identity, image ids, seed,
    k and nprobe are repeated at the top level, where readers of schema 1 find them.
    """
    trail = dict(audit) | {
        "package": {"name": PACKAGE, "version": package_version()},
        "git_commit": git_commit(),
    }
    evaluation = trail["evaluation"] = dict(trail["evaluation"]) | {
        "copy_detection_score": "reranked" if result.reranked else "index"
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "robustness",
        "report_id": trail["report_id"],
        "batch_id": trail["batch_id"],
        "created_at": trail["created_at"],
        "index_version": trail["index"]["version"],
        "factory": trail["index"]["factory"],
        "extractor": trail["extractor"]["identity"],
        "image_ids": list(trail["image_ids"]),
        "seed": evaluation["seed"],
        "k": evaluation["k"],
        "nprobe": evaluation["nprobe"],
        "edits": [edit.to_dict() for edit in edits.values()],
        "audit": trail,
        "result": result.to_dict(),
        "copy_detection": copy_detection_section(result),
        "quality": dict(quality),
        "markdown": result.to_markdown(),
    }


def load_schema() -> dict[str, Any]:
    """The JSON Schema of the report document, shipped with the package."""
    text = resources.files("aindex_assets.lib").joinpath("report_schema.json").read_text()
    return json.loads(text)


# ------------------------------------------------------------------------- text views


def number_cell(value: float | None, digits: int = 3) -> str:
    """A table cell: the value rounded, or a dash when there is none."""
    return "–" if value is None else f"{value:.{digits}f}"


def quality_markdown(quality: Mapping[str, Any]) -> str:
    """Table of the quality statistics: one line per metric."""
    header = "| metric | n | mean | min | p5 | p50 | p95 | max |\n|---|---|---|---|---|---|---|---|"
    lines = [header]
    for name, label, digits in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("linf", "L∞", 1)):
        s = quality[name]
        cells = [number_cell(s[key], digits) for key in ("mean", "min", "p5", "p50", "p95", "max")]
        lines.append(f"| {label} | {s['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def image_names(payload: Mapping[str, Any]) -> dict[int, str]:
    """Image id -> source key; empty for documents written before names were recorded."""
    audit = payload["audit"]
    return dict(zip(audit["image_ids"], audit.get("image_names", []), strict=False))


def image_label(image_id: int, names: Mapping[int, str]) -> str:
    """`12 (inbox/cat.jpg)`, or `12` when the name is not known."""
    name = names.get(image_id)
    return f"{image_id} ({name})" if name else str(image_id)


def rank_one_hits(payload: Mapping[str, Any]) -> dict[str, dict[str, tuple[int, int]]]:
    """Per edit and variant: (edited copies found at rank 1, edited copies searched)."""
    table: dict[str, dict[str, tuple[int, int]]] = {}
    for row in payload["result"]["rows"]:
        found = round((row["recall_at_1"] or 0.0) * row["n"])
        table.setdefault(row["edit"], {})[row["variant"]] = (found, row["n"])
    return table


def conclusion(payload: Mapping[str, Any]) -> str:
    """One sentence: edited copies activation gained (or lost) at rank 1, at what PSNR, and
    which edits got worse. Counts, not averages, so that a reader can check them by hand."""
    by_edit = rank_one_hits(payload)
    found = {v: sum(cells[v][0] for cells in by_edit.values()) for v in ("passive", "active")}
    total = sum(cells["passive"][1] for cells in by_edit.values())
    gained = found["active"] - found["passive"]
    if gained > 0:
        sentence = f"Activation found {gained} more of {total} edited copies at rank 1"
    elif gained < 0:
        sentence = f"Activation found {-gained} fewer of {total} edited copies at rank 1"
    else:
        sentence = f"Activation found as many of {total} edited copies at rank 1 as without it"
    rates = " → ".join(f"{v} {number_cell(found[v] / total)}" for v in ("passive", "active"))
    mean_psnr = payload["quality"]["psnr"]["mean"]
    quality = (
        "with every image released unchanged"
        if mean_psnr is None
        else f"at a mean PSNR of {mean_psnr:.1f} dB"
    )
    worse = [e for e, cells in by_edit.items() if cells["active"][0] < cells["passive"][0]]
    return f"{sentence} ({rates}), {quality}; {_worse_clause(worse, len(by_edit))}."


def _worse_clause(worse: Sequence[str], n_edits: int, shown: int = 5) -> str:
    if not worse:
        return "no edit got worse at rank 1"
    names = ", ".join(worse[:shown]) + (f" and {len(worse) - shown} more" if worse[shown:] else "")
    return f"{len(worse)} of {n_edits} edits got worse at rank 1: {names}"


def audit_lines(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs of the audit trail, for text and HTML views."""
    audit = payload["audit"]
    index, evaluation, negatives = audit["index"], audit["evaluation"], audit["negatives"]
    params = audit["activation"]["params"]
    names = image_names(payload)
    return [
        ("report", f"{payload['report_id']} (batch {payload['batch_id']})"),
        ("created", payload["created_at"]),
        ("package", f"{audit['package']['name']} {audit['package']['version'] or 'unknown'}"),
        ("git commit", audit["git_commit"] or "unknown"),
        ("extractor", f"{audit['extractor']['identity']} ({audit['extractor'].get('spec')})"),
        ("index", f"version {index['version']}, {index['factory']}"),
        (
            "search",
            f"k={evaluation['k']}, nprobe={evaluation['nprobe']}, edit seed {evaluation['seed']},"
            f" edits: {evaluation['edit_set']}",
        ),
        ("activation parameters", json.dumps(params, sort_keys=True)),
        ("images", ", ".join(image_label(i, names) for i in audit["image_ids"])),
        (
            "non-matching queries",
            f"{len(negatives['items'])} from {negatives['source']}"
            + (f" ({negatives['prefix']})" if negatives["source"] == "store" else ""),
        ),
        ("copy-detection score", _SCORES[evaluation.get("copy_detection_score", "index")]),
    ]


_SCORES = {
    "reranked": "top match re-ranked on the original descriptors (as `aindex query`)",
    "index": "the index's own scores, every top-k result",
}


def report_markdown(payload: Mapping[str, Any]) -> str:
    """The whole report as markdown: conclusion, audit trail, recall, copy detection, quality."""
    lines = [f"# Robustness report {payload['report_id']} — batch {payload['batch_id']}", ""]
    lines += [conclusion(payload), ""]
    lines += [f"- **{label}**: {value}" for label, value in audit_lines(payload)]
    lines += ["", "## Recall of edited copies, passive vs active", "", payload["markdown"], ""]
    lines += ["## Copy detection (all edits pooled)", "", copy_detection_markdown(payload)]
    lines += [
        "",
        "## Image quality of the released images",
        "",
        quality_markdown(payload["quality"]),
        "",
        "## What the numbers mean",
        "",
        *(f"- **{term}**: {text}" for term, text in report_terms(payload).items()),
    ]
    return "\n".join(lines)


def copy_detection_markdown(payload: Mapping[str, Any]) -> str:
    """The pooled copy-detection table (μAP, TPR at each report FPR, recall at P90), notes."""
    tprs = [f"TPR @ {fpr * 100:g}% FPR" for fpr in REPORT_FPRS]
    header = ["variant", "μAP", *tprs, "recall @ P90"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, cd in payload["copy_detection"].items():
        cells = [
            number_cell(cd["micro_ap"]),
            *(tpr_cell(operating_point_of(cd, fpr)) for fpr in REPORT_FPRS),
            number_cell(cd["recall_at_p90"]),
        ]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    notes = unresolved_notes(payload)
    lines += ["", *("- " + note.replace("*", "\\*", 1) for note in notes)] if notes else []
    return "\n".join(lines)


def compare_markdown(a: Mapping[str, Any], b: Mapping[str, Any]) -> str:
    """Two reports side by side: R@1 per edit and variant, the pooled μAP, the audit diff."""
    title = f"# Report {a['report_id']} ({a['batch_id']}) vs {b['report_id']} ({b['batch_id']})"
    lines = [title, "", "| | A | B |", "|---|---|---|"]
    for (label, left), (_, right) in zip(audit_lines(a), audit_lines(b), strict=True):
        marker = "" if left == right else " ≠"
        lines.append(f"| {label}{marker} | {_cell(left)} | {_cell(right)} |")
    lines += ["", "| edit | A passive R@1 | A active R@1 | B passive R@1 | B active R@1 |"]
    lines.append("|---|---|---|---|---|")
    rows_a, rows_b = _recall_by_edit(a), _recall_by_edit(b)
    for edit in dict.fromkeys([*rows_a, *rows_b]):
        cells = [
            number_cell(r.get(edit, {}).get(v))
            for r in (rows_a, rows_b)
            for v in ("passive", "active")
        ]
        lines.append(f"| {edit} | " + " | ".join(cells) + " |")
    cells = [
        number_cell(p["copy_detection"].get(v, {}).get("micro_ap"))
        for p in (a, b)
        for v in ("passive", "active")
    ]
    lines.append("| **pooled μAP** | " + " | ".join(cells) + " |")
    for fpr in REPORT_FPRS:
        cells = [
            tpr_cell(operating_point_of(p["copy_detection"].get(v, {}), fpr))
            for p in (a, b)
            for v in ("passive", "active")
        ]
        lines.append(f"| **pooled {tpr_label(fpr)}** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(text: str, width: int = 60) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def _recall_by_edit(payload: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for row in payload["result"]["rows"]:
        table.setdefault(row["edit"], {})[row["variant"]] = row["recall_at_1"]
    return table
