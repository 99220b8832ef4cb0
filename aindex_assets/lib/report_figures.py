"""Figures of a robustness report, as PNG bytes (matplotlib's Agg canvas, no pyplot).

Every figure but the examples is drawn from the report document alone, so a stored
report can be redrawn. Figures are small (about 640 px wide, a few tens of kB) because
they are embedded as data URIs in the HTML report and in Dagster's metadata.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

COLOURS = {"passive": "#9e9e9e", "active": "#1f77b4"}
DPI = 80
EXAMPLE_SIDE = 160


def _png(figure: Figure) -> bytes:
    """The figure as a 256-colour PNG: plots lose nothing, photo thumbnails stay small."""
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    rendered = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    buffer = io.BytesIO()
    rendered.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def recall_bar_chart(payload: Mapping[str, Any]) -> bytes:
    """Recall@1 per edit, passive and active bars side by side."""
    rows = payload["result"]["rows"]
    edits = list(dict.fromkeys(row["edit"] for row in rows))
    recall = {(row["edit"], row["variant"]): row["recall_at_1"] for row in rows}
    variants = [v for v in COLOURS if any(row["variant"] == v for row in rows)]
    figure = Figure(figsize=(max(6.0, 0.45 * len(edits)), 3.2))
    axes = figure.add_subplot()
    x, width = np.arange(len(edits)), 0.8 / len(variants)
    for i, variant in enumerate(variants):
        heights = [recall.get((edit, variant)) or 0.0 for edit in edits]
        axes.bar(x + (i - (len(variants) - 1) / 2) * width, heights, width, label=variant,
                 color=COLOURS[variant])  # fmt: skip
    axes.set_xticks(x, edits, rotation=60, ha="right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("recall@1")
    axes.set_title(f"Recall@1 per edit, batch {payload['batch_id']}", fontsize=10)
    axes.legend(fontsize=8, loc="lower left")
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def precision_recall_chart(payload: Mapping[str, Any]) -> bytes:
    """The pooled copy-detection precision-recall curve, passive vs active."""
    figure = Figure(figsize=(4.5, 3.4))
    axes = figure.add_subplot()
    for variant, section in payload["copy_detection"].items():
        curve = section["curve"]
        ap = section["micro_ap"]
        parts = [] if ap is None else [f"μAP {ap:.3f}"]
        for point in section.get("operating_points", [])[:1]:  # the first report FPR: 1%
            mark = "" if point["resolved"] else "*"
            parts.append(f"TPR {point['tpr']:.2f}{mark} at {point['target_fpr'] * 100:g}% FPR")
        label = f"{variant} ({', '.join(parts)})" if parts else variant
        axes.plot(curve["recall"], curve["precision"], label=label, color=COLOURS.get(variant))
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.05)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title("Copy detection, all edits pooled", fontsize=10)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)
    return _png(figure)


def psnr_histogram(payload: Mapping[str, Any]) -> bytes:
    """Histogram of the PSNR of the released images (infinite values left out)."""
    values = [q["psnr"] for q in payload["quality"]["per_image"] if q["psnr"] is not None]
    figure = Figure(figsize=(4.5, 3.0))
    axes = figure.add_subplot()
    axes.hist(values, bins=max(5, min(30, len(values))), color=COLOURS["active"])
    axes.set_xlabel("PSNR (dB)")
    axes.set_ylabel("images")
    axes.set_title(f"PSNR of {len(values)} released images", fontsize=10)
    return _png(figure)


def amplified_difference(
    original: Image.Image, activated: Image.Image
) -> tuple[Image.Image, float]:
    """|activated - original| stretched so that its largest value is white; and the gain."""
    a = np.asarray(original.convert("RGB"), dtype=np.int16)
    b = np.asarray(activated.convert("RGB").resize(original.size), dtype=np.int16)
    difference = np.abs(b - a).astype(np.float64)
    gain = 255.0 / max(float(difference.max()), 1.0)
    return Image.fromarray(np.clip(difference * gain, 0, 255).astype(np.uint8)), gain


def examples_grid(pairs: Sequence[tuple[int, Image.Image, Image.Image]]) -> bytes:
    """One row per (image id, original, activated): the two and their amplified difference."""
    figure = Figure(figsize=(6.0, 2.0 * max(1, len(pairs))))
    for row, (image_id, original, activated) in enumerate(pairs):
        difference, gain = amplified_difference(original, activated)
        panels = [
            (original, f"original {image_id}"),
            (activated, "activated"),
            (difference, f"|difference| x{gain:.0f}"),
        ]
        for column, (image, title) in enumerate(panels):
            axes = figure.add_subplot(len(pairs), 3, 3 * row + column + 1)
            thumbnail = image.convert("RGB")
            thumbnail.thumbnail((EXAMPLE_SIDE, EXAMPLE_SIDE))
            axes.imshow(np.asarray(thumbnail))
            axes.set_title(title, fontsize=8)
            axes.axis("off")
    return _png(figure)


def report_figures(
    payload: Mapping[str, Any], examples: Sequence[tuple[int, Image.Image, Image.Image]] = ()
) -> dict[str, bytes]:
    """All figures by name: recall_at_1, precision_recall, psnr_histogram and examples."""
    figures = {
        "recall_at_1": recall_bar_chart(payload),
        "precision_recall": precision_recall_chart(payload),
        "psnr_histogram": psnr_histogram(payload),
    }
    if examples:
        figures["examples"] = examples_grid(examples)
    return figures


FIGURE_TITLES = {
    "recall_at_1": "Recall@1 per edit, passive vs active",
    "precision_recall": "Copy-detection precision-recall curve (all edits pooled)",
    "psnr_histogram": "PSNR of the released images",
    "examples": "Examples: original, activated, amplified difference",
}
