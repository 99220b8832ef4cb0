"""Dagster glue of the intake: a sensor proposes batches, the batch's own run claims them.

A sensor evaluation only reads (:func:`aindex_assets.services.inbox.plan_batches`): it
groups the unclaimed inbox objects into batches and returns, per batch, a partition and a
run request whose run config names the batch's inbox keys (:class:`InboxBatchConfig` on
the first asset). Dagster applies partitions, runs and the sensor cursor only when the
daemon commits a real tick, never in a preview ("Test sensor", `dagster sensor preview`),
so an evaluation that launches nothing claims nothing. The run's first asset claims its
keys (:func:`claim_for_run`): one catalog insert per key decides which batch gets it.

The sensor cursor (JSON) lists the batches proposed recently whose runs have not finished,
with their keys, so that the next ticks do not propose those keys again while the runs
wait in the queue. A proposal is dropped once its latest run finished (keys it did not
claim become proposable again) or, when no run carries its partition, after
``PROPOSAL_TIMEOUT_S``. The cursor is thus bounded by the pending queue, which
``MAX_PENDING_BATCHES`` caps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg
from pydantic import Field

from aindex_assets.defs.resources import StorageResource
from aindex_assets.services.inbox import (
    PlannedBatch,
    claim_batch_members,
    inbox_prefix,
    plan_batches,
)
from aindex_assets.storage.inbox import BatchManifest

# A proposal with no run after this long is taken as never launched: its keys may be
# proposed again (a run that does start later loses them to the new batch, or vice versa).
PROPOSAL_TIMEOUT_S = 15 * 60
# Batches requested and not finished beyond which a sensor waits instead of adding more.
MAX_PENDING_BATCHES = 32
PARTITION_TAG = "dagster/partition"


class InboxBatchConfig(dg.Config):
    """The inbox files a batch claims, set by its sensor's run request (see the launchpad).

    Left empty when a partition is materialized by hand: the run then takes the files the
    batch claimed before.
    """

    inbox_keys: list[str] = Field(
        default_factory=list, description="Inbox keys this batch claims, then moves out."
    )
    unsafe_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Names the store cannot address (escaped), with the reason they are refused.",
    )


INBOX_CONFIG_FIELDS = tuple(InboxBatchConfig.model_fields)


def claim_for_run(
    storage: StorageResource, batch_id: str, kind: str, config: InboxBatchConfig
) -> BatchManifest:
    """What the run's first asset calls: claim the batch's keys, return its manifest."""
    return claim_batch_members(
        storage.store(),
        storage.catalog(),
        batch_id,
        kind,
        config.inbox_keys,
        config.unsafe_keys,
    )


def batch_run_config(batch: PlannedBatch, op_name: str) -> dict[str, Any]:
    """The run config that hands a planned batch to the asset that claims it."""
    claim = {"inbox_keys": list(batch.keys), "unsafe_keys": dict(batch.unsafe)}
    return {"ops": {op_name: {"config": claim}}}


def with_request_config(run_config: Mapping[str, Any], request: dg.RunRequest) -> dict[str, Any]:
    """``run_config`` plus what a run request carries (for runs executed in process)."""
    ops = {name: dict(value) for name, value in run_config.get("ops", {}).items()}
    for name, value in (request.run_config or {}).get("ops", {}).items():
        merged = {**ops.get(name, {}).get("config", {}), **value.get("config", {})}
        ops[name] = {**ops.get(name, {}), "config": merged}
    return {**run_config, "ops": ops}


@dataclass(frozen=True)
class Proposal:
    """A batch a tick requested: its partition, when, and its inbox names."""

    batch_id: str
    at: float
    keys: tuple[str, ...]


def load_proposals(cursor: str | None) -> list[Proposal]:
    if not cursor:
        return []
    raw = json.loads(cursor)
    return [Proposal(p["batch_id"], float(p["at"]), tuple(p["keys"])) for p in raw["proposed"]]


def dump_proposals(proposals: Sequence[Proposal]) -> str:
    return json.dumps({"proposed": [asdict(p) for p in proposals]}, separators=(",", ":"))


def still_pending(instance: dg.DagsterInstance, proposal: Proposal, now: float) -> bool:
    """True while the proposal's run may still claim its keys."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={PARTITION_TAG: proposal.batch_id}), limit=1
    )
    if runs:
        return not runs[0].is_finished
    return now - proposal.at < PROPOSAL_TIMEOUT_S


def propose_batches(
    context: dg.SensorEvaluationContext,
    storage: StorageResource,
    *,
    kind: str,
    job_name: str,
    op_name: str,
    partitions: dg.DynamicPartitionsDefinition,
    max_batches: int,
    max_pending: int = MAX_PENDING_BATCHES,
) -> dg.SensorResult | dg.SkipReason:
    """One partition and one run per planned batch; the batch's keys go in its run config."""
    now = time.time()
    proposals = load_proposals(context.cursor)
    pending = [p for p in proposals if still_pending(context.instance, p, now)]
    room = min(max_batches, max_pending - len(pending))
    if room <= 0:
        return dg.SkipReason(f"{len(pending)} requested batch(es) not finished yet: waiting")
    skip = {key for p in pending for key in p.keys}
    planned = plan_batches(
        storage.store(), storage.catalog(), kind=kind, max_batches=room, skip=skip
    )
    if not planned:
        return dg.SkipReason(f"no unclaimed objects under {inbox_prefix(kind)}")
    batch_ids = [b.batch_id for b in planned]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=b.batch_id,
                partition_key=b.batch_id,
                job_name=job_name,
                run_config=batch_run_config(b, op_name),
            )
            for b in planned
        ],
        dynamic_partitions_requests=[partitions.build_add_request(batch_ids)],
        cursor=dump_proposals(pending + [Proposal(b.batch_id, now, b.members) for b in planned]),
    )
