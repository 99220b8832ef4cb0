"""The `aindex` command on the embedded default (no pipeline run needed)."""

import json
from pathlib import Path

import pytest

from aindex_assets import cli
from aindex_assets.settings import Settings
from aindex_assets.storage.inbox import INBOX_PREFIX
from aindex_assets.storage.objectstore import open_object_store


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AINDEX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray .env is read
    return tmp_path / "data"


def test_ingest_uploads_files_and_folders_under_safe_time_ordered_keys(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "upload"
    (folder / "nested").mkdir(parents=True)
    (folder / "a photo é.jpg").write_bytes(b"first")
    (folder / "nested" / "..evil.png").write_bytes(b"second")
    single = tmp_path / "single.webp"
    single.write_bytes(b"third")

    assert cli.main(["ingest", str(folder), str(single), "--json"]) == 0
    keys = json.loads(capsys.readouterr().out)["keys"]
    assert len(keys) == 3
    assert keys == sorted(keys), "upload keys must sort in arrival order"
    assert all(k.startswith(INBOX_PREFIX) and ".." not in k and " " not in k for k in keys)
    store = open_object_store(Settings.from_env({"AINDEX_DATA_DIR": str(data_dir)}))
    assert sorted(store.get_bytes(k) for k in keys) == [b"first", b"second", b"third"]


def test_ingest_of_a_missing_path_names_it(data_dir: Path) -> None:
    with pytest.raises(SystemExit, match=r"no-such-file\.jpg: no such file"):
        cli.main(["ingest", "no-such-file.jpg"])


def test_status_on_an_empty_catalog(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"index_version": None, "batches": []}


def test_export_of_an_unknown_batch_fails_clearly(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no activated images"):
        cli.main(["export", "20260101T000000Z-deadbeef", str(tmp_path / "out")])


def test_report_without_any_report_fails_clearly(data_dir: Path) -> None:
    with pytest.raises(SystemExit, match="no robustness report yet"):
        cli.main(["report"])
    with pytest.raises(SystemExit, match="no batch '20260101T000000Z-deadbeef'"):
        cli.main(["report", "--compare", "20260101T000000Z-deadbeef", "1"])
