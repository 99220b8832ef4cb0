"""The robustness report as one self-contained HTML file.

Everything is inline: the style sheet, and the figures as `data:image/png;base64` URIs;
the page loads nothing from anywhere (no script, no font, no link). Every piece of text
that comes from data (batch ids, extractor specs, edit and image names) is HTML-escaped.

The page is written for a reader who did not run it: a one-line conclusion counted from
the data, the meaning of every term, the number of queries on every row, rows where
active is below passive flagged and explained, and every image and negative by name.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from aindex_assets.lib.copydetection import REPORT_FPRS
from aindex_assets.lib.evaluation import tpr_key, tpr_label
from aindex_assets.lib.report import (
    RECALL_METRICS,
    audit_lines,
    conclusion,
    image_names,
    number_cell,
    operating_point_of,
    report_terms,
    tpr_cell,
    tpr_term,
    unresolved_notes,
)
from aindex_assets.lib.report_figures import FIGURE_TITLES

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.average td { font-weight: bold; }
tr.worse td { background: #fdecea; }
td.below { color: #b3261e; font-weight: bold; }
td.flag { color: #b3261e; text-align: left; }
.name, .hash, #activation-table th, #activation-table td { text-align: left; }
td.name, td.hash { font-family: monospace; overflow-wrap: anywhere; }
#recall-table { font-size: 0.8em; }
div.wide { overflow-x: auto; }
p.conclusion { font-size: 1.15em; padding: 0.5em 0.8em; border-left: 4px solid #1f77b4;
  background: #f2f7fc; }
dl.audit, dl.definitions { display: grid; grid-template-columns: max-content auto;
  gap: 0.2em 1em; }
dl.audit dt, dl.definitions dt { font-weight: bold; }
dl.audit dd, dl.definitions dd { margin: 0; }
dl.audit dd { font-family: monospace; overflow-wrap: anywhere; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; }
p.note { font-size: 0.85em; color: #555; margin: 0.2em 0; }
"""

FLAG = "▼"
# Beyond this, active is below passive; below it, two floats of one computation disagree.
_TOLERANCE = 1e-9

_FLAG_NOTE = (
    f"{FLAG} marks a row where active is below passive on the metrics named: on that edit, "
    "the activated images' copies were found or detected less well than the originals'. "
    "Activation moves each descriptor towards its own index entry as seen through the "
    "unedited image and a few random edits; a different or stronger edit can move it "
    "towards another image's entry instead, and with few images one copy is 1/n of the "
    "recall, so a small drop can be chance."
)

Cell = str | tuple[str, str]  # the text, or (text, CSS class)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(cell: Cell, tag: str) -> str:
    text, css = (cell, "") if isinstance(cell, str) else cell
    attribute = f' class="{css}"' if css else ""
    return f"<{tag}{attribute}>{escape(text)}</{tag}>"


def _row(cells: Sequence[Cell], tag: str = "td", css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<tr{attribute}>" + "".join(_cell(c, tag) for c in cells) + "</tr>"


def _table(table_id: str, header: Sequence[Cell], rows: Sequence[str]) -> str:
    """A table that scrolls sideways on its own when it is wider than the page."""
    table = f'<table id="{table_id}">' + _row(header, "th") + "".join(rows) + "</table>"
    return f'<div class="wide">{table}</div>'


def below(passive: float | None, active: float | None) -> bool:
    """Active worse than passive; False when either is missing."""
    return passive is not None and active is not None and active < passive - _TOLERANCE


def worse_metrics(
    values: Mapping[str, Mapping[str, float | None]], metrics: Sequence[tuple[str, str]]
) -> list[str]:
    """Labels of the metrics on which the active value is below the passive one."""
    passive, active = values.get("passive", {}), values.get("active", {})
    return [label for key, label in metrics if below(passive.get(key), active.get(key))]


def _flagged_row(label: str, cells: Sequence[Cell], worse: Sequence[str], css: str = "") -> str:
    """The label, the flag, the cells; marked `worse` when active is below passive.

    The flag comes second, not last, so that it shows without scrolling a wide table.
    """
    flag = (f"{FLAG} {', '.join(worse)}", "flag") if worse else ""
    classes = " ".join(c for c in (css, "worse" if worse else "") if c)
    return _row([label, flag, *cells], css=classes)


def _flag_note(flagged: bool) -> str:
    if not flagged:
        return '<p class="note">Active is at or above passive on every row and metric.</p>'
    return f'<p class="note flag-note">{escape(_FLAG_NOTE)}</p>'


def recall_metrics(average: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, label) of the per-edit metrics a result holds, in the table's order."""
    metrics = [(m, label) for m, label in RECALL_METRICS if m in average]
    metrics.append(("micro_ap", "μAP"))
    return metrics + [(tpr_key(f), tpr_label(f)) for f in REPORT_FPRS if tpr_key(f) in average]


def recall_table(payload: Mapping[str, Any]) -> str:
    """One row per edit plus the average: the queries, passive and active for each metric,
    and a flag where active is below passive."""
    result = payload["result"]
    variants = list(result["average"])
    metrics = recall_metrics(result["average"][variants[0]])
    header = [
        "edit",
        "active below passive",
        "queries",
        "non-matching queries",
        *(f"{v} {label}" for _, label in metrics for v in variants),
    ]
    by_key = {(r["edit"], r["variant"]): r for r in result["rows"]}
    edits = list(dict.fromkeys(r["edit"] for r in result["rows"]))
    counted = [by_key[(e, variants[0])] for e in edits]  # both variants search as many
    table = [
        (edit, {v: by_key[(edit, v)] for v in variants}, [row["n"], row["n_negatives"]], "edit")
        for edit, row in zip(edits, counted, strict=True)
    ]
    totals = [sum(row[key] for row in counted) for key in ("n", "n_negatives")]
    table.append(("average", result["average"], totals, "average"))
    lines = [_metrics_row(label, *rest, metrics) for label, *rest in table]
    flagged = any(worse_metrics(values, metrics) for _, values, _, _ in table)
    return _table("recall-table", header, lines) + _flag_note(flagged)


def _metrics_row(
    label: str,
    values: Mapping[str, Mapping[str, Any]],
    counts: Sequence[int],
    css: str,
    metrics: Sequence[tuple[str, str]],
) -> str:
    """Counts, each metric for each variant (active cells below passive marked), the flag."""
    worse = worse_metrics(values, metrics)
    cells: list[Cell] = [str(n) for n in counts]
    cells += [
        (number_cell(values[v].get(key)), "below" if v == "active" and name in worse else "")
        for key, name in metrics
        for v in values
    ]
    return _flagged_row(label, cells, worse, css)


def quality_table(quality: Mapping[str, Any]) -> str:
    keys = ("n", "mean", "min", "p5", "p50", "p95", "max")
    lines = []
    for name, label, digits in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("linf", "L∞", 1)):
        stats = quality[name]
        cells = [str(stats["n"]), *(number_cell(stats[k], digits) for k in keys[1:])]
        lines.append(_row([label, *cells], css="quality"))
    header = ["metric", "images", *keys[1:]]
    note = (
        '<p class="note">An image released unchanged has an infinite PSNR: it is counted '
        "for SSIM and L∞ but not for PSNR.</p>"
    )
    return _table("quality-table", header, lines) + note


def _pooled_counts(payload: Mapping[str, Any], variant: str) -> list[str]:
    """Matching and non-matching queries of a variant, every edit's together."""
    rows = [r for r in payload["result"]["rows"] if r["variant"] == variant]
    return [str(sum(r["n"] for r in rows)), str(sum(r["n_negatives"] for r in rows))]


def copy_detection_table(payload: Mapping[str, Any]) -> str:
    """Pooled μAP and TPR at each report FPR (`*`: rate not resolved), then the notes."""
    tprs = [(tpr_key(fpr), tpr_term(fpr)) for fpr in REPORT_FPRS]
    metrics = [("micro_ap", "μAP"), *tprs, ("recall_at_p90", "recall at precision 0.9")]
    header = [
        "variant",
        "active below passive",
        "queries",
        "non-matching queries",
        *(label for _, label in metrics),
        "predictions",
    ]
    sections = payload["copy_detection"]
    worse = worse_metrics({v: _pooled_values(s) for v, s in sections.items()}, metrics)
    lines = []
    for variant, section in sections.items():
        shown = [
            number_cell(section["micro_ap"]),
            *(tpr_cell(operating_point_of(section, fpr)) for fpr in REPORT_FPRS),
            number_cell(section["recall_at_p90"]),
        ]
        flags = worse if variant == "active" else []
        cells: list[Cell] = [
            *_pooled_counts(payload, variant),
            *(
                (text, "below" if label in flags else "")
                for text, (_, label) in zip(shown, metrics, strict=True)
            ),
            str(section["predictions"]),
        ]
        lines.append(_flagged_row(variant, cells, flags))
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in unresolved_notes(payload))
    return _table("copy-detection-table", header, lines) + _flag_note(bool(worse)) + notes


def _pooled_values(section: Mapping[str, Any]) -> dict[str, float | None]:
    points = {tpr_key(fpr): operating_point_of(section, fpr) for fpr in REPORT_FPRS}
    return {
        "micro_ap": section["micro_ap"],
        "recall_at_p90": section["recall_at_p90"],
        **{key: None if point is None else point["tpr"] for key, point in points.items()},
    }


def definitions(payload: Mapping[str, Any]) -> str:
    """The terms of the report in plain words; recall cut-offs only where the tables show them."""
    items = "".join(
        f"<dt>{escape(term)}</dt><dd>{escape(text)}</dd>"
        for term, text in report_terms(payload).items()
    )
    return f'<dl class="definitions" id="definitions">{items}</dl>'


def audit_list(payload: Mapping[str, Any]) -> str:
    """The audit trail; the long values (parameters, images) point to tables of their own."""
    pointers = {
        "activation parameters": "in the table below",
        "images": f"{len(payload['image_ids'])}, listed under “Images evaluated”",
    }
    items = "".join(
        f"<dt>{escape(label)}</dt><dd>{escape(pointers.get(label, str(value)))}</dd>"
        for label, value in audit_lines(payload)
    )
    return f'<dl class="audit">{items}</dl>'


def parameter_value(value: Any) -> str:
    """A parameter as text: sequences joined by commas, mappings as `key=value`."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={parameter_value(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(parameter_value(v) for v in value)
    return "none" if value is None else str(value)


def activation_table(payload: Mapping[str, Any]) -> str:
    """Activation parameters, one row per name; one column per distinct set in the batch."""
    sets = payload["audit"]["activation"]["params"]
    names = list(dict.fromkeys(name for params in sets for name in params))
    values = ["value"] if len(sets) == 1 else [f"set {i + 1}" for i in range(len(sets))]
    lines = [
        _row([name, *(parameter_value(p[name]) if name in p else "–" for p in sets)])
        for name in names
    ]
    return _table("activation-table", ["name", *values], lines)


def images_table(payload: Mapping[str, Any]) -> str:
    """Each evaluated image: id, name, quality, and under how many edits it was found first."""
    names = image_names(payload)
    quality = {q["image_id"]: q for q in payload["quality"]["per_image"]}
    ranks = payload["result"]["per_query_ranks"]
    edits = list(dict.fromkeys(r["edit"] for r in payload["result"]["rows"]))
    variants = list(payload["result"]["average"])
    lines = []
    for position, image_id in enumerate(payload["image_ids"]):
        first = [sum(ranks[f"{e}/{v}"][position] == 0 for e in edits) for v in variants]
        found = [f"{n} of {len(edits)}" for n in first]
        name = (names.get(image_id, "–"), "name")
        lines.append(_row([str(image_id), name, *_quality_cells(quality.get(image_id)), *found]))
    header: list[Cell] = ["id", ("name", "name"), "PSNR (dB)", "SSIM", "L∞"]
    return _table("images-table", header + [f"{v}: edits found at rank 1" for v in variants], lines)


def _quality_cells(quality: Mapping[str, Any] | None) -> list[str]:
    """PSNR, SSIM and L∞ of one image; a null PSNR is an image released unchanged."""
    if quality is None:
        return ["–"] * 3
    psnr = "∞" if quality["psnr"] is None else number_cell(quality["psnr"], 2)
    return [psnr, number_cell(quality["ssim"], 4), number_cell(quality["linf"], 1)]


def negatives_table(payload: Mapping[str, Any]) -> str:
    """The non-matching photos by name and SHA-256, and where they came from."""
    negatives = payload["audit"]["negatives"]
    items = negatives["items"]
    edits = len(dict.fromkeys(r["edit"] for r in payload["result"]["rows"]))
    where = (
        "Photos packaged with the code"
        if negatives["source"] == "packaged"
        else f"Photos in the object store under {negatives['prefix']}"
    )
    intro = (
        f'<p class="note">{escape(where)}, none of them in the index. Each of the '
        f"{len(items)} is searched under every edit: {len(items) * edits} non-matching "
        "queries.</p>"
    )
    lines = [_row([(i["name"], "name"), (i["sha256"], "hash")]) for i in items]
    return intro + _table("negatives-table", [("name", "name"), ("SHA-256", "hash")], lines)


def figures_html(figures: Mapping[str, bytes]) -> str:
    return "".join(
        f'<figure><img alt="{escape(FIGURE_TITLES.get(name, name))}" src="{data_uri(png)}">'
        f"<figcaption>{escape(FIGURE_TITLES.get(name, name))}</figcaption></figure>"
        for name, png in figures.items()
    )


def render_html(payload: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The whole report: title, conclusion, definitions, audit trail, tables and figures."""
    title = escape(f"Robustness report {payload['report_id']}, batch {payload['batch_id']}")
    body = [
        f"<h1>{title}</h1>",
        f'<p class="conclusion" id="conclusion">{escape(conclusion(payload))}</p>',
        "<h2>What the numbers mean</h2>",
        definitions(payload),
        "<h2>Audit trail</h2>",
        audit_list(payload),
        "<h3>Activation parameters</h3>",
        activation_table(payload),
        "<h2>Recall of edited copies, passive vs active</h2>",
        recall_table(payload),
        "<h2>Figures</h2>",
        figures_html(figures),
        "<h2>Copy detection, all edits pooled</h2>",
        copy_detection_table(payload),
        "<h2>Image quality of the released images</h2>",
        quality_table(payload["quality"]),
        "<h2>Images evaluated</h2>",
        images_table(payload),
        "<h2>Non-matching photos</h2>",
        negatives_table(payload),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{_STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def figures_markdown(figures: Mapping[str, bytes]) -> str:
    """Markdown embedding the figures as data URIs (rendered by Dagster's metadata view)."""
    return "\n\n".join(
        f"**{FIGURE_TITLES.get(name, name)}**\n\n![{name}]({data_uri(png)})"
        for name, png in figures.items()
    )
