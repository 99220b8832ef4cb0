"""Robustness reports of a real batch: document, rows, files, CLI, and rendering in Chromium.

One module-scoped run materializes a batch of three photos through the whole graph (first
report: packaged negatives), then `robustness_report` alone once more with photos under
`negatives/` in the store (second report). The Dagster instance lives in a folder, so the
UI test can serve it with `dagster-webserver`.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from html import escape
from pathlib import Path

import dagster as dg
import jsonschema
import pytest

from aindex_assets import cli
from aindex_assets.definitions import build_definitions
from aindex_assets.defs.reports.assets import robustness_report
from aindex_assets.lib.edits import PAPER_EDITS
from aindex_assets.lib.images import content_hash
from aindex_assets.lib.photos import NEGATIVE_PHOTOS, negative_photos
from aindex_assets.lib.report import load_schema, summary_stats
from aindex_assets.services.packaged import MissingPhotos, PackagedPhotos
from aindex_assets.services.reports import choose_negatives
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.objectstore import open_object_store
from aindex_assets_tests.browser import (
    DevToolsPage,
    devtools_page,
    distinct_colours,
    free_port,
    wait_for_http,
)
from aindex_assets_tests.dagster_helpers import small_photos
from aindex_assets_tests.servers import stop_process_group
from aindex_assets_tests.test_definitions import drop, execute_sensor_result, tick

SECOND = ["none", "jpeg_50", "rotate_90"]  # the second report's edits: keeps the run short
# The module's run of the graph counts against its first test; a loaded 2-core CI is slow.
pytestmark = pytest.mark.timeout(1200)


@dataclass(frozen=True)
class Materialized:
    settings: Settings
    dagster_home: Path
    batch: str


def materialize_two_reports(root: Path) -> Materialized:
    """A batch run through the graph, then a second report with negatives from the store."""
    settings = Settings.from_env({"AINDEX_DATA_DIR": str(root / "data")})
    home = root / "dagster_home"
    home.mkdir(parents=True)
    defs = build_definitions(settings)
    photos = small_photos(3)
    drop(settings, photos)
    with dg.DagsterInstance.local_temp(str(home)) as instance:
        [batch] = execute_sensor_result(defs, instance, tick(defs, instance))
        store = open_object_store(settings)
        store.put_bytes("negatives/camera.png", negative_photos()[1][1])
        store.put_bytes("negatives/indexed.png", photos[0][1])  # registered: must be skipped
        store.put_bytes("negatives/notes.txt", b"not an image")  # does not decode: skipped
        result = dg.materialize(
            [robustness_report],
            partition_key=batch,
            instance=instance,
            resources=defs.resources,
            run_config={"ops": {"robustness_report": {"config": {"seed": 1, "edits": SECOND}}}},
        )
        assert result.success
    return Materialized(settings, home, batch)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> Materialized:
    return materialize_two_reports(tmp_path_factory.mktemp("reports"))


@pytest.fixture
def cli_env(materialized: Materialized, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("AINDEX_DATA_DIR", str(materialized.settings.data_dir))
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    return tmp_path


def documents(materialized: Materialized) -> list[dict]:
    catalog = Catalog.open(materialized.settings.database_url)
    store = open_object_store(materialized.settings)
    reports = catalog.reports(batch_id=materialized.batch, kind="robustness")
    return [json.loads(store.get_bytes(r.object_key)) for r in reports]


def test_report_documents_rows_and_files(materialized: Materialized) -> None:
    catalog = Catalog.open(materialized.settings.database_url)
    store = open_object_store(materialized.settings)
    first, second = documents(materialized)
    schema = load_schema()
    activations = catalog.activations(batch_id=materialized.batch)
    for document in (first, second):
        jsonschema.validate(document, schema)
        assert document["image_ids"] == [a.image_id for a in activations]
        assert document["audit"]["activation"]["params"] == [activations[0].params]
        assert store.exists(document["files"]["html"])
        assert all(store.exists(key) for key in document["files"]["figures"].values())
        record = catalog.report(document["report_id"])
        assert record.payload == document
        names = [image.source_key for image in catalog.images_by_ids(document["image_ids"])]
        assert document["audit"]["image_names"] == names
        page = store.get_bytes(document["files"]["html"]).decode()
        negatives = [item["name"] for item in document["audit"]["negatives"]["items"]]
        assert all(f'<td class="name">{escape(name)}</td>' in page for name in names + negatives)
    assert len(catalog.report(first["report_id"]).rows) == 2 * len(PAPER_EDITS)
    assert [(r.edit, r.variant) for r in catalog.report(second["report_id"]).rows] == [
        (edit, variant) for edit in SECOND for variant in ("passive", "active")
    ]
    psnr = summary_stats(a.psnr for a in activations)
    assert first["quality"]["psnr"] == pytest.approx(psnr)
    assert first["quality"]["psnr"]["min"] >= 40.0  # the release floor
    assert first["audit"]["negatives"]["source"] == "packaged"
    # FAST_RUN_CONFIG keeps the first two packaged photos (max_negatives: 2).
    assert [i["name"] for i in first["audit"]["negatives"]["items"]] == [
        f"skimage/{name}" for name in NEGATIVE_PHOTOS[:2]
    ]
    assert first["result"]["rows"][0]["n_negatives"] == 2
    # Copy detection as `aindex query` scores it, with the TPR at 1% and 0.1% FPR: 2
    # negatives x 15 edits = 30 non-matching queries, too few to resolve either rate.
    assert first["schema_version"] == 3
    assert first["audit"]["evaluation"]["copy_detection_score"] == "reranked"
    for variant in ("passive", "active"):
        points = first["copy_detection"][variant]["operating_points"]
        assert [p["target_fpr"] for p in points] == [0.01, 0.001]
        assert all(not p["resolved"] and p["n_non_matching"] == 30 for p in points)
        assert all(p["n_matching"] == 3 * len(PAPER_EDITS) for p in points)
        assert all(0.0 <= p["tpr"] <= 1.0 and p["fpr"] == 0.0 for p in points)
    assert {"tpr_at_fpr_0.01", "tpr_at_fpr_0.001"} <= set(first["result"]["rows"][0])
    assert second["audit"]["negatives"]["source"] == "store"
    assert [i["name"] for i in second["audit"]["negatives"]["items"]] == ["negatives/camera.png"]
    assert (first["seed"], second["seed"]) == (0, 1)
    assert first["report_id"] != second["report_id"]
    assert first["files"]["json"] != second["files"]["json"]
    with pytest.raises(ValueError, match="immutable"):
        catalog.record_report(materialized.batch, "robustness", {}, None, report_id=1)


def test_materialization_metadata_embeds_small_figures(materialized: Materialized) -> None:
    with dg.DagsterInstance.local_temp(str(materialized.dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("robustness_report"))
    metadata = event.asset_materialization.metadata
    figures = metadata["figures"].value
    uris = [part.split(")")[0] for part in figures.split("](data:image/png;base64,")[1:]]
    assert len(uris) == 4
    assert all(len(uri) * 3 / 4 < 100_000 for uri in uris)
    assert "| **average** |" in metadata["table"].value
    assert "TPR@1%FPR" in metadata["table"].value
    assert metadata["html_report"].value.endswith(".html")
    for variant in ("passive", "active"):
        assert 0.0 <= metadata[f"tpr_at_fpr_0.01_{variant}"].value <= 1.0
        assert 0.0 <= metadata[f"tpr_at_fpr_0.001_{variant}"].value <= 1.0
    assert "| variant | μAP | TPR @ 1% FPR | TPR @ 0.1% FPR |" in metadata["copy_detection"].value
    assert "not resolved at FPR 1% (passive, active)" in metadata["copy_detection"].value


def test_cli_report_views(materialized: Materialized, cli_env: Path, capsys) -> None:
    first, second = documents(materialized)
    assert cli.main(["report", "--json"]) == 0  # the latest report
    latest = json.loads(capsys.readouterr().out)
    jsonschema.validate(latest, load_schema())
    assert latest == second
    assert cli.main(["report", materialized.batch]) == 0
    text = capsys.readouterr().out
    assert f"# Robustness report {second['report_id']}" in text and "| PSNR (dB) |" in text
    assert "| variant | μAP | TPR @ 1% FPR | TPR @ 0.1% FPR | recall @ P90 |" in text
    assert "copy-detection score**: top match re-ranked on the original descriptors" in text
    assert cli.main(["report", str(first["report_id"]), "--html", str(cli_env / "r.html")]) == 0
    assert "<table" in (cli_env / "r.html").read_text()
    assert cli.main(["report", "--compare", str(first["report_id"]), materialized.batch]) == 0
    compared = capsys.readouterr().out
    assert f"| report ≠ | {first['report_id']} (batch" in compared
    assert "| none |" in compared and "pooled μAP" in compared
    assert compared.count("| – | – |") == len(PAPER_EDITS) - len(SECOND)  # edits B lacks


def test_cli_report_errors(materialized: Materialized, cli_env: Path) -> None:
    with pytest.raises(SystemExit, match="no batch 'nope'"):
        cli.main(["report", "nope"])
    with pytest.raises(SystemExit, match="no robustness report with id 999"):
        cli.main(["report", "999"])
    catalog = Catalog.open(materialized.settings.database_url)
    catalog.create_batch("20260101T000000Z-empty", kind="ingest")
    with pytest.raises(SystemExit, match="has no robustness report yet"):
        cli.main(["report", "20260101T000000Z-empty"])
    with pytest.raises(SystemExit, match="--compare takes no other report"):
        cli.main(["report", "1", "--compare", "1", "2"])


EDIT_CELLS = "[...document.querySelectorAll('#recall-table tr.edit td:first-child')]"
IMAGES = "[...document.images].map(i => [i.src.slice(0, 22), i.naturalWidth])"


def test_html_report_renders_in_chromium(materialized: Materialized, tmp_path: Path) -> None:
    [first, _] = documents(materialized)
    page_file = tmp_path / "report.html"
    page_file.write_bytes(
        open_object_store(materialized.settings).get_bytes(first["files"]["html"])
    )
    with devtools_page() as page:
        page.call("Page.enable")
        page.call("Page.navigate", url=page_file.as_uri())
        page.wait_for("document.readyState === 'complete'")
        rows = page.evaluate(f"{EDIT_CELLS}.map(c => c.textContent)")
        conclusion = page.evaluate("document.getElementById('conclusion').textContent")
        images = page.evaluate(IMAGES)
        pixels = page.screenshot(tmp_path / "report.png")
    assert rows == list(PAPER_EDITS)
    assert conclusion.startswith("Activation found ") and "edited copies at rank 1" in conclusion
    assert len(images) == 4 and all(src == "data:image/png;base64," for src, _ in images)
    assert all(width > 100 for _, width in images)  # decoded, not broken-image icons
    assert distinct_colours(pixels) > 64 and pixels.std() > 5


def ui_process(materialized: Materialized, port: int, log: Path) -> subprocess.Popen:
    env = os.environ | {
        "DAGSTER_HOME": str(materialized.dagster_home),
        "AINDEX_DATA_DIR": str(materialized.settings.data_dir),
    }
    webserver = Path(sys.executable).with_name("dagster-webserver")
    command = [str(webserver), "-m", "aindex_assets.definitions", "-h", "127.0.0.1"]
    return subprocess.Popen(
        [*command, "-p", str(port)],
        env=env,
        cwd=materialized.dagster_home,  # away from the repository's production dagster.yaml
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


# Metadata markdown shows inline when short, else behind a "[Show Markdown]" link that opens
# a dialog: mark the row, click the link when there is one, say where the markdown is.
SHOW_MARKDOWN = """(() => {
  const row = [...document.querySelectorAll('tr')]
    .find(r => r.querySelector('td span')?.textContent === '%s');
  if (!row) return false;
  row.setAttribute('data-markdown-row', '%s');
  const link = [...row.querySelectorAll('a')].find(a => a.textContent === '[Show Markdown]');
  if (link) { link.click(); return '[role=dialog]'; }
  return '[data-markdown-row=%s] td';
})()"""
CLOSE_DIALOG = """[...document.querySelectorAll('[role=dialog] button')]
  .find(b => b.textContent === 'Close')?.click()"""


def show_markdown(page: DevToolsPage, key: str, timeout: float) -> str:
    """Open the markdown of a metadata row; the CSS scope it is rendered in."""
    return page.wait_for(SHOW_MARKDOWN % (key, key, key), timeout=timeout)


def test_dagster_ui_shows_the_report(materialized: Materialized, tmp_path: Path) -> None:
    port = free_port()
    server = ui_process(materialized, port, tmp_path / "webserver.log")
    url = f"http://127.0.0.1:{port}/assets/robustness_report?view=events"
    try:
        wait_for_http(f"http://127.0.0.1:{port}/server_info", server, timeout=60)
        with devtools_page() as page:
            page.call("Page.enable")
            page.call("Page.navigate", url=f"{url}&partition={materialized.batch}")
            # The code server imports torch before the page can list the asset's events.
            try:
                scope = show_markdown(page, "table", timeout=120)
            except TimeoutError:
                page.screenshot(tmp_path / "ui-timeout.png")
                raise
            cells_js = f"[...document.querySelectorAll('{scope} td')].map(td => td.textContent)"
            cells = page.wait_for(f"{cells_js}.length && {cells_js}", timeout=20)
            page.screenshot(tmp_path / "ui-table.png")
            page.evaluate(CLOSE_DIALOG)
            scope = show_markdown(page, "figures", timeout=20)
            images_js = f"document.querySelectorAll('{scope} img[src^=\"data:image/png;base64,\"]')"
            images = page.wait_for(f"{images_js}.length >= 4 && {images_js}.length")
            loaded = page.wait_for(f"[...{images_js}].every(i => i.complete && i.naturalWidth)")
            pixels = page.screenshot(tmp_path / "ui-figures.png")
    finally:
        stop_process_group(server, "the webserver's")
    assert [cells[i] for i in range(0, len(cells), 13)] == [*SECOND, "average"]
    assert len(cells) == (len(SECOND) + 1) * 13  # edit + 2 variants x (4 metrics + 2 TPRs)
    assert images == 4 and loaded
    assert distinct_colours(pixels) > 64 and pixels.std() > 5


def test_negatives_skip_indexed_and_broken_files_then_fall_back(local_store, tmp_path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}")
    [(_, indexed), *_] = small_photos(1)
    catalog.create_batch("20260101T000000Z-indexed", kind="ingest")
    catalog.register_image(
        content_hash(indexed), "inbox/a.png", "originals/a.png", "20260101T000000Z-indexed",
        len(indexed), "PNG", 160, 120,
    )  # fmt: skip
    local_store.put_bytes("negatives/a-indexed.png", indexed)
    local_store.put_bytes("negatives/b-notes.txt", b"not an image")
    with pytest.raises(MissingPhotos, match="negatives/ in the object store holds no usable"):
        choose_negatives(local_store, catalog, "negatives/", 3, PackagedPhotos(allowed=False))
    fallback = choose_negatives(local_store, catalog, "negatives/", 3, PackagedPhotos())
    assert fallback.source == "packaged" and len(fallback.images) == 3
    assert [i["name"] for i in fallback.items] == [f"skimage/{n}" for n in NEGATIVE_PHOTOS[:3]]
    local_store.put_bytes("negatives/c-photo.png", negative_photos()[0][1])
    stored = choose_negatives(local_store, catalog, "negatives/", 32, PackagedPhotos(allowed=False))
    assert stored.source == "store" and [i["name"] for i in stored.items] == [
        "negatives/c-photo.png"
    ]
    assert stored.items[0]["sha256"] == content_hash(negative_photos()[0][1])
