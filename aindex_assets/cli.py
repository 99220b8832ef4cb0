"""The `aindex` command: demo, ingest, status, export, report and the UI on the configured store."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from aindex_assets.instance import dagster_home
from aindex_assets.services.copy_detection.calibration import threshold_summary
from aindex_assets.services.copy_detection.detection import ExtractorMismatch, Verdict
from aindex_assets.services.copy_detection.judge import Judgement
from aindex_assets.services.index import NoIndex
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog, CopyThresholdRecord, ReportRecord
from aindex_assets.storage.inbox import INBOX_PREFIX, upload_key
from aindex_assets.storage.objectstore import ObjectStore, open_object_store


def collect_files(paths: Sequence[str], command: str = "ingest") -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(f"aindex {command}: {raw}: no such file or folder")
    return files


def upload(store: ObjectStore, named_bytes: Sequence[tuple[str, bytes]], prefix: str) -> list[str]:
    keys = []
    for name, data in tqdm(
        named_bytes, desc="upload", unit="file", disable=not sys.stderr.isatty()
    ):
        key = upload_key(name, prefix=prefix)
        store.put_bytes(key, data)
        keys.append(key)
    return keys


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    files = collect_files(args.paths)
    store = open_object_store(settings)
    keys = upload(store, [(f.name, f.read_bytes()) for f in files], INBOX_PREFIX)
    emit(
        args,
        {"uploaded": len(keys), "keys": keys},
        f"uploaded {len(keys)} file(s) to {store.describe()} under {INBOX_PREFIX}",
    )
    return 0


def status_payload(catalog: Catalog) -> dict:
    counts = catalog.status_counts()
    rejected = {
        batch: [
            {"source_key": r.source_key, "reason": r.reason}
            for r in catalog.rejected_in_batch(batch)
        ]
        for batch in counts
    }
    version = catalog.active_index_version()
    return {
        "index_version": None
        if version is None
        else {"id": version.id, "factory": version.factory},
        "batches": [
            {"batch_id": batch, "counts": by_status, "rejected": rejected[batch]}
            for batch, by_status in counts.items()
        ],
    }


def status_text(payload: dict) -> str:
    version = payload["index_version"]
    lines = [
        f"index version: {version['id']} ({version['factory']})" if version else "no index yet"
    ]
    for batch in payload["batches"]:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(batch["counts"].items()))
        lines.append(f"{batch['batch_id']}: {counts}")
        lines.extend(f"    rejected {r['source_key']}: {r['reason']}" for r in batch["rejected"])
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    payload = status_payload(Catalog.open(settings.database_url))
    emit(args, payload, status_text(payload))
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    activations = catalog.activations(batch_id=args.batch)
    if not activations:
        raise SystemExit(f"aindex export: batch {args.batch!r} has no activated images")
    destination = Path(args.dest)
    destination.mkdir(parents=True, exist_ok=True)
    images = {i.id: i for i in catalog.images_by_ids([a.image_id for a in activations])}
    manifest = []
    for record in activations:
        image = images[record.image_id]
        file_name = f"{image.id:012d}-{image.content_hash[:12]}.png"
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
    return 0


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    dagster_home(settings)
    command = ["dagster", "dev", "-m", "aindex_assets.definitions", "-p", str(args.port)]
    executable = Path(sys.executable).with_name("dagster")
    os.execv(str(executable), [str(executable), *command[1:]])
    return 0


def find_report(catalog: Catalog, ref: str | None) -> ReportRecord:
    """A robustness report by id (digits only), by batch id (its latest), or the latest one."""
    if ref is None:
        reports = catalog.reports(kind="robustness")
        if not reports:
            raise SystemExit("aindex report: no robustness report yet (run `aindex demo`)")
        return reports[-1]
    if ref.isdigit():
        report = catalog.report(int(ref))
        if report is None or report.kind != "robustness":
            raise SystemExit(f"aindex report: no robustness report with id {ref}")
        return report
    if catalog.batch(ref) is None:
        raise SystemExit(f"aindex report: no batch {ref!r} (see `aindex status`)")
    reports = catalog.reports(batch_id=ref, kind="robustness")
    if not reports:
        raise SystemExit(
            f"aindex report: batch {ref!r} has no robustness report yet"
            " (materialize robustness_report for it)"
        )
    return reports[-1]


def report_document(store: ObjectStore, report: ReportRecord) -> dict:
    """The stored JSON document (the catalog's copy when the object is missing)."""
    if report.object_key and store.exists(report.object_key):
        return json.loads(store.get_bytes(report.object_key))
    return dict(report.payload)


def require_schema_2(payload: dict, what: str) -> None:
    if payload.get("schema_version", 1) < 2:
        raise SystemExit(
            f"aindex report: report {payload.get('report_id', '?')} predates audited reports"
            f" (schema 1): {what} needs it re-materialized; --json still works"
        )


def cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from aindex_assets.lib.report import compare_markdown, report_markdown

    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    if args.compare:
        if args.report or args.html:
            raise SystemExit("aindex report: --compare takes no other report and no --html")
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
    return 0


def verdict_line(verdict: Verdict, threshold: CopyThresholdRecord) -> str:
    """`path: copy of image 12 (source key), score ... <= threshold ...` and the like."""
    if verdict.reason:
        return f"{verdict.query_key}: rejected: {verdict.reason}"
    if verdict.image_id is None:
        return f"{verdict.query_key}: not a copy (no catalog image among the top results)"
    side = (">=" if verdict.is_copy else "<") if threshold.metric == "ip" else None
    side = side or ("<=" if verdict.is_copy else ">")
    what = "COPY of" if verdict.is_copy else "not a copy; closest is"
    return (
        f"{verdict.query_key}: {what} image {verdict.image_id} ({verdict.source_key}), "
        f"score {verdict.score:.4f} {side} threshold {threshold.threshold:.4f}"
    )


def judgement_text(judgement: Judgement) -> str:
    threshold = judgement.threshold
    lines = [threshold_summary(threshold)]
    lines += [verdict_line(v, threshold) for v in judgement.verdicts]
    if judgement.calibrated_now:
        lines.insert(0, "no threshold was recorded for this served index: calibrated one first")
    return "\n".join(lines)


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    """Judge local image files against the served index (nothing goes to the inbox)."""
    from aindex_assets.lib.extractors import load_extractor
    from aindex_assets.services.copy_detection.detection import DetectionSetting
    from aindex_assets.services.copy_detection.judge import judge_files

    files = collect_files(args.images, command="query")
    store, catalog = open_object_store(settings), Catalog.open(settings.database_url)
    extractor = load_extractor(settings.extractor_spec, device=settings.device)
    setting = DetectionSetting(k=args.k, nprobe=args.nprobe)
    try:
        judgement = judge_files(files, store, catalog, extractor, setting)
    except (NoIndex, ExtractorMismatch) as exc:
        raise SystemExit(f"aindex query: {exc}") from exc
    emit(args, judgement.to_dict(), judgement_text(judgement))
    return 0


def add_query_parser(sub: argparse._SubParsersAction) -> None:
    query = sub.add_parser(
        "query", help="is an image a copy of an indexed one? (ad hoc, nothing is uploaded)"
    )
    query.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    query.add_argument("--k", type=int, default=10, help="results searched per image")
    query.add_argument("--nprobe", type=int, default=1, help="index lists probed")
    query.add_argument("--json", action="store_true", help="machine-readable output")


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from aindex_assets.demo import run_demo

    summary = run_demo(settings, images=args.images, max_side=args.max_side)
    emit(args, summary, summary["text"])
    return 0


def emit(args: argparse.Namespace, payload: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps({k: v for k, v in payload.items() if k != "text"}, indent=2, default=str))
    else:
        print(text)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="aindex", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="run the whole asset graph on real photos shipped in packages"
    )
    demo.add_argument("--images", type=int, default=24, help="how many photos to activate")
    demo.add_argument("--max-side", type=int, default=1024, help="longest side of the photos")
    ingest = sub.add_parser("ingest", help="upload files or folders to the inbox")
    ingest.add_argument("paths", nargs="+")
    sub.add_parser("status", help="batches, counts per status, rejected files with reasons")
    export = sub.add_parser("export", help="activated images of a batch, with a manifest")
    export.add_argument("batch")
    export.add_argument("dest")
    ui = sub.add_parser("ui", help="start the Dagster UI on the same data")
    ui.add_argument("--port", type=int, default=3000)
    for command in (demo, ingest, export, sub.choices["status"]):
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
    "ingest": cmd_ingest,
    "status": cmd_status,
    "export": cmd_export,
    "ui": cmd_ui,
    "report": cmd_report,
    "query": cmd_query,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return COMMANDS[args.command](args, Settings.from_env())


if __name__ == "__main__":
    raise SystemExit(main())
