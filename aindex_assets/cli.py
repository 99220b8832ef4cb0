"""The `aindex` command: demo, ingest, status, export, report and the UI on the configured store."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from typing import NoReturn

from tqdm import tqdm

from aindex_assets.instance import dagster_home
from aindex_assets.lib.extractors import ExtractorError
from aindex_assets.lib.images import MAX_FILE_BYTES, too_large_reason
from aindex_assets.services.copy_detection.calibration import NoThreshold, threshold_summary
from aindex_assets.services.copy_detection.detection import ExtractorMismatch, Verdict
from aindex_assets.services.copy_detection.judge import Judgement
from aindex_assets.services.inbox import unclaimed_keys
from aindex_assets.services.index import NoIndex
from aindex_assets.settings import Settings, SettingsError
from aindex_assets.storage.catalog import (
    DUPLICATE_REASON_PREFIX,
    Catalog,
    CopyThresholdRecord,
    ReportRecord,
)
from aindex_assets.storage.inbox import INBOX_PREFIX, printable_key, upload_key
from aindex_assets.storage.objectstore import ObjectStore, ObjectStoreError, open_object_store

# Exit statuses. `query` follows grep (0 = found) so that `if aindex query x.jpg` reads naturally.
EXIT_OK = 0
EXIT_COPY_FOUND = 0
EXIT_NO_COPY = 1
EXIT_USAGE = 2  # argparse's own status for a bad command line
EXIT_ERROR = 3
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a tool that SIGPIPE ended

EXIT_STATUS_HELP = """\
exit status: 0 done, 2 usage error, 3 error (one line on stderr: `aindex COMMAND: message`);
`aindex query` also exits 1 when no copy was found (see `aindex query --help`)"""

QUERY_EXIT_STATUS_HELP = """\
exit status (like grep's, so that `if aindex query photo.jpg; then ...` means "is a copy"):
  0  at least one image is a copy of an indexed one
  1  no image is a copy (every one was judged)
  2  usage error (bad arguments)
  3  error: no index, extractor mismatch, missing path or empty folder, store failure,
     or no copy found while some input could not be judged (not an image, unreadable)
--json output is the same whatever the status."""


class UserError(Exception):
    """A mistake or missing precondition the user can fix; `main` reports the message."""


class Failure(SystemExit):
    """Ends the command with EXIT_ERROR once `main` wrote its line on stderr.

    str() stays the message (SystemExit would otherwise print it again and exit 1), so
    in-process callers such as the tests can still tell failures apart.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = EXIT_ERROR


# Everything a command raises that is the user's to fix, not a bug: one line, no traceback.
# OSError covers unreadable inputs and unwritable destinations.
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    NoIndex,
    NoThreshold,
    ExtractorMismatch,
    ExtractorError,
    SettingsError,
    ObjectStoreError,
    OSError,
)


def collect_files(paths: Sequence[str]) -> list[Path]:
    """The files of `paths`; a missing path or a folder without files is a UserError.

    Inside a folder a symbolic link is followed only to a file inside that folder. Links
    that leave it, broken links, loops, links to folders (never descended, so nothing is
    walked twice) and unreadable subfolders are skipped, each named on stderr in one line.
    A file or folder named on the command line is taken as it is, link or not.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found, skipped = folder_files(path)
            for entry, why in skipped:
                print(f"skipped {shown(str(entry))}: {why}", file=sys.stderr)
            if not found:  # an empty upload or query is a wrong path, not a success
                raise UserError(f"{raw}: folder holds no files")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{raw}: no such file or folder")
    return files


def folder_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(files to take, sorted; [(path, why)] skipped) under `folder`: see collect_files."""
    root = folder.resolve()
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []

    def unreadable(error: OSError) -> None:
        skipped.append((Path(error.filename or folder), f"unreadable folder ({error.strerror})"))

    for current, folders, names in os.walk(folder, onerror=unreadable):  # links not descended
        for name in sorted(folders):
            entry = Path(current, name)
            if entry.is_symlink():
                skipped.append((entry, link_problem(entry, folder, root) or FOLDER_LINK))
        for name in sorted(names):
            entry = Path(current, name)
            if entry.is_symlink() and (problem := link_problem(entry, folder, root)):
                skipped.append((entry, problem))
            elif entry.is_file():  # not a socket, a FIFO or a device
                found.append(entry)
    return sorted(found), skipped


FOLDER_LINK = "symbolic link to a folder inside it: not followed (its files are taken from there)"


def link_problem(link: Path, folder: Path, root: Path) -> str | None:
    """Why the symbolic link `link` found in `folder` (resolved: `root`) is not followed."""
    try:
        target = link.resolve(strict=True)
    except FileNotFoundError:
        return "broken symbolic link (its target does not exist)"
    except RuntimeError:  # how Python before 3.13 reports a loop
        return "symbolic link loop"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"unreadable symbolic link ({exc.strerror})"
    if not target.is_relative_to(root):
        return f"symbolic link to {shown(str(target))}, outside {shown(str(folder))}"
    return None


def shown(text: str) -> str:
    """`text` (a stored key, a path, a reason) safe to print on a terminal, on one line.

    Control characters (C0 and C1: escape sequences, new lines), invisible format
    characters (bidirectional overrides) and line separators become `\\xNN` / `\\uNNNN`;
    bytes of a name that is not UTF-8 are escaped by `printable_key`.
    """
    return "".join(
        ch if ch.isprintable() or ch == " " else _escaped(ch) for ch in printable_key(text)
    )


def _escaped(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def upload_files(store: ObjectStore, files: Sequence[Path], prefix: str) -> list[str]:
    """Stream each file to the store: memory holds one chunk, whatever the file's size."""
    keys: list[str] = []
    for path in tqdm(files, desc="upload", unit="file", disable=not sys.stderr.isatty()):
        key = upload_key(path.name, prefix=prefix)
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > MAX_FILE_BYTES:  # it grew since the check in cmd_ingest
                raise UserError(
                    f"{shown(str(path))}: {too_large_reason(size, MAX_FILE_BYTES)}; "
                    f"{len(keys)} file(s) before it were uploaded"
                )
            store.put_stream(key, stream, size)
        keys.append(key)
    return keys


def oversized(files: Sequence[Path]) -> str | None:
    """The files above the upload limit, named with their sizes (None when there are none)."""
    large = [(path, size) for path in files if (size := path.stat().st_size) > MAX_FILE_BYTES]
    if not large:
        return None
    named = "; ".join(
        f"{shown(str(path))}: {too_large_reason(size, MAX_FILE_BYTES)}" for path, size in large[:5]
    )
    more = f" (and {len(large) - 5} more)" if len(large) > 5 else ""
    return f"{named}{more}; nothing was uploaded"


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    files = collect_files(args.paths)
    refused = oversized(files)
    if refused:  # refuse before the first upload: no half-ingested folder
        raise UserError(refused)
    store = open_object_store(settings)
    keys = upload_files(store, files, INBOX_PREFIX)
    emit(
        args,
        {"uploaded": len(keys), "keys": keys, "next": INGEST_NEXT},
        f"uploaded {len(keys)} file(s) to {store.describe()} under {INBOX_PREFIX}\n{INGEST_NEXT}",
    )
    return EXIT_OK


INGEST_NEXT = (
    "Next: a running Dagster daemon (`aindex ui`, or the deployment) forms batches of them "
    "within a minute and activates them; without one, run `aindex process`. "
    "Follow them with `aindex status`."
)


def status_payload(catalog: Catalog, waiting: int | str, runs: list[dict] | str) -> dict:
    """The inbox (`waiting_in_inbox`), the runs in progress (`runs_in_progress`), and per
    batch: its status, counts of its images per status, the rejected files and the
    duplicates, with reasons."""
    counts = catalog.status_counts()
    batches = {b.id: b.status for b in catalog.batches(kind="ingest")}
    refused = {batch: catalog.rejected_in_batch(batch) for batch in batches}
    version = catalog.active_index_version()
    served_from = served_versions(catalog)
    return {
        "index_version": None
        if version is None
        else {"id": version.id, "factory": version.factory},
        "inbox_waiting": waiting,
        "inbox_waiting_at_least": waiting == INBOX_SCAN_LIMIT,
        "runs_in_progress": runs,
        "batches": [
            {
                "batch_id": batch,
                "status": batch_status,
                "counts": counts.get(batch, {}),
                "served_from_versions": served_from.get(batch, []),
                "rejected": [
                    {"source_key": r.source_key, "reason": r.reason}
                    for r in refused[batch]
                    if not r.reason.startswith(DUPLICATE_REASON_PREFIX)
                ],
                "duplicates": [
                    duplicate_entry(catalog, r.source_key, r.reason, r.content_hash)
                    for r in refused[batch]
                    if r.reason.startswith(DUPLICATE_REASON_PREFIX)
                ],
            }
            for batch, batch_status in batches.items()
        ],
    }


# Counting stops here: `status` stays quick whatever the inbox holds.
INBOX_SCAN_LIMIT = 10_000


def waiting_in_inbox(catalog: Catalog, settings: Settings) -> int | str:
    """Files in the inbox that no batch claimed yet, or why they cannot be counted."""
    try:
        return len(unclaimed_keys(open_object_store(settings), catalog, "ingest", INBOX_SCAN_LIMIT))
    except ObjectStoreError as exc:
        return f"unknown: {exc}"


def runs_in_progress(settings: Settings) -> list[dict] | str:
    """Dagster runs queued or running in the instance `aindex ui` and the daemon share; a
    sentence instead when that instance cannot be read (its database is elsewhere)."""
    import dagster as dg
    from sqlalchemy.exc import SQLAlchemyError

    from aindex_assets.foreground import runs_in_progress as in_progress

    dagster_home(settings)
    try:
        with dg.DagsterInstance.get() as instance:
            runs = in_progress(instance)
    except (dg.DagsterError, SQLAlchemyError, OSError) as exc:
        return f"unknown: the Dagster instance cannot be read ({' '.join(str(exc).split())})"
    return [
        {
            "run_id": run.run_id,
            "job": run.job_name,
            "status": run.status.value,
            "batch": run.tags.get("dagster/partition"),
        }
        for run in runs
    ]


def served_versions(catalog: Catalog) -> dict[str, list[int]]:
    """{batch: the index versions whose current served index holds it}."""
    found: dict[str, list[int]] = {}
    for index_version in catalog.index_versions():
        served = catalog.current_served_index(index_version.id)
        for batch_id in served.batch_ids if served else []:
            found.setdefault(batch_id, []).append(index_version.id)
    return found


def duplicate_entry(catalog: Catalog, key: str, reason: str, content_hash: str | None) -> dict:
    image = catalog.image_by_hash(content_hash) if content_hash else None
    return {"source_key": key, "image_id": image.id if image else None, "reason": reason}


def status_text(payload: dict) -> str:
    """The status as lines; every stored key and reason is escaped for the terminal."""
    version = payload["index_version"]
    lines = [
        f"index version: {version['id']} ({shown(version['factory'])})"
        if version
        else "no index yet",
        inbox_line(payload),
        *runs_lines(payload["runs_in_progress"]),
    ]
    for batch in payload["batches"]:
        lines.append(batch_line(batch) + serving(batch))
        for kind, entries in (("rejected", batch["rejected"]), ("duplicate", batch["duplicates"])):
            lines += [f"    {kind} {shown(r['source_key'])}: {shown(r['reason'])}" for r in entries]
    return "\n".join(lines)


def batch_line(batch: dict) -> str:
    """`BATCH: status (counts of its images per status)`."""
    counts = ", ".join(f"{k}={v}" for k, v in sorted(batch["counts"].items()))
    return f"{shown(batch['batch_id'])}: {batch['status']} ({counts or 'no images'})"


def inbox_line(payload: dict) -> str:
    waiting = payload["inbox_waiting"]
    if isinstance(waiting, str):
        return f"inbox: {waiting}"
    more = " or more" if payload["inbox_waiting_at_least"] else ""
    return f"inbox: {waiting}{more} file(s) waiting" + (
        " (`aindex process` runs them now)" if waiting else ""
    )


def runs_lines(runs: list[dict] | str) -> list[str]:
    if isinstance(runs, str):
        return [f"runs in progress: {runs}"]
    lines = [f"runs in progress: {len(runs)}"]
    lines += [
        f"    {r['status'].lower()} {r['job']} run {r['run_id'][:8]}"
        + (f" for batch {shown(r['batch'])}" if r["batch"] else "")
        for r in runs
    ]
    return lines


def serving(batch: dict) -> str:
    """Where a batch's released images are searched: its versions' served indexes."""
    versions = ", ".join(f"v{v}" for v in batch["served_from_versions"])
    if versions:
        return f"; served from {versions}"
    released = {"activated", "indexed"} & set(batch["counts"])
    return "; not served yet" if released else ""


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    catalog = Catalog.open(settings.database_url)
    payload = status_payload(
        catalog, waiting_in_inbox(catalog, settings), runs_in_progress(settings)
    )
    emit(args, payload, status_text(payload))
    return EXIT_OK


def cmd_images(args: argparse.Namespace, settings: Settings) -> int:
    """A batch's images by name: id, status and the file name it was uploaded under."""
    catalog = Catalog.open(settings.database_url)
    if catalog.batch(args.batch) is None:
        raise UserError(f"no batch {args.batch!r} (see `aindex status`)")
    images = [
        {
            "image_id": i.id,
            "status": i.status,
            "name": PurePosixPath(i.source_key).name,
            "source_key": i.source_key,
        }
        for i in catalog.images_in_batch(args.batch)
    ]
    lines = [f"{i['image_id']}\t{i['status']}\t{shown(i['name'])}" for i in images]
    refused = catalog.rejected_in_batch(args.batch)
    if refused:
        lines.append(f"({len(refused)} file(s) refused: see `aindex status`)")
    emit(args, {"batch_id": args.batch, "images": images}, "\n".join(lines) or "no images")
    return EXIT_OK


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    activations = catalog.activations(batch_id=args.batch)
    if not activations:
        raise UserError(f"batch {args.batch!r} has no activated images")
    destination = Path(args.dest)
    destination.mkdir(parents=True, exist_ok=True)
    images = {i.id: i for i in catalog.images_by_ids([a.image_id for a in activations])}
    manifest = []
    for record in activations:
        image = images[record.image_id]
        suffix = PurePosixPath(record.object_key).suffix  # the release format's
        file_name = f"{image.id:012d}-{image.content_hash[:12]}{suffix}"
        store.get_file(record.object_key, destination / file_name)
        manifest.append(
            {
                "file": file_name,
                "image_id": image.id,
                "source_key": image.source_key,
                "content_hash": image.content_hash,
                "index_version": record.index_version,
                "psnr": record.psnr,
                "ssim": record.ssim,
            }
        )
    (destination / "manifest.json").write_text(json.dumps(manifest, indent=2))
    emit(
        args,
        {"exported": len(manifest), "dest": str(destination)},
        f"exported {len(manifest)} image(s) to {destination}",
    )
    return EXIT_OK


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    dagster_home(settings)
    command = ["dagster", "dev", "-m", "aindex_assets.definitions", "-p", str(args.port)]
    executable = Path(sys.executable).with_name("dagster")
    os.execv(str(executable), [str(executable), *command[1:]])
    return EXIT_OK


def find_report(catalog: Catalog, ref: str | None) -> ReportRecord:
    """A robustness report by id (digits only), by batch id (its latest), or the latest one."""
    if ref is None:
        reports = catalog.reports(kind="robustness")
        if not reports:
            raise UserError("no robustness report yet (run `aindex demo`)")
        return reports[-1]
    if ref.isdigit():
        report = catalog.report(int(ref))
        if report is None or report.kind != "robustness":
            raise UserError(f"no robustness report with id {ref}")
        return report
    if catalog.batch(ref) is None:
        raise UserError(f"no batch {ref!r} (see `aindex status`)")
    reports = catalog.reports(batch_id=ref, kind="robustness")
    if not reports:
        raise UserError(
            f"batch {ref!r} has no robustness report yet (materialize robustness_report for it)"
        )
    return reports[-1]


def report_document(store: ObjectStore, report: ReportRecord) -> dict:
    """The stored JSON document (the catalog's copy when the object is missing)."""
    if report.object_key and store.exists(report.object_key):
        return json.loads(store.get_bytes(report.object_key))
    return dict(report.payload)


def require_schema_2(payload: dict, what: str) -> None:
    if payload.get("schema_version", 1) < 2:
        raise UserError(
            f"report {payload.get('report_id', '?')} predates audited reports"
            f" (schema 1): {what} needs it re-materialized; --json still works"
        )


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from aindex_assets.lib.report import compare_markdown, report_markdown

    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    if args.compare:
        if args.report or args.html:
            raise UserError("--compare takes no other report and no --html")
        a, b = (report_document(store, find_report(catalog, ref)) for ref in args.compare)
        require_schema_2(a, "--compare")
        require_schema_2(b, "--compare")
        emit(args, {"a": a, "b": b}, compare_markdown(a, b))
        return 0
    record = find_report(catalog, args.report)
    payload = report_document(store, record)
    if args.html:
        require_schema_2(payload, "--html")
        Path(args.html).write_bytes(store.get_bytes(payload["files"]["html"]))
        print(f"wrote report {record.id} (batch {record.batch_id}) to {args.html}")
    elif args.json:
        print(json.dumps(payload, indent=2))
    else:
        schema = payload.get("schema_version", 1)
        print(report_markdown(payload) if schema >= 2 else payload["markdown"])
    return EXIT_OK


def verdict_line(verdict: Verdict, threshold: CopyThresholdRecord) -> str:
    """`path: copy of image 12 (source key), score ... <= threshold ...` and the like."""
    if verdict.reason:
        return f"{shown(verdict.query_key)}: rejected: {shown(verdict.reason)}"
    if verdict.image_id is None:
        return f"{shown(verdict.query_key)}: not a copy (no catalog image among the top results)"
    side = (">=" if verdict.is_copy else "<") if threshold.metric == "ip" else None
    side = side or ("<=" if verdict.is_copy else ">")
    what = "COPY of" if verdict.is_copy else "not a copy; closest is"
    return (
        f"{shown(verdict.query_key)}: {what} image {verdict.image_id} "
        f"({shown(verdict.source_key or '')}), "
        f"score {verdict.score:.4f} {side} threshold {threshold.threshold:.4f}"
    )


def judgement_text(judgement: Judgement) -> str:
    threshold = judgement.threshold
    lines = [threshold_summary(threshold)]
    lines += [verdict_line(v, threshold) for v in judgement.verdicts]
    return "\n".join(lines)


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    """Judge local image files against the served index (nothing goes to the inbox)."""
    from aindex_assets.lib.extractors import load_extractor
    from aindex_assets.services.copy_detection.detection import DetectionSetting
    from aindex_assets.services.copy_detection.judge import judge_files

    files = collect_files(args.images)
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    extractor = load_extractor(settings.extractor_spec, device=settings.device)
    setting = DetectionSetting(k=args.k, nprobe=args.nprobe)
    judgement = judge_files(files, store, catalog, extractor, setting)
    emit(args, judgement.to_dict(), judgement_text(judgement))
    return query_exit_status(judgement.verdicts)


def query_exit_status(verdicts: Sequence[Verdict]) -> int:
    """One copy settles the question; "no copy" only holds when every input was judged."""
    if any(v.is_copy for v in verdicts):
        return EXIT_COPY_FOUND
    return EXIT_ERROR if any(v.reason for v in verdicts) else EXIT_NO_COPY


def add_query_parser(sub: argparse._SubParsersAction) -> None:
    query = sub.add_parser(
        "query",
        help="is an image a copy of an indexed one? (ad hoc, nothing is uploaded)",
        epilog=QUERY_EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the status table
    )
    query.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    query.add_argument("--k", type=positive_int, default=10, help="results searched per image")
    query.add_argument("--nprobe", type=positive_int, default=1, help="index lists probed")
    query.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_process(args: argparse.Namespace, settings: Settings) -> int:
    """Claim and run what waits in the inbox now, in this process (no daemon needed)."""
    from aindex_assets.foreground import process_inbox

    run_config = read_run_config(args.config) if args.config else {}
    dagster_home(settings)
    catalog = Catalog.open(settings.database_url)
    with foreground_failures():
        batch_ids = process_inbox(settings, catalog, run_config)
    counts = catalog.status_counts()
    batches = [
        {"batch_id": b, "status": catalog.batch(b).status, "counts": counts.get(b, {})}
        for b in batch_ids
    ]
    lines = [batch_line(batch) for batch in batches]
    emit(args, {"batches": batches}, "\n".join(lines) or "the inbox is empty: nothing to process")
    return EXIT_OK


@contextmanager
def foreground_failures() -> Iterator[None]:
    """A foreground run's failure is the step's own message, on one line, not a traceback."""
    from aindex_assets.foreground import ForegroundError

    try:
        yield
    except ForegroundError as exc:
        raise UserError(str(exc)) from None


def read_run_config(path: str) -> dict:
    """Asset config for the batch jobs, as in the launchpad: `ops: {asset: {config: ...}}`."""
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(config, dict) or not isinstance(config.get("ops", {}), dict):
        raise UserError(f"{path}: expected a mapping with an `ops` mapping of asset config")
    unknown = set(config) - {"ops"}
    if unknown:
        raise UserError(f"{path}: only `ops` may be set here, not {', '.join(sorted(unknown))}")
    return config


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from aindex_assets.demo import run_demo

    with foreground_failures():
        summary = run_demo(settings, images=args.images, max_side=args.max_side)
    emit(args, summary, summary["text"])
    return EXIT_OK


def emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({k: v for k, v in payload.items() if k != "text"}, indent=2, default=str))
    else:
        print(text)


def positive_int(text: str) -> int:
    """argparse type: counts and sizes, where 0 or less would fail later with a traceback."""
    try:
        value = int(text)
    except ValueError:
        value = 0  # reported below, like any other value below 1
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return value


def port_number(text: str) -> int:
    """argparse type: a TCP port."""
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (1-65535), not {text!r}")
    return value


def package_version() -> str:
    try:
        return version("aindex_assets")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


class Parser(argparse.ArgumentParser):
    """Usage errors as one line (argparse prints the whole usage before), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def parser() -> argparse.ArgumentParser:
    root = Parser(
        prog="aindex",
        description=__doc__,
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the status lines
    )
    root.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {package_version()}",
        help="print the installed version and exit",
    )
    sub = root.add_subparsers(dest="command", metavar="COMMAND", required=True, help="what to do")
    demo = sub.add_parser(
        "demo", help="run the whole asset graph on real photos shipped in packages"
    )
    demo.add_argument("--images", type=positive_int, default=24, help="how many photos to activate")
    demo.add_argument(
        "--max-side", type=positive_int, default=1024, help="longest side of the photos"
    )
    process = sub.add_parser(
        "process",
        help="claim and run what waits in the inbox now, in the foreground (no daemon needed)",
    )
    process.add_argument(
        "--config",
        metavar="YAML",
        help="asset config for the batch runs, as in the launchpad: ops: {asset: {config: ...}}",
    )
    ingest = sub.add_parser("ingest", help="upload files or folders to the inbox")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to upload")
    sub.add_parser(
        "status",
        help="inbox, runs in progress, batches with their status and counts, rejected files",
    )
    images = sub.add_parser("images", help="a batch's images: id, status and uploaded name")
    images.add_argument("batch", help="batch id (see `aindex status`)")
    export = sub.add_parser("export", help="activated images of a batch, with a manifest")
    export.add_argument("batch", help="batch id (see `aindex status`)")
    export.add_argument("dest", help="folder to write the images and manifest.json to")
    ui = sub.add_parser("ui", help="start the Dagster UI on the same data")
    ui.add_argument("--port", type=port_number, default=3000, help="port of the UI (default 3000)")
    for command in (demo, process, ingest, export, images, sub.choices["status"]):
        command.add_argument("--json", action="store_true", help="machine-readable output")
    add_report_parser(sub)
    add_query_parser(sub)
    return root


def add_report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report",
        help="a robustness report as markdown (default), JSON or a self-contained HTML file",
    )
    report.add_argument(
        "report",
        nargs="?",
        metavar="BATCH_OR_ID",
        help="report id (digits only) or batch id (its latest report); default: the latest",
    )
    output = report.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="the stored JSON document")
    output.add_argument("--markdown", action="store_true", help="markdown (the default)")
    output.add_argument("--html", metavar="PATH", help="write the HTML report to PATH")
    report.add_argument(
        "--compare", nargs=2, metavar=("A", "B"), help="two reports side by side (ids or batches)"
    )


COMMANDS = {
    "demo": cmd_demo,
    "process": cmd_process,
    "ingest": cmd_ingest,
    "status": cmd_status,
    "images": cmd_images,
    "export": cmd_export,
    "ui": cmd_ui,
    "report": cmd_report,
    "query": cmd_query,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every user error ends here as one line on stderr (see EXIT_STATUS_HELP)."""
    args = parser().parse_args(argv)
    try:
        status = COMMANDS[args.command](args, Settings.from_env())
        sys.stdout.flush()  # a reader that left shows up here, where it can still be handled
    except BrokenPipeError:
        return reader_gone()
    except USER_ERRORS as exc:
        raise failure(args.command, str(exc) or type(exc).__name__) from None
    except SystemExit as exc:
        if not isinstance(exc.code, str):  # a status, not a message
            raise
        raise failure(args.command, exc.code) from None
    return status


def failure(command: str, message: str) -> Failure:
    """Write `aindex COMMAND: message` on stderr, on one line whatever the message holds."""
    line = f"aindex {command}: {' '.join(message.split())}"
    print(line, file=sys.stderr)
    return Failure(line)


def reader_gone() -> int:
    """stdout's reader left (`aindex status | head -1`): the Python docs' recipe for SIGPIPE.

    Pointing stdout at devnull keeps the interpreter's final flush from failing again
    with a traceback.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    raise SystemExit(main())
