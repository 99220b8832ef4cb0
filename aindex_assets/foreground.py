"""Inbox batches run in the foreground, in this process: `aindex process` and `aindex demo`.

Each batch runs as the inbox sensor's run would: the same job, its files named in the run
config and claimed by its own `raw_images` step, recorded in the Dagster instance so that
the UI lists it. Instead of Dagster's event log on the console, stderr shows progress: the
step running and what it does, bars for the long loops, warnings and failures in one line.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TextIO

import dagster as dg
from dagster._core.events import DagsterEventType

from aindex_assets.defs.claims import batch_run_config
from aindex_assets.defs.jobs import activate_batch_job, bootstrap_job, calibrate_job
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.lib.progress import progress_shown
from aindex_assets.services.inbox import PlannedBatch, plan_batches
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.objectstore import open_object_store

MAX_FOREGROUND_BATCHES = 1000
CLAIMING_ASSET = "raw_images"


class BatchFailed(RuntimeError):
    """A batch run failed; the catalog marks its batch `failed` and the message says why."""


def process_inbox(
    settings: Settings,
    catalog: Catalog,
    run_config: Mapping[str, Any] | None = None,
    stream: TextIO | None = None,
) -> list[str]:
    """Claim and run every batch waiting in the inbox now, then refresh the copy threshold.

    `run_config` holds asset config (`{"ops": {asset: {"config": ...}}}`) for any asset
    of the batch jobs; each job gets the part that concerns it. Progress goes to `stream`
    (standard error by default). Returns the batch ids.
    """
    from aindex_assets.definitions import build_definitions

    instance = dg.DagsterInstance.get()
    planned = plan_batches(
        open_object_store(settings), catalog, kind="ingest", max_batches=MAX_FOREGROUND_BATCHES
    )
    if not planned:
        return []
    instance.add_dynamic_partitions(INGEST_BATCHES.name, [b.batch_id for b in planned])
    defs = build_definitions(settings)
    stream = stream or sys.stderr
    with progress_shown(stream), one_line_warnings(stream):
        for number, batch in enumerate(planned, 1):
            print(f"batch {batch.batch_id} ({number} of {len(planned)})", file=stream)
            run_batch(defs, instance, catalog, batch, run_config or {}, stream)
        # The daemon's automation sensor would do this after the new served index.
        run_job(defs, instance, calibrate_job.name, {}, {}, stream)
    return [b.batch_id for b in planned]


def run_batch(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    catalog: Catalog,
    batch: PlannedBatch,
    run_config: Mapping[str, Any],
    stream: TextIO,
) -> None:
    job = bootstrap_job if catalog.active_index_version() is None else activate_batch_job
    ops = {**run_config.get("ops", {}), **batch_run_config(batch, CLAIMING_ASSET)["ops"]}
    try:
        run_job(defs, instance, job.name, ops, {"partition_key": batch.batch_id}, stream)
    except BatchFailed:
        if catalog.batch(batch.batch_id) is not None:
            catalog.advance_batch_status(batch.batch_id, "failed")
        raise


def run_job(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    ops: Mapping[str, Any],
    options: Mapping[str, Any],
    stream: TextIO,
) -> None:
    """Run a job in this process, reporting on `stream` through the progress logger only."""
    job = defs.resolve_job_def(job_name)
    steps = {node.name for node in job.graph.node_defs}
    logger = step_progress_logger(stream, step_summaries(defs, steps))
    result = job.with_logger_defs({"progress": logger}).execute_in_process(
        instance=instance,
        run_config={
            "ops": {name: config for name, config in ops.items() if name in steps},
            "loggers": {"progress": {}},
        },
        raise_on_error=False,
        **options,
    )
    if not result.success:
        raise BatchFailed(failure_message(result, job_name))


def failure_message(result: dg.ExecuteInProcessResult, job_name: str) -> str:
    errors = [
        f"{event.step_key}: {event.step_failure_data.error.message.strip()}"
        for event in result.all_events
        if event.event_type == DagsterEventType.STEP_FAILURE and event.step_failure_data.error
    ]
    where = "; ".join(errors) or "see the run in the UI"
    return f"run {result.run_id} of {job_name} failed: {where}"


def step_summaries(defs: dg.Definitions, steps: set[str]) -> dict[str, str]:
    """{asset: the first sentence of its description}: what the progress says it is doing."""
    summaries = {}
    for node in defs.resolve_asset_graph().asset_nodes:
        name = node.key.to_user_string()
        if name in steps and node.description:
            paragraph = " ".join(node.description.split("\n\n")[0].split())
            summaries[name] = paragraph.split(". ")[0].rstrip(".")
    return summaries


def step_progress_logger(stream: TextIO, summaries: Mapping[str, str]) -> dg.LoggerDefinition:
    @dg.logger(description="Step starts, ends, warnings and failures, one line each.")
    def progress(_context: dg.InitLoggerContext) -> logging.Logger:
        log = logging.Logger("aindex.progress", logging.DEBUG)  # Dagster events are DEBUG
        log.addHandler(StepProgress(stream, summaries))
        return log

    return progress


class StepProgress(logging.Handler):
    """Turns a run's Dagster events into one line per step start and end on `stream`."""

    def __init__(self, stream: TextIO, summaries: Mapping[str, str]) -> None:
        super().__init__(logging.DEBUG)
        self.stream = stream
        self.summaries = summaries
        self.started: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", {})
        event = meta.get("dagster_event")
        step = meta.get("step_key") or ""
        if event is None:
            if record.levelno >= logging.WARNING:
                self.line(f"{step}: warning: {meta.get('orig_message', record.getMessage())}")
            return
        kind = event.event_type
        if kind == DagsterEventType.STEP_START:
            self.started[step] = time.monotonic()
            summary = self.summaries.get(step)
            self.line(f"{step}: {summary}..." if summary else f"{step}...")
        elif kind == DagsterEventType.STEP_SUCCESS:
            seconds = time.monotonic() - self.started.get(step, time.monotonic())
            self.line(f"{step}: done in {seconds:.1f} s")
        elif kind == DagsterEventType.STEP_FAILURE and event.step_failure_data.error:
            self.line(f"{step}: FAILED: {event.step_failure_data.error.message.strip()}")
        elif kind == DagsterEventType.ASSET_CHECK_EVALUATION:
            check = event.asset_check_evaluation_data
            if not check.passed:
                self.line(f"{step}: check {check.check_name} failed")

    def line(self, text: str) -> None:
        """`text` on one indented line, under the batch's own line."""
        print("  " + " ".join(text.split()), file=self.stream, flush=True)


@contextmanager
def one_line_warnings(stream: TextIO) -> Iterator[None]:
    """Python warnings raised in the steps as one `warning: message` line each."""

    def show(message: Warning | str, *_: object, **__: object) -> None:
        print(f"  warning: {' '.join(str(message).split())}", file=stream, flush=True)

    with warnings.catch_warnings():  # restores the filters and showwarning afterwards
        warnings.showwarning = show
        yield
