"""The robustness report as one self-contained HTML file.

Everything is inline: the style sheet, and the figures as `data:image/png;base64` URIs;
the page loads nothing from anywhere (no script, no font, no link). Every piece of text
that comes from data (batch ids, extractor specs, edit names) is HTML-escaped.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from html import escape
from typing import Any

from aindex_assets.lib.copydetection import REPORT_FPRS
from aindex_assets.lib.evaluation import tpr_key, tpr_label
from aindex_assets.lib.report import (
    audit_lines,
    number_cell,
    operating_point_of,
    tpr_cell,
    unresolved_notes,
)
from aindex_assets.lib.report_figures import FIGURE_TITLES

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.average td { font-weight: bold; }
dl.audit { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.audit dt { font-weight: bold; }
dl.audit dd { margin: 0; font-family: monospace; overflow-wrap: anywhere; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figcaption { font-size: 0.85em; color: #555; }
p.note { font-size: 0.85em; color: #555; margin: 0.2em 0; }
"""

_RECALL_METRICS = (("recall_at_1", "R@1"), ("recall_at_10", "R@10"), ("mrr", "1/(rank+1)"))


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _row(cells: list[str], tag: str = "td", css: str = "") -> str:
    attribute = f' class="{css}"' if css else ""
    return f"<tr{attribute}>" + "".join(f"<{tag}>{escape(c)}</{tag}>" for c in cells) + "</tr>"


def recall_table(payload: Mapping[str, Any]) -> str:
    """One row per edit plus the average; passive and active columns for each metric."""
    result = payload["result"]
    variants = list(result["average"])
    metrics = [(m, label) for m, label in _RECALL_METRICS if m in result["average"][variants[0]]]
    metrics.append(("micro_ap", "μAP"))
    metrics += [
        (tpr_key(fpr), tpr_label(fpr))
        for fpr in REPORT_FPRS
        if tpr_key(fpr) in result["average"][variants[0]]
    ]
    header = ["edit"] + [f"{v} {label}" for _, label in metrics for v in variants]
    rows = {(r["edit"], r["variant"]): r for r in result["rows"]}
    lines = [_row(header, "th")]
    for edit in dict.fromkeys(r["edit"] for r in result["rows"]):
        cells = [number_cell(rows[(edit, v)].get(m)) for m, _ in metrics for v in variants]
        lines.append(_row([edit, *cells], css="edit"))
    averages = [number_cell(result["average"][v].get(m)) for m, _ in metrics for v in variants]
    lines.append(_row(["average", *averages], css="average"))
    return '<table id="recall-table">' + "".join(lines) + "</table>"


def quality_table(quality: Mapping[str, Any]) -> str:
    keys = ("n", "mean", "min", "p5", "p50", "p95", "max")
    lines = [_row(["metric", *keys], "th")]
    for name, label, digits in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 4), ("linf", "L∞", 1)):
        stats = quality[name]
        cells = [str(stats["n"]), *(number_cell(stats[k], digits) for k in keys[1:])]
        lines.append(_row([label, *cells], css="quality"))
    return '<table id="quality-table">' + "".join(lines) + "</table>"


def copy_detection_table(payload: Mapping[str, Any]) -> str:
    """Pooled μAP and TPR at each report FPR (`*`: rate not resolved), then the notes."""
    tprs = [f"TPR at {fpr * 100:g}% FPR" for fpr in REPORT_FPRS]
    header = ["variant", "μAP", *tprs, "recall at precision 0.9", "predictions"]
    lines = [_row(header, "th")]
    for variant, section in payload["copy_detection"].items():
        cells = [
            number_cell(section["micro_ap"]),
            *(tpr_cell(operating_point_of(section, fpr)) for fpr in REPORT_FPRS),
            number_cell(section["recall_at_p90"]),
        ]
        lines.append(_row([variant, *cells, str(section["predictions"])]))
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in unresolved_notes(payload))
    return '<table id="copy-detection-table">' + "".join(lines) + "</table>" + notes


def audit_list(payload: Mapping[str, Any]) -> str:
    items = "".join(
        f"<dt>{escape(label)}</dt><dd>{escape(str(value))}</dd>"
        for label, value in audit_lines(payload)
    )
    return f'<dl class="audit">{items}</dl>'


def figures_html(figures: Mapping[str, bytes]) -> str:
    return "".join(
        f'<figure><img alt="{escape(FIGURE_TITLES.get(name, name))}" src="{data_uri(png)}">'
        f"<figcaption>{escape(FIGURE_TITLES.get(name, name))}</figcaption></figure>"
        for name, png in figures.items()
    )


def render_html(payload: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """The whole report: title, audit trail, recall table, figures, copy detection, quality."""
    title = escape(f"Robustness report {payload['report_id']}, batch {payload['batch_id']}")
    body = [
        f"<h1>{title}</h1>",
        "<h2>Audit trail</h2>",
        audit_list(payload),
        "<h2>Recall of edited copies, passive vs active</h2>",
        recall_table(payload),
        "<h2>Figures</h2>",
        figures_html(figures),
        "<h2>Copy detection, all edits pooled</h2>",
        copy_detection_table(payload),
        "<h2>Image quality of the released images</h2>",
        quality_table(payload["quality"]),
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
