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
