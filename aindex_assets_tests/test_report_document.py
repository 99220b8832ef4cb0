"""The report document, its figures and its HTML page, built from the hand-made evaluation.

The evaluation is the one of test_evaluation.py (solid colours, exact L2 search over four
stored vectors), so every number in the document is known in advance.
"""

import copy
import io
import json
import re
import subprocess
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image

from aindex_assets.lib.edits import PAPER_EDITS
from aindex_assets.lib.evaluation import evaluate_robustness
from aindex_assets.lib.report import (
    build_payload,
    compare_markdown,
    edits_for,
    git_commit,
    load_schema,
    quality_section,
    report_markdown,
)
from aindex_assets.lib.report_figures import (
    CHANGE_COLOURS,
    amplified_difference,
    example_label,
    examples_figure,
    precision_recall_figure,
    recall_figure,
    report_figures,
)
from aindex_assets.lib.report_html import (
    FLAG,
    activation_table,
    figures_markdown,
    parameter_value,
    render_html,
)
from aindex_assets_tests.test_evaluation import (
    ACTIVE,
    EDITS,
    IDS,
    NEGATIVES,
    PASSIVE,
    evaluate_reranked,
    exact_l2,
    mean_colour,
)

NAMES = ["inbox/red <1>.png", "inbox/green.png"]  # the source keys of IDS
QUALITY = [
    {"image_id": 10, "psnr": 40.0, "ssim": 0.99, "linf": 6.0},
    {"image_id": 12, "psnr": 44.0, "ssim": 0.97, "linf": 10.0},
    {"image_id": 14, "psnr": 42.0, "ssim": 0.98, "linf": 8.0},
    {"image_id": 16, "psnr": float("inf"), "ssim": 1.0, "linf": 0.0},  # released unchanged
]


def audit(report_id: int = 7, spec: str = "efficientnet_lite0") -> dict:
    return {
        "report_id": report_id,
        "batch_id": "20260101T000000Z-deadbeef",
        "created_at": "2026-01-01T00:00:00.000001Z",
        "extractor": {"identity": "ab" * 32, "spec": spec, "name": "lite0"},
        "index": {"version": 3, "factory": "Flat", "served_index_id": 5, "served_ntotal": 4},
        "activation": {
            "params": [{"iterations": 10, "seed": 0}],
            "seeds": [0],
            "index_versions": [3],
            "extractor_identities": ["ab" * 32],
        },
        "evaluation": {"seed": 0, "k": 2, "nprobe": 1, "edit_set": "paper"},
        "negatives": {
            "source": "packaged",
            "prefix": "negatives/",
            "items": [{"name": "blue.png", "sha256": "cd" * 32}],
        },
        "image_ids": IDS,
        "image_names": NAMES,
    }


def with_files(payload: dict) -> dict:
    report_id = payload["report_id"]
    return payload | {
        "files": {
            "json": f"reports/{payload['batch_id']}/robustness-{report_id:08d}.json",
            "html": f"reports/{payload['batch_id']}/robustness-{report_id:08d}.html",
            "figures": {"recall_at_1": f"reports/assets/{report_id:08d}/recall_at_1.png"},
        }
    }


@pytest.fixture(scope="module")
def payload() -> dict:
    result = evaluate_robustness(
        PASSIVE, ACTIVE, IDS, mean_colour, exact_l2, edits=EDITS, k=2, negatives=NEGATIVES
    )
    built = build_payload(result, audit(), quality_section(QUALITY), EDITS)
    return with_files(json.loads(json.dumps(built, allow_nan=False)))


@pytest.fixture(scope="module")
def reranked_payload() -> dict:
    """As the pipeline builds it: copy detection on the re-ranked top match."""
    result = evaluate_reranked()
    built = build_payload(result, audit(), quality_section(QUALITY), EDITS)
    return with_files(json.loads(json.dumps(built, allow_nan=False)))


@pytest.fixture(scope="module")
def figures(payload: dict) -> dict[str, bytes]:
    return report_figures(payload, [(10, PASSIVE[0], ACTIVE[0]), (12, PASSIVE[1], ACTIVE[1])])


def test_quality_statistics_worked_out_by_hand(payload: dict) -> None:
    psnr = payload["quality"]["psnr"]
    # The infinite PSNR stays out: 40, 42, 44 -> numpy's linear percentiles.
    assert psnr == {"n": 3, "mean": 42.0, "min": 40.0, "max": 44.0, "p5": 40.2, "p50": 42.0,
                    "p95": 43.8}  # fmt: skip
    assert payload["quality"]["ssim"]["n"] == 4
    assert payload["quality"]["ssim"]["min"] == 0.97
    assert payload["quality"]["linf"]["p50"] == 7.0
    assert payload["quality"]["per_image"][3] == {
        "image_id": 16,
        "psnr": None,
        "ssim": 1.0,
        "linf": 0.0,
    }
    assert quality_section([])["psnr"]["mean"] is None


def test_copy_detection_and_audit_in_the_document(payload: dict) -> None:
    passive = payload["copy_detection"]["passive"]
    assert passive["micro_ap"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 6 + 4 / 7) / 4)
    assert passive["predictions"] == 12 and passive["curve"]["recall"][-1] == 1.0
    assert payload["result"]["rows"][0]["n_negatives"] == 1
    assert payload["audit"]["package"]["name"] == "aindex_assets"
    assert payload["audit"]["package"]["version"]  # the installed distribution's version
    assert (payload["index_version"], payload["factory"], payload["k"]) == (3, "Flat", 2)
    assert [e["name"] for e in payload["edits"]] == ["none", "brightness_0.5"]
    assert payload["schema_version"] == 3
    assert payload["audit"]["evaluation"]["copy_detection_score"] == "index"
    # Without the re-rank a query's top match is its first result: the negative's is the
    # distractor 13 at distance 0, which ties the unedited copies, so nothing passes.
    points = {p["target_fpr"]: p for p in passive["operating_points"]}
    assert sorted(points) == [0.001, 0.01]
    assert points[0.01] | {"threshold": None} == {
        "target_fpr": 0.01, "tpr": 0.0, "fpr": 0.0, "threshold": None, "resolved": False,
        "n_matching": 4, "n_non_matching": 2,
    }  # fmt: skip


def test_reranked_document_scores_the_top_match_and_shows_tpr_at_fixed_fpr(
    reranked_payload: dict,
) -> None:
    jsonschema.validate(reranked_payload, load_schema())
    assert reranked_payload["audit"]["evaluation"]["copy_detection_score"] == "reranked"
    passive = reranked_payload["copy_detection"]["passive"]
    # The hand-made case of test_evaluation.py: T T F T T F pooled over 4 pairs.
    assert passive["micro_ap"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 5) / 4)
    assert passive["predictions"] == 6  # one per query with a catalog match
    one = passive["operating_points"][0]
    assert (one["target_fpr"], one["tpr"], one["fpr"], one["resolved"]) == (0.01, 0.5, 0.0, False)
    assert (one["n_matching"], one["n_non_matching"]) == (4, 4)
    row = reranked_payload["result"]["rows"][2]
    assert (row["edit"], row["variant"]) == ("brightness_0.5", "passive")
    assert row["tpr_at_fpr_0.01"] == 1.0
    text = report_markdown(reranked_payload)
    assert "| variant | μAP | TPR @ 1% FPR | TPR @ 0.1% FPR | recall @ P90 |" in text
    assert "| passive | 0.887 | 0.500* | 0.500* | 0.500 |" in text
    assert "not resolved at FPR 1% (passive, active): 4 non-matching queries" in text
    assert "needs at least 100" in text and "needs at least 1000" in text
    assert "copy-detection score**: top match re-ranked on the original descriptors" in text
    page = render_html(reranked_payload, {})
    assert "<th>TPR at 1% FPR</th><th>TPR at 0.1% FPR</th>" in page
    cells = "<td>passive</td><td></td><td>4</td><td>4</td><td>0.887</td><td>0.500*</td>"
    assert cells in page  # the queries, then the pooled values
    assert '<p class="note">* not resolved at FPR 0.1%' in page
    assert "<th>passive TPR@1%FPR</th>" in page  # per edit, in the recall table


def schema_2(payload: dict) -> dict:
    """The document as schema 2 wrote it: no operating points, TPRs or score kind."""
    old = json.loads(json.dumps(payload))
    old["schema_version"] = 2
    for section in old["copy_detection"].values():
        del section["operating_points"]
    for row in [*old["result"]["rows"], *old["result"]["average"].values()]:
        for key in ("tpr_at_fpr_0.01", "tpr_at_fpr_0.001"):
            row.pop(key, None)
    del old["audit"]["evaluation"]["copy_detection_score"]
    return old


def test_schema_2_documents_stay_readable(reranked_payload: dict) -> None:
    old = schema_2(reranked_payload)
    text, _, _ = report_markdown(old).partition("## What the numbers mean")
    assert "| passive | 0.887 | – | – | 0.500 |" in text
    assert "not resolved" not in text  # no note: schema 2 had no operating points
    assert "copy-detection score**: the index's own scores" in text
    compared = compare_markdown(old, reranked_payload)
    assert "| copy-detection score ≠ |" in compared
    assert "| **pooled TPR@1%FPR** | – | – | 0.500* |" in compared


def test_document_validates_against_the_shipped_schema(payload: dict) -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.validate(payload, schema)
    broken = json.loads(json.dumps(payload))
    broken["quality"]["psnr"].pop("p95")
    with pytest.raises(jsonschema.ValidationError, match="p95"):
        jsonschema.validate(broken, schema)


def test_git_commit_from_the_environment_or_the_checkout() -> None:
    assert git_commit({"AINDEX_GIT_COMMIT": "0123abc\n"}) == "0123abc"
    head = subprocess.run(
        ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    expected = head.stdout.strip() if head.returncode == 0 else None
    assert git_commit({}) == expected


def test_edit_sets() -> None:
    assert list(edits_for("paper")) == list(PAPER_EDITS)
    sweep = edits_for("sweep")
    assert list(sweep)[: len(PAPER_EDITS)] == list(PAPER_EDITS)
    assert "rotate_-45" in sweep and len(sweep) == len(set(sweep))
    assert len(edits_for("full_sweep")) > len(sweep)
    with pytest.raises(ValueError, match="unknown edit set"):
        edits_for("everything")
    assert list(edits_for("sweep", ["rotate_-45", "none"])) == ["none", "rotate_-45"]
    with pytest.raises(ValueError, match=r"unknown edits \['rotate_-45'\]"):
        edits_for("paper", ["none", "rotate_-45"])


def png_pixels(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_figures_are_small_non_blank_pngs(figures: dict[str, bytes]) -> None:
    assert set(figures) == {"recall_at_1", "precision_recall", "psnr_histogram", "examples"}
    for name, data in figures.items():
        pixels = png_pixels(data)
        assert len(data) < 100_000, f"{name}: {len(data)} bytes"
        assert min(pixels.shape[:2]) > 100
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 8, f"{name} is nearly blank"


def test_amplified_difference_is_visible() -> None:
    original = Image.new("RGB", (20, 20), (100, 100, 100))
    changed = np.asarray(original).copy()
    changed[5, 5] = (103, 100, 98)
    difference, gain = amplified_difference(original, Image.fromarray(changed))
    assert gain == 85.0  # 255 / 3
    assert np.asarray(difference)[5, 5].tolist() == [255, 0, 170]
    assert np.asarray(difference).sum() == 255 + 170


def test_html_is_self_contained_and_escaped(payload: dict, figures: dict[str, bytes]) -> None:
    hostile = with_files(payload | {"audit": payload["audit"] | audit(spec="<script>x</script>")})
    page = render_html(hostile, figures)
    assert "<script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert not re.search(r"(src|href)=\"(?!data:image/png;base64,)", page)
    assert "<link" not in page and "@import" not in page and "url(" not in page
    assert page.count('<img alt="') == 4
    assert page.count('<tr class="edit">') == 2 and page.count('<tr class="quality">') == 3
    # The edit, its (empty) flag, its queries and negatives, then passive and active R@1.
    row = "<td>brightness_0.5</td><td></td><td>2</td><td>1</td><td>0.500</td><td>1.000</td>"
    assert row in page
    assert "inbox/red &lt;1&gt;.png" in page and "inbox/red <1>" not in page


def test_markdown_views(payload: dict, figures: dict[str, bytes]) -> None:
    text = report_markdown(payload)
    assert "# Robustness report 7" in text and payload["markdown"] in text
    assert "| PSNR (dB) | 3 | 42.00 | 40.00 | 40.20 | 42.00 | 43.80 | 44.00 |" in text
    other = payload | {"report_id": 8, "audit": payload["audit"] | {"git_commit": "f" * 40}}
    compared = compare_markdown(payload, other)
    assert "| git commit ≠ |" in compared and "| report ≠ |" in compared
    assert "| brightness_0.5 | 0.500 | 1.000 | 0.500 | 1.000 |" in compared
    embedded = figures_markdown(figures)
    assert embedded.count("](data:image/png;base64,") == 4


def test_markdown_report_defines_its_terms_as_the_html_does(payload: dict) -> None:
    """`aindex report` (markdown) is read in terminals by the same auditors."""
    text = report_markdown(payload)
    _, _, defined = text.partition("## What the numbers mean\n\n")
    terms = [line.split("**")[1] for line in defined.splitlines() if line.startswith("- **")]
    assert {"passive", "active", "R@1", "μAP", "TPR at 1% FPR", "PSNR"} <= set(terms)
    assert "R@100" not in terms  # k = 10: the tables show no R@100


class Tables(HTMLParser):
    """The text of every cell of every table of a page, by table id: rows of cells."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.classes: dict[str, list[str]] = {}  # each row's class attribute
        self.table: str | None = None  # the id of the table being read
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "table":
            self.table = attributes["id"] or ""
            self.tables[self.table], self.classes[self.table] = [], []
        elif tag == "tr" and self.table is not None:
            self.tables[self.table].append([])
            self.classes[self.table].append(attributes.get("class") or "")
        elif tag in ("td", "th") and self.table is not None:
            self.tables[self.table][-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self.table = None

    def handle_data(self, data: str) -> None:
        if self.table is not None and self.tables[self.table][-1:]:
            row = self.tables[self.table][-1]
            if row:
                row[-1] += data


def worse_payload(payload: dict) -> dict:
    """The hand-made document with active below passive: brightness_0.5 and the pooled μAP."""
    worse = copy.deepcopy(payload)
    for row in worse["result"]["rows"]:
        if (row["edit"], row["variant"]) == ("brightness_0.5", "active"):
            row["recall_at_1"] = 0.0  # 0 of 2 copies found first, where passive found 1
    worse["result"]["average"]["active"]["recall_at_1"] = 0.5
    worse["copy_detection"]["active"]["micro_ap"] = 0.1
    return worse


def test_html_defines_every_metric_and_both_variants(payload: dict) -> None:
    page = render_html(payload, {})
    terms = ["passive", "active", "edit", "queries", "non-matching queries", "R@1", "1/(rank+1)",
             "μAP", "TPR at 1% FPR", "TPR at 0.1% FPR", "*", "recall at precision 0.9",
             "predictions", "PSNR", "SSIM", "L∞"]  # fmt: skip
    listed = page.split('id="definitions">')[1].split("</dl>")[0]
    defined = re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", listed)
    assert [term for term, _ in defined] == terms  # k=2: no R@10 column, so no definition
    assert all(len(text.split()) >= 8 for _, text in defined), "each says what it means"
    assert "the fraction of edited copies whose own image is the first search result" in page


def test_every_table_row_counts_its_queries(payload: dict, reranked_payload: dict) -> None:
    tables = Tables(render_html(payload, {})).tables
    recall = tables["recall-table"]
    assert recall[0][:4] == ["edit", "active below passive", "queries", "non-matching queries"]
    # Two images, one negative photo per edit; the average row counts every edit's queries.
    assert [[row[0], *row[2:4]] for row in recall[1:]] == [
        ["none", "2", "1"], ["brightness_0.5", "2", "1"], ["average", "4", "2"],
    ]  # fmt: skip
    pooled = Tables(render_html(reranked_payload, {})).tables["copy-detection-table"]
    assert pooled[0][2:4] == ["queries", "non-matching queries"]
    assert [[row[0], *row[2:4]] for row in pooled[1:]] == [
        ["passive", "4", "4"], ["active", "4", "4"],
    ]  # fmt: skip
    assert [row[:2] for row in tables["quality-table"]] == [
        ["metric", "images"], ["PSNR (dB)", "3"], ["SSIM", "4"], ["L∞", "4"],
    ]  # fmt: skip
    assert [row[-2:] for row in tables["images-table"][1:]] == [
        ["1 of 2", "2 of 2"], ["2 of 2", "2 of 2"],
    ]  # fmt: skip


def test_conclusion_line_tops_the_report(payload: dict) -> None:
    expected = (
        "Activation found 1 more of 4 edited copies at rank 1 (passive 0.750 → active 1.000), "
        "at a mean PSNR of 42.0 dB; no edit got worse at rank 1."
    )
    page = render_html(payload, {})
    assert f'</h1><p class="conclusion" id="conclusion">{expected}</p>' in page  # under the title
    assert report_markdown(payload).splitlines()[2] == expected


def test_rows_where_active_is_below_passive_are_flagged(payload: dict) -> None:
    worse = worse_payload(payload)
    page = render_html(worse, {})
    parsed = Tables(page)
    assert "fewer" in page.split('id="conclusion">')[1].split("</p>")[0]
    assert (
        "Activation found 1 fewer of 4 edited copies at rank 1 (passive 0.750 → active 0.500), "
        "at a mean PSNR of 42.0 dB; 1 of 2 edits got worse at rank 1: brightness_0.5."
    ) in page
    recall, classes = parsed.tables["recall-table"], parsed.classes["recall-table"]
    assert recall[0][1] == "active below passive"
    assert [(row[0], row[1]) for row in recall[1:]] == [
        ("none", ""), ("brightness_0.5", f"{FLAG} R@1"), ("average", f"{FLAG} R@1"),
    ]  # fmt: skip
    assert classes[1:] == ["edit", "edit worse", "average worse"]
    assert '<td class="below">0.000</td>' in page  # the active R@1 cell itself
    pooled = parsed.tables["copy-detection-table"]
    assert [(row[0], row[1]) for row in pooled[1:]] == [("passive", ""), ("active", f"{FLAG} μAP")]
    assert page.count('<p class="note flag-note">') == 2
    assert escape("a different or stronger edit can move it towards another image's") in page
    unchanged = render_html(payload, {})
    assert [row[1] for row in Tables(unchanged).tables["recall-table"][1:]] == ["", "", ""]
    assert "Active is at or above passive on every row and metric." in unchanged


def test_images_and_negatives_are_named_beside_their_ids(payload: dict) -> None:
    tables = Tables(render_html(payload, {})).tables
    assert [row[:2] for row in tables["images-table"]] == [
        ["id", "name"], ["10", "inbox/red <1>.png"], ["12", "inbox/green.png"],
    ]  # fmt: skip
    assert tables["negatives-table"] == [["name", "SHA-256"], ["blue.png", "cd" * 32]]
    assert "- **images**: 10 (inbox/red <1>.png), 12 (inbox/green.png)" in report_markdown(payload)
    # Documents written before names were recorded still render, ids alone.
    older = copy.deepcopy(payload)
    del older["audit"]["image_names"]
    jsonschema.validate(older, load_schema())
    assert [row[:2] for row in Tables(render_html(older, {})).tables["images-table"][1:]] == [
        ["10", "–"], ["12", "–"],
    ]  # fmt: skip
    assert "- **images**: 10, 12" in report_markdown(older)


def test_activation_parameters_are_a_table_not_json(payload: dict) -> None:
    page = render_html(payload, {})
    assert Tables(page).tables["activation-table"] == [
        ["name", "value"], ["iterations", "10"], ["seed", "0"],
    ]  # fmt: skip
    assert '{"iterations"' not in page and "&quot;iterations&quot;" not in page
    several = copy.deepcopy(payload)
    several["audit"]["activation"]["params"] = [
        {"alpha": [0.1, 0.2], "min_psnr": None},
        {"alpha": [0.3, 0.4], "seed": 1},
    ]
    assert Tables(activation_table(several)).tables["activation-table"] == [
        ["name", "set 1", "set 2"],
        ["alpha", "0.1, 0.2", "0.3, 0.4"],
        ["min_psnr", "none", "–"],
        ["seed", "–", "1"],
    ]
    assert parameter_value({"a": 1, "b": (2, 3)}) == "a=1, b=2, 3"


def drawn(figure: Figure) -> Figure:
    FigureCanvasAgg(figure).draw()
    return figure


@pytest.mark.parametrize("build", [recall_figure, precision_recall_figure])
def test_legends_sit_outside_the_data_area(payload: dict, build) -> None:
    figure = drawn(build(payload))
    renderer = figure.canvas.get_renderer()
    legends = [axes.get_legend() for axes in figure.axes if axes.get_legend()]
    assert len(legends) == 1
    for legend in legends:
        box = legend.get_window_extent(renderer)
        assert box.width > 0 and box.height > 0
        assert not any(box.overlaps(other.get_window_extent(renderer)) for other in figure.axes)
        # The saved PNG is cropped to the tight box: the legend must lie inside it.
        saved = figure.get_tightbbox(renderer).transformed(figure.dpi_scale_trans)
        assert saved.x0 <= box.x0 and box.x1 <= saved.x1 + 1
        assert saved.y0 <= box.y0 and box.y1 <= saved.y1 + 1


def small_changes(payload: dict) -> dict:
    """Active one copy in fifty above passive on `none`, one in a hundred below on the other."""
    changed = copy.deepcopy(payload)
    recall = {("none", "passive"): 0.96, ("none", "active"): 0.98,
              ("brightness_0.5", "passive"): 0.90, ("brightness_0.5", "active"): 0.89}  # fmt: skip
    for row in changed["result"]["rows"]:
        row["recall_at_1"] = recall[(row["edit"], row["variant"])]
    return changed


def test_difference_panel_shows_small_changes_in_visible_colours(payload: dict) -> None:
    figure = drawn(recall_figure(small_changes(payload)))
    _, change = figure.axes
    assert "active − passive" in change.get_ylabel()
    heights = [patch.get_height() for patch in change.patches]
    assert heights == pytest.approx([0.02, -0.01])
    assert all(patch.get_width() > 0 for patch in change.patches)
    colours = [to_hex(patch.get_facecolor()) for patch in change.patches]
    assert colours == [CHANGE_COLOURS["gain"], CHANGE_COLOURS["loss"]]
    low, high = change.get_ylim()
    assert low < -0.01 and high > 0.02
    assert 0.02 / (high - low) > 0.15, "the range must fit the changes, not 0..1"
    box = change.get_window_extent(figure.canvas.get_renderer())
    assert box.height > 40 and box.width > 200
    labels = [text.get_text() for text in change.texts]
    assert labels == ["+0.020", "-0.010"]
    # The saved figure shows the red of the loss bar (the palette keeps it).
    pixels = png_pixels(report_figures(small_changes(payload))["recall_at_1"])
    red = np.all(np.abs(pixels.astype(int) - (0xD6, 0x27, 0x28)) < 12, axis=-1)
    assert red.sum() > 30


def test_example_difference_panels_are_visible_and_named() -> None:
    rng = np.random.default_rng(0)
    original = rng.integers(40, 215, (480, 480, 3)).astype(np.int16)
    perturbation = rng.normal(0, 2, original.shape).round()
    perturbation[7, 7] = 40  # one outlier: stretching to it alone left the panel near black
    activated = np.clip(original + perturbation, 0, 255).astype(np.uint8)
    pairs = [(original.astype(np.uint8), activated), (original.astype(np.uint8),) * 2]
    images = [(Image.fromarray(a), Image.fromarray(b)) for a, b in pairs]
    figure = examples_figure([("10 (cat.jpg)", *images[0]), ("12", *images[1])])
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[0] == "original 10 (cat.jpg)" and titles[5] == "no difference"
    assert titles[2].startswith("|difference| x")
    difference = figure.axes[2].get_images()[0].get_array()
    assert difference.shape[:2] == (160, 160) and difference.mean() > 60
    assert example_label(10, {10: "inbox/2026/a-very-long-name-of-a-photo.jpg"}) == (
        "10 (…me-of-a-photo.jpg)"
    )
    assert example_label(12, {}) == "12"
