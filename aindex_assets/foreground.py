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
from aindex_assets.defs.ingest.sensors import CLAIMING_ASSET
from aindex_assets.defs.jobs import activate_batch_job, bootstrap_job, calibrate_job
from aindex_assets.defs.partitions import INGEST_BATCHES
from aindex_assets.lib.progress import progress_shown
from aindex_assets.services.inbox import PlannedBatch, plan_batches
from aindex_assets.settings import Settings
from aindex_assets.storage.catalog import Catalog
from aindex_assets.storage.objectstore import open_object_store

MAX_FOREGROUND_BATCHES = 1000
BATCH_JOBS = (activate_batch_job.name, bootstrap_job.name)
IN_PROGRESS = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


class ForegroundError(RuntimeError):
    """A foreground run that cannot start or did not succeed; the message says why."""


class BatchFailed(ForegroundError):
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
    (standard error by default). Returns the batch ids. Refuses to start while ingestion
    runs are queued or running: the daemon's sensor may have proposed the same files.
    """
    from aindex_assets.definitions import build_definitions

    defs = build_definitions(settings)
    ops = dict((run_config or {}).get("ops", {}))
    check_asset_names(defs, ops)
    stream = stream or sys.stderr
    with dg.DagsterInstance.get() as instance:
        refuse_beside_running_batches(instance)
        planned = plan_batches(
            open_object_store(settings), catalog, kind="ingest", max_batches=MAX_FOREGROUND_BATCHES
        )
        done = 0
        with progress_shown(stream), one_line_warnings(stream):
            try:
                for batch in planned:
                    print(f"batch {batch.batch_id} ({done + 1} of {len(planned)})", file=stream)
                    run_batch(defs, instance, catalog, batch, ops, stream)
                    done += 1
            finally:
                # What the daemon's automation sensor does after a new served index: also
                # when a later batch failed, since the earlier ones are already served.
                if done:
                    run_job(defs, instance, calibrate_job.name, ops, {}, stream)
    return [b.batch_id for b in planned]


def check_asset_names(defs: dg.Definitions, ops: Mapping[str, Any]) -> None:
    """A misspelt asset in the config would otherwise be dropped without a word."""
    known = {node.key.to_user_string() for node in defs.resolve_asset_graph().asset_nodes}
    unknown = sorted(set(ops) - known)
    if unknown:
        raise ForegroundError(
            f"no asset named {', '.join(unknown)} (assets: {', '.join(sorted(known))})"
        )


def runs_in_progress(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The instance's runs that are queued, starting, running or being canceled."""
    return list(instance.get_runs(filters=dg.RunsFilter(statuses=list(IN_PROGRESS))))


def refuse_beside_running_batches(instance: dg.DagsterInstance) -> None:
    batches = [run for run in runs_in_progress(instance) if run.job_name in BATCH_JOBS]
    if batches:
        raise ForegroundError(
            f"{len(batches)} ingestion run(s) are queued or running (the daemon's): let them "
            "finish, or stop the inbox_sensor, before processing the inbox here"
        )


def run_batch(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    catalog: Catalog,
    batch: PlannedBatch,
    ops: Mapping[str, Any],
    stream: TextIO,
) -> None:
    """Run one planned batch's job (the bootstrap while no index exists), as the sensor's
    run would; a failure marks the batch `failed` and raises BatchFailed."""
    instance.add_dynamic_partitions(INGEST_BATCHES.name, [batch.batch_id])
    job = bootstrap_job if catalog.active_index_version() is None else activate_batch_job
    ops = {**ops, **batch_run_config(batch, CLAIMING_ASSET)["ops"]}
    try:
        run_job(defs, instance, job.name, ops, {"partition_key": batch.batch_id}, stream)
    except BatchFailed:
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
    try:
        result = job.with_logger_defs({"progress": logger}).execute_in_process(
            instance=instance,
            run_config={
                "ops": {name: config for name, config in ops.items() if name in steps},
                "loggers": {"progress": {}},
            },
            raise_on_error=False,
            **options,
        )
    except dg.DagsterInvalidConfigError as exc:
        problems = "; ".join(error.message for error in exc.errors) or str(exc)
        raise ForegroundError(f"the run config of {job_name} is not valid: {problems}") from None
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
