"""The report document, its figures and its HTML page, built from the hand-made evaluation.

The evaluation is the one of test_evaluation.py (solid colours, exact L2 search over four
stored vectors), so every number in the document is known in advance.
"""

import io
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import numpy as np
import pytest
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
from aindex_assets.lib.report_figures import amplified_difference, report_figures
from aindex_assets.lib.report_html import figures_markdown, render_html
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
    assert "<td>passive</td><td>0.887</td><td>0.500*</td><td>0.500*</td>" in page
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
    text = report_markdown(old)
    assert "| passive | 0.887 | – | – | 0.500 |" in text
    assert "not resolved" not in text
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
    assert "<td>brightness_0.5</td><td>0.500</td><td>1.000</td>" in page


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
