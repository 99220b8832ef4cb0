"""The `aindex` command on the embedded default."""

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from aindex_assets import cli
from aindex_assets.instance import dagster_home
from aindex_assets.lib.extractors import ExtractorError
from aindex_assets.services.copy_detection.detection import ExtractorMismatch, Verdict
from aindex_assets.services.copy_detection.judge import Judgement
from aindex_assets.services.index import NoIndex
from aindex_assets.settings import Settings, SettingsError
from aindex_assets.storage.catalog import CopyThresholdRecord
from aindex_assets.storage.inbox import INBOX_PREFIX
from aindex_assets.storage.objectstore import StoreUnreachable, open_object_store
from aindex_assets_tests.dagster_helpers import FAST_RUN_CONFIG, small_photos


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AINDEX_DATA_DIR", str(tmp_path / "data"))
    # Commands that open the Dagster instance set DAGSTER_HOME: restored after the test.
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
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
    assert json.loads(capsys.readouterr().out) == {
        "index_version": None,
        "inbox_waiting": 0,
        "inbox_waiting_at_least": False,
        "runs_in_progress": [],
        "batches": [],
    }


def test_export_of_an_unknown_batch_fails_clearly(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no activated images"):
        cli.main(["export", "20260101T000000Z-deadbeef", str(tmp_path / "out")])


def test_report_without_any_report_fails_clearly(data_dir: Path) -> None:
    with pytest.raises(SystemExit, match="no robustness report yet"):
        cli.main(["report"])
    with pytest.raises(SystemExit, match="no batch '20260101T000000Z-deadbeef'"):
        cli.main(["report", "--compare", "20260101T000000Z-deadbeef", "1"])


# ------------------------------------------------------------------ errors and exit statuses


def refuse(args: argparse.Namespace, settings: Settings) -> int:
    raise AssertionError(f"`aindex {args.command}` ran despite a usage error")


@pytest.mark.parametrize(
    "argv",
    [
        ["query", "--k", "0", "x.jpg"],
        ["query", "--nprobe", "0", "x.jpg"],
        ["query", "--k", "ten", "x.jpg"],
        ["demo", "--images", "0"],
        ["demo", "--max-side", "-1"],
        ["ui", "--port", "0"],
        ["ui", "--port", "70000"],
        ["export", "only-a-batch"],
        [],
    ],
    ids=lambda argv: " ".join(argv) or "no-command",
)
def test_usage_errors_are_one_line_with_status_2(
    argv: list[str],
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Every command is refused: a bad option must stop before anything runs (`ui` would exec).
    monkeypatch.setattr(cli, "COMMANDS", dict.fromkeys(cli.COMMANDS, refuse))
    with pytest.raises(SystemExit) as raised:
        cli.main(argv)
    assert raised.value.code == cli.EXIT_USAGE
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("aindex") and "--help" in line


def test_positive_int_options_accept_positive_values() -> None:
    args = cli.parser().parse_args(["query", "x.jpg", "--k", "3", "--nprobe", "8"])
    assert (args.k, args.nprobe) == (3, 8)
    assert cli.parser().parse_args(["ui", "--port", "65535"]).port == 65535
    demo = cli.parser().parse_args(["demo", "--images", "1", "--max-side", "64"])
    assert (demo.images, demo.max_side) == (1, 64)


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        cli.main(["--version"])
    assert raised.value.code == 0
    assert capsys.readouterr().out == f"aindex {version('aindex_assets')}\n"


def test_every_argument_and_command_has_help() -> None:
    def walk(parser: argparse.ArgumentParser) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not action.help:
                missing.append(f"{parser.prog} {action.dest}")
            if isinstance(action, argparse._SubParsersAction):
                missing += [
                    f"{parser.prog} {c.dest}" for c in action._choices_actions if not c.help
                ]
                for child in action.choices.values():
                    missing += walk(child)
        return missing

    assert walk(cli.parser()) == []


@pytest.mark.parametrize("command", ["ingest", "query"])
@pytest.mark.parametrize("layout", [[], ["nested/deeper"]], ids=["empty", "only-empty-folders"])
def test_an_empty_folder_is_named_and_fails(
    command: str,
    layout: list[str],
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    for sub in layout:
        (folder / sub).mkdir(parents=True)
    with pytest.raises(SystemExit) as raised:
        cli.main([command, str(folder)])
    assert raised.value.code == cli.EXIT_ERROR
    assert capsys.readouterr().err == f"aindex {command}: {folder}: folder holds no files\n"
    store = open_object_store(Settings.from_env({"AINDEX_DATA_DIR": str(data_dir)}))
    assert list(store.list(INBOX_PREFIX)) == [], "nothing was uploaded"


def test_a_folder_with_files_and_an_empty_one_still_fails(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.jpg").write_bytes(b"a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="empty: folder holds no files"):
        cli.main(["ingest", str(tmp_path / "full"), str(tmp_path / "empty")])


@pytest.mark.parametrize(
    "error",
    [
        cli.UserError("batch 'x' has no activated images"),
        NoIndex("no trained index"),
        ExtractorMismatch("index built with another extractor"),
        ExtractorError("no such extractor 'nope'"),
        SettingsError("AINDEX_DEVICE='tpu' is not one of auto, cpu, cuda"),
        StoreUnreachable("http://localhost:1 did not answer"),
        PermissionError(13, "Permission denied", "secret.jpg"),
        SystemExit("an old-style message"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_domain_errors_become_one_line_with_the_error_status(
    error: BaseException,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def failing(args: argparse.Namespace, settings: Settings) -> int:
        raise error

    monkeypatch.setitem(cli.COMMANDS, "status", failing)
    with pytest.raises(SystemExit) as raised:
        cli.main(["status"])
    assert raised.value.code == cli.EXIT_ERROR
    assert capsys.readouterr().err == f"aindex status: {error}\n"
    assert str(error) in str(raised.value), "in-process callers still see the message"


def test_a_multi_line_message_stays_one_line(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(args: argparse.Namespace, settings: Settings) -> int:
        raise NoIndex("first line\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "status", failing)
    with pytest.raises(SystemExit):
        cli.main(["status"])
    assert capsys.readouterr().err == "aindex status: first line second line\n"


def test_a_settings_error_from_the_environment_is_one_line(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AINDEX_DEVICE", "tpu")
    with pytest.raises(SystemExit) as raised:
        cli.main(["status"])
    assert raised.value.code == cli.EXIT_ERROR
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("aindex status: AINDEX_DEVICE='tpu'")


# ------------------------------------------------------------------ `aindex query` statuses


COPY = Verdict("copy.jpg", True, 0.5, image_id=1, source_key="inbox/a.jpg", score=0.1, rank=0)
NOT_COPY = Verdict("other.jpg", False, 0.5, image_id=2, source_key="inbox/b.jpg", score=0.9)
REJECTED = Verdict("notes.txt", False, 0.5, reason="not an image")


def fake_judgement(verdicts: list[Verdict]) -> Judgement:
    threshold = CopyThresholdRecord(
        id=1, index_version=1, served_index_id=1, metric="l2", k=10, nprobe=1,
        target_precision=0.99, threshold=0.5, reached=True, precision=1.0, recall=1.0,
        n_matching=10, n_non_matching=10, details={}, created_at=datetime.now(UTC),
    )  # fmt: skip
    served = SimpleNamespace(version=SimpleNamespace(id=1), served=SimpleNamespace(id=1))
    return Judgement(served, threshold, verdicts)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("verdicts", "status"),
    [
        ([COPY], 0),
        ([NOT_COPY], 1),
        ([COPY, NOT_COPY, REJECTED], 0),  # one copy settles it
        ([NOT_COPY, REJECTED], 3),  # "no copy" cannot be claimed for notes.txt
        ([REJECTED], 3),
    ],
    ids=["copy", "no-copy", "copy-and-rejected", "no-copy-and-rejected", "rejected"],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_query_exit_status_reflects_the_verdicts(
    verdicts: list[Verdict],
    status: int,
    as_json: bool,
    data_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    judgement = fake_judgement(verdicts)
    # No model and no index are needed to map verdicts to a status.
    monkeypatch.setattr("aindex_assets.lib.extractors.load_extractor", lambda *a, **k: None)
    monkeypatch.setattr(
        "aindex_assets.services.copy_detection.judge.judge_files", lambda *a: judgement
    )
    (tmp_path / "copy.jpg").write_bytes(b"x")
    assert cli.main(["query", str(tmp_path / "copy.jpg"), *(["--json"] * as_json)]) == status
    out = capsys.readouterr().out
    if as_json:  # the JSON document is the same whatever the status
        assert json.loads(out) == json.loads(json.dumps(judgement.to_dict(), default=str))
    else:
        assert out == cli.judgement_text(judgement) + "\n"


def test_query_help_documents_the_exit_statuses() -> None:
    [commands] = [a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)]
    text = commands.choices["query"].format_help()
    for status, meaning in [("0", "is a copy"), ("1", "no image is a copy"), ("3", "error")]:
        assert any(
            line.strip().startswith(status) and meaning in line for line in text.splitlines()
        ), (status, text)


# ------------------------------------------------------------------ the installed `aindex`


def aindex(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("aindex")), *args]


def test_installed_command_reports_an_error_in_one_line_with_status_3(data_dir: Path) -> None:
    done = subprocess.run(aindex("report"), capture_output=True, text=True, timeout=120)
    assert done.returncode == cli.EXIT_ERROR
    assert done.stderr == "aindex report: no robustness report yet (run `aindex demo`)\n"


def test_no_broken_pipe_error_when_the_reader_leaves(data_dir: Path) -> None:
    # `aindex status | head -0`: the reader is gone before anything is written.
    with subprocess.Popen(
        aindex("status"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        stderr = proc.stderr.read()
        proc.wait(timeout=120)
    assert stderr == ""
    assert proc.returncode == cli.EXIT_BROKEN_PIPE


# ------------------------------------------------- symbolic links, size limit, hostile names


def test_ingest_follows_no_link_out_of_the_folder_and_names_each_skipped_one(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not yours")
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"a")
    (folder / "sub" / "b.jpg").write_bytes(b"b")
    links = {
        "leak.jpg": outside,  # a file outside the folder
        "etc": Path("/etc"),  # a folder outside it
        "up": Path(".."),  # the folder's parent: a way out and a loop
        "again": Path("."),  # a loop
        "dangling.jpg": Path("gone.jpg"),
        "sub/loop": Path("../sub"),
    }
    for name, target in links.items():
        (folder / name).symlink_to(target)
    (folder / "alias.jpg").symlink_to("a.jpg")  # stays inside: followed
    (folder / "self1").symlink_to("self2")
    (folder / "self2").symlink_to("self1")

    assert cli.main(["ingest", str(folder), "--json"]) == 0
    captured = capsys.readouterr()
    keys = json.loads(captured.out)["keys"]
    store = open_object_store(Settings.from_env({"AINDEX_DATA_DIR": str(data_dir)}))
    assert sorted(store.get_bytes(k) for k in keys) == [b"a", b"a", b"b"]
    skipped = dict(line.split(": ", 1) for line in captured.err.splitlines())
    expected = {*links, "self1", "self2"}
    assert set(skipped) == {f"skipped {folder / name}" for name in expected}
    assert skipped[f"skipped {folder / 'leak.jpg'}"] == (
        f"symbolic link to {outside}, outside {folder}"
    )
    assert "outside" in skipped[f"skipped {folder / 'etc'}"]
    assert skipped[f"skipped {folder / 'self1'}"] == "symbolic link loop"
    assert "broken symbolic link" in skipped[f"skipped {folder / 'dangling.jpg'}"]
    assert "not followed" in skipped[f"skipped {folder / 'again'}"]


def test_ingest_streams_files_and_refuses_one_above_the_limit_before_uploading(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "small.jpg").write_bytes(b"s" * 100)
    (folder / "huge.tif").write_bytes(b"h" * 101)
    monkeypatch.setattr(cli, "MAX_FILE_BYTES", 100)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail(f"{self} read whole"))
    with pytest.raises(SystemExit) as raised:
        cli.main(["ingest", str(folder)])
    assert raised.value.code == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"aindex ingest: {folder / 'huge.tif'}: file too large: 101 bytes")
    assert "above the limit of 100 bytes" in err and err.endswith("nothing was uploaded\n")
    store = open_object_store(Settings.from_env({"AINDEX_DATA_DIR": str(data_dir)}))
    assert list(store.list(INBOX_PREFIX)) == []

    (folder / "huge.tif").unlink()
    assert cli.main(["ingest", str(folder)]) == 0
    [info] = store.list(INBOX_PREFIX)
    assert store.get_bytes(info.key) == b"s" * 100


def test_status_prints_hostile_keys_escaped(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from aindex_assets.storage.catalog import Catalog

    settings = Settings.from_env({"AINDEX_DATA_DIR": str(data_dir)})
    catalog = Catalog.open(settings.database_url)
    catalog.create_batch("b1", kind="ingest")
    catalog.reject_file("b1", "inbox/\x1b[2J\x1b[Hx.jpg\nb2: registered=9", "bad \x07 bytes")
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert out.splitlines()[3:] == [
        "b1: open (rejected=1)",
        "    rejected inbox/\\x1b[2J\\x1b[Hx.jpg\\x0ab2: registered=9: bad \\x07 bytes",
    ]


def fast_run_config(tmp_path: Path, **overrides: dict) -> str:
    """FAST_RUN_CONFIG (plus per-asset overrides) as the YAML file `process --config` reads."""
    ops = {**FAST_RUN_CONFIG["ops"], **{k: {"config": v} for k, v in overrides.items()}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"ops": ops}))
    return str(path)


def photos_folder(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, data in small_photos(count):
        (folder / name).write_bytes(data)
    return folder


def test_process_runs_the_inbox_in_the_foreground_and_batches_move_to_reported(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`aindex ingest` says what happens next; `aindex status` counts what waits; `aindex
    process` claims and runs it here, naming each step and what it does; then the batch is
    `reported`, the inbox is empty and `aindex images` lists the photos by name."""
    folder = photos_folder(tmp_path, 3)
    assert cli.main(["ingest", str(folder)]) == 0
    assert "aindex process" in capsys.readouterr().out
    assert cli.main(["status"]) == 0
    assert "inbox: 3 file(s) waiting" in capsys.readouterr().out

    config = fast_run_config(
        tmp_path,
        robustness_report={"max_negatives": 2, "edits": ["none", "jpeg_50"]},
        copy_threshold={"max_negatives": 2, "edits_per_negative": 2},
    )
    assert cli.main(["process", "--config", config]) == 0
    out, err = capsys.readouterr()
    [batch_id] = [line.split(":")[0] for line in out.splitlines()]
    assert out.strip() == f"{batch_id}: reported (indexed=3)"
    for step in ("raw_images", "image_embeddings", "activated_images", "robustness_report"):
        assert f"  {step}: done in " in err
    assert "  raw_images: The originals of one ingestion batch, decoded" in err
    assert "  copy_threshold: " in err  # the calibration says what it does
    assert "descriptors: " in err and "activation: " in err  # the bars

    assert cli.main(["status"]) == 0
    status = capsys.readouterr().out
    assert "inbox: 0 file(s) waiting" in status
    assert f"{batch_id}: reported (indexed=3); served from v1" in status
    assert cli.main(["images", batch_id]) == 0
    names = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    assert sorted(name for _, _, name in names) == sorted(n for n, _ in small_photos(3))
    assert {status for _, status, _ in names} == {"indexed"}
    assert cli.main(["process"]) == 0
    assert capsys.readouterr().out.strip() == "the inbox is empty: nothing to process"


def test_a_failing_foreground_batch_is_marked_failed_and_exits_3(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = photos_folder(tmp_path, 2)
    assert cli.main(["ingest", str(folder)]) == 0
    config = fast_run_config(
        tmp_path,
        training_embeddings={"crops": 20, "crop_size": 64},
        trained_index={"factory": "IVF4096,Flat"},  # needs 4,096 training vectors
    )
    with pytest.raises(SystemExit) as exited:
        cli.main(["process", "--config", config])
    assert exited.value.code == cli.EXIT_ERROR
    message = capsys.readouterr().err.splitlines()[-1]
    assert message.startswith("aindex process: run ")
    assert "trained_index: " in message and "needs at least 4096 training vectors" in message
    assert cli.main(["status", "--json"]) == 0
    [batch] = json.loads(capsys.readouterr().out)["batches"]
    assert batch["status"] == "failed"


@pytest.mark.parametrize(
    "content, why",
    [
        ("ops: [1, 2]", "expected a mapping"),
        ("resources: {}", "only `ops` may be set"),
        ("{", "not YAML"),
    ],
)
def test_process_refuses_a_bad_config_file_in_one_line(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, why: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(SystemExit) as exited:
        cli.main(["process", "--config", str(path)])
    assert exited.value.code == cli.EXIT_ERROR
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"aindex process: {path}: ") and why in line


def test_status_lists_the_runs_in_progress(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import dagster as dg

    dagster_home(Settings.from_env())
    with dg.DagsterInstance.get() as instance:
        for status, batch in (
            (dg.DagsterRunStatus.STARTED, "b-running"),
            (dg.DagsterRunStatus.SUCCESS, "b-done"),
        ):
            instance.add_run(
                dg.DagsterRun(
                    job_name="activate_batch", status=status, tags={"dagster/partition": batch}
                )
            )
    assert cli.main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "runs in progress: 1" in lines
    [running] = [line for line in lines if "activate_batch run" in line]
    assert running.strip().startswith("started activate_batch run ")
    assert running.endswith("for batch b-running")


@pytest.mark.parametrize(
    "ops, why",
    [
        ({"activated_imagez": {"config": {}}}, "no asset named activated_imagez"),
        (
            {"activated_images": {"config": {"release_format": "gif"}}},
            "the run config of bootstrap_and_activate_batch is not valid",
        ),
    ],
    ids=["unknown-asset", "invalid-value"],
)
def test_a_config_dagster_refuses_is_one_line_not_a_traceback(
    data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    ops: dict,
    why: str,
) -> None:
    assert cli.main(["ingest", str(photos_folder(tmp_path, 1))]) == 0
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"ops": ops}))
    with pytest.raises(SystemExit) as exited:
        cli.main(["process", "--config", str(path)])
    assert exited.value.code == cli.EXIT_ERROR
    [line] = capsys.readouterr().err.splitlines()[-1:]
    assert line.startswith("aindex process: ") and why in line


def test_process_refuses_while_the_daemon_runs_ingestion(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its sensor may have proposed the same files: two bootstraps would train twice."""
    import dagster as dg

    assert cli.main(["ingest", str(photos_folder(tmp_path, 1))]) == 0
    dagster_home(Settings.from_env())
    with dg.DagsterInstance.get() as instance:
        instance.add_run(
            dg.DagsterRun(job_name="activate_batch", status=dg.DagsterRunStatus.STARTED)
        )
    with pytest.raises(SystemExit) as exited:
        cli.main(["process"])
    assert exited.value.code == cli.EXIT_ERROR
    assert "1 ingestion run(s) are queued or running" in capsys.readouterr().err
    assert cli.main(["status"]) == 0
    assert "inbox: 1 file(s) waiting" in capsys.readouterr().out  # nothing was claimed
