"""Snapshot of the asset graph the UI shows: keys, dependencies, descriptions, partitions.

A change to the lineage, a docstring or a partitioning shows up here as a reviewable diff.
After an intended change, rewrite the snapshot with `AINDEX_UPDATE_SNAPSHOTS=1 make test`.
"""

import json
import os
from pathlib import Path

import dagster as dg
import pytest

from aindex_assets import definitions
from aindex_assets.defs import jobs

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def graph_snapshot(defs: dg.Definitions) -> dict:
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        partitions = node.partitions_def
        assets[key.to_user_string()] = {
            "deps": sorted(k.to_user_string() for k in node.parent_keys),
            "group": node.group_name,
            "partitions": getattr(partitions, "name", None) if partitions else None,
            "pools": sorted(node.pools or []),
            "eager": node.automation_condition is not None,
            "description": node.description,
            "checks": sorted(c.name for c in node.check_keys),
        }
    return {
        "assets": assets,
        "jobs": sorted(job.name for job in jobs.ALL_JOBS),
        "sensors": sorted(s.name for s in defs.sensors),
    }


def test_asset_graph_matches_snapshot() -> None:
    current = graph_snapshot(definitions.defs)
    if os.environ.get("AINDEX_UPDATE_SNAPSHOTS") == "1" or not SNAPSHOT.exists():
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())


def test_every_asset_and_check_has_a_description() -> None:
    graph = definitions.defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, f"{key.to_user_string()} has no docstring"
    for check in definitions.defs.asset_checks:
        for spec in check.check_specs:
            assert spec.description, f"check {spec.name} has no docstring"


@pytest.mark.parametrize("layer", ["lib", "services"])
def test_layer_imports_no_dagster(layer: str) -> None:
    root = Path(definitions.__file__).parent / layer
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if "import dagster" in path.read_text() or "from dagster" in path.read_text()
    ]
    assert offenders == []


def test_asset_modules_import_no_other_domain() -> None:
    """defs/<domain>/ imports only its own domain, services, lib, storage and shared glue."""
    defs_root = Path(definitions.__file__).parent / "defs"
    domains = [p.name for p in defs_root.iterdir() if p.is_dir() and p.name != "__pycache__"]
    crossings = []
    for domain in domains:
        for path in (defs_root / domain).glob("*.py"):
            text = path.read_text()
            crossings += [
                f"{domain}/{path.name} -> {other}"
                for other in domains
                if other != domain and f"aindex_assets.defs.{other}" in text
            ]
    assert crossings == []


def test_eager_assets_have_a_running_automation_sensor() -> None:
    """Without a running automation sensor, `search_index` and `copy_threshold` never update."""
    eager = [
        key.to_user_string()
        for key in definitions.defs.resolve_asset_graph().get_all_asset_keys()
        if definitions.defs.resolve_asset_graph().get(key).automation_condition is not None
    ]
    sensor = definitions.defs.resolve_sensor_def("automation_sensor")
    assert sorted(eager) == ["copy_threshold", "search_index"]
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
