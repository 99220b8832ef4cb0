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
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from aindex_assets.lib.report import image_label, image_names

COLOURS = {"passive": "#9e9e9e", "active": "#1f77b4"}
CHANGE_COLOURS = {"gain": "#2ca02c", "loss": "#d62728"}
MIN_CHANGE_SPAN = 0.05  # the change axis spans at least ±0.05 even when nothing changed
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


def recall_figure(payload: Mapping[str, Any]) -> Figure:
    """Recall@1 per edit, passive and active bars side by side; below, active − passive."""
    rows = payload["result"]["rows"]
    edits = list(dict.fromkeys(row["edit"] for row in rows))
    recall = {(row["edit"], row["variant"]): row["recall_at_1"] or 0.0 for row in rows}
    variants = [v for v in COLOURS if any(row["variant"] == v for row in rows)]
    figure = Figure(figsize=(max(6.0, 0.45 * len(edits)), 4.6))
    bars, change = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    x, width = np.arange(len(edits)), 0.8 / len(variants)
    for i, variant in enumerate(variants):
        heights = [recall.get((edit, variant), 0.0) for edit in edits]
        bars.bar(x + (i - (len(variants) - 1) / 2) * width, heights, width, label=variant,
                 color=COLOURS[variant])  # fmt: skip
    bars.set_ylim(0, 1.05)
    bars.set_ylabel("recall@1")
    bars.set_title(f"Recall@1 per edit, batch {payload['batch_id']}", fontsize=10)
    # Outside the axes: inside, it hid the bars of whichever edits sat under it.
    bars.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    bars.grid(axis="y", alpha=0.3)
    differences = [recall.get((e, "active"), 0.0) - recall.get((e, "passive"), 0.0) for e in edits]
    change_panel(change, x, differences)
    change.set_xticks(x, edits, rotation=60, ha="right", fontsize=8)
    return figure


def change_panel(axes: Axes, x: np.ndarray, differences: Sequence[float]) -> None:
    """Active − passive per edit: gains green, losses red, each labelled with its value.

    The range is fitted to the largest change, not 0..1, so that one copy in a hundred
    still makes a visible bar; a zero change is labelled, so it is not read as missing.
    """
    colours = [CHANGE_COLOURS["loss" if d < 0 else "gain"] for d in differences]
    axes.bar(x, differences, 0.6, color=colours)
    axes.axhline(0.0, color="#444444", linewidth=0.8)
    span = max(MIN_CHANGE_SPAN, 1.3 * max((abs(d) for d in differences), default=0.0))
    axes.set_ylim(-span, span)
    for position, difference in zip(x, differences, strict=True):
        label = f"{difference:+.3f}" if difference else "0"
        va = "top" if difference < 0 else "bottom"
        axes.text(position, difference, label, ha="center", va=va, fontsize=7)
    axes.set_ylabel("active − passive", fontsize=8)
    axes.grid(axis="y", alpha=0.3)


def precision_recall_figure(payload: Mapping[str, Any]) -> Figure:
    """The pooled copy-detection precision-recall curve, passive vs active."""
    figure = Figure(figsize=(4.5, 3.8))
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
    # Below the axes: the curves run along the top and right edges, where a legend sits.
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    axes.grid(alpha=0.3)
    return figure


def psnr_figure(payload: Mapping[str, Any]) -> Figure:
    """Histogram of the PSNR of the released images (infinite values left out)."""
    values = [q["psnr"] for q in payload["quality"]["per_image"] if q["psnr"] is not None]
    figure = Figure(figsize=(4.5, 3.0))
    axes = figure.add_subplot()
    axes.hist(values, bins=max(5, min(30, len(values))), color=COLOURS["active"])
    axes.set_xlabel("PSNR (dB)")
    axes.set_ylabel("images")
    axes.set_title(f"PSNR of {len(values)} released images", fontsize=10)
    return figure


def amplified_difference(
    original: Image.Image, activated: Image.Image
) -> tuple[Image.Image, float]:
    """|activated - original| stretched so that its largest value is white; and the gain."""
    a = np.asarray(original.convert("RGB"), dtype=np.int16)
    b = np.asarray(activated.convert("RGB").resize(original.size), dtype=np.int16)
    difference = np.abs(b - a).astype(np.float64)
    gain = 255.0 / max(float(difference.max()), 1.0)
    return Image.fromarray(np.clip(difference * gain, 0, 255).astype(np.uint8)), gain


def thumbnail_difference(
    original: Image.Image, activated: Image.Image
) -> tuple[np.ndarray, float] | None:
    """The amplified difference as a thumbnail, stretched again so its brightest 1% saturate
    (shrinking averages a fine perturbation towards black); and the total gain. None when
    the image was released unchanged."""
    difference, gain = amplified_difference(original, activated)
    if not np.asarray(difference).any():
        return None
    small = _thumbnail(difference).astype(np.float64)
    extra = 255.0 / max(float(np.percentile(small, 99)), 1.0)
    return np.clip(small * extra, 0, 255).astype(np.uint8), gain * extra


def _thumbnail(image: Image.Image) -> np.ndarray:
    thumbnail = image.convert("RGB")
    thumbnail.thumbnail((EXAMPLE_SIDE, EXAMPLE_SIDE))
    return np.asarray(thumbnail)


def examples_figure(examples: Sequence[tuple[str, Image.Image, Image.Image]]) -> Figure:
    """One row per (label, original, activated): the two and their amplified difference."""
    figure = Figure(figsize=(6.0, 2.0 * max(1, len(examples))))
    for row, (label, original, activated) in enumerate(examples):
        panels = [(_thumbnail(original), f"original {label}"), (_thumbnail(activated), "activated")]
        shown = thumbnail_difference(original, activated)
        if shown is None:
            panels.append((np.zeros_like(panels[0][0]), "no difference"))
        else:
            panels.append((shown[0], f"|difference| x{shown[1]:.0f}"))
        for column, (pixels, panel_title) in enumerate(panels):
            axes = figure.add_subplot(len(examples), 3, 3 * row + column + 1)
            axes.imshow(pixels)
            axes.set_title(panel_title, fontsize=8)
            axes.axis("off")
    return figure


def example_label(image_id: int, names: Mapping[int, str], width: int = 18) -> str:
    """`12 (cat.jpg)`: the id and the end of its file name, short enough for a panel title."""
    name = names.get(image_id, "").rsplit("/", 1)[-1]
    short = name if len(name) <= width else "…" + name[-(width - 1) :]
    return image_label(image_id, {image_id: short})


def report_figures(
    payload: Mapping[str, Any], examples: Sequence[tuple[int, Image.Image, Image.Image]] = ()
) -> dict[str, bytes]:
    """All figures by name: recall_at_1, precision_recall, psnr_histogram and examples."""
    figures = {
        "recall_at_1": _png(recall_figure(payload)),
        "precision_recall": _png(precision_recall_figure(payload)),
        "psnr_histogram": _png(psnr_figure(payload)),
    }
    if examples:
        names = image_names(payload)
        labelled = [(example_label(i, names), o, a) for i, o, a in examples]
        figures["examples"] = _png(examples_figure(labelled))
    return figures


FIGURE_TITLES = {
    "recall_at_1": "Recall@1 per edit, passive vs active, and the change (active − passive)",
    "precision_recall": "Copy-detection precision-recall curve (all edits pooled)",
    "psnr_histogram": "PSNR of the released images",
    "examples": "Examples: original, activated, amplified difference",
}
