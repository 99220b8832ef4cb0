"""The docker-compose deployment holds together: compose file, image, instance config, workspace.

No Docker engine is needed: the compose file, Dockerfile and .dockerignore are parsed and
cross-checked, dagster.yaml goes through Dagster's own loader and schema, and a Dagster
instance built from it opens a fresh database on the real PostgreSQL server.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import yaml
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
INSTANCE_YAML = REPO / "deploy" / "dagster.yaml"
WORKSPACE_YAML = REPO / "deploy" / "workspace.yaml"
INITDB_SQL = REPO / "deploy" / "initdb.sql"

DAGSTER_SERVICES = ("dagster-migrate", "user_code", "webserver", "daemon")
LONG_RUNNING = ("postgres", "minio", "user_code", "webserver", "daemon")
EXPECTED_SERVICES = {"postgres", "minio", "minio-init", *DAGSTER_SERVICES}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|CREDENTIAL", re.IGNORECASE)
# `$${X}` and `$$X` are escapes for the container's shell, not compose interpolation.
COMPOSE_REFERENCE = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
REQUIRED_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}$")
URL_USERINFO = re.compile(r"://[^/@\s:]+:([^/@\s]+)@")
DEPENDS_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
DEFAULT_TEST_POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    return read_env_file(ENV_EXAMPLE)


def read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), f"{path}:{number}: not NAME=value"
        assert name not in values, f"{path}:{number}: {name} is defined twice"
        values[name] = value
    return values


def command_args(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def option_value(args: list[str], *names: str) -> str:
    for index, arg in enumerate(args[:-1]):
        if arg in names:
            return args[index + 1]
    raise AssertionError(f"none of {names} in {args}")


def volume_mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (named volume or host path) of a service's short-form mounts."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        mounts[target] = source
    return mounts


def is_named_volume(source: str) -> bool:
    return not source.startswith((".", "/", "~", "$"))


def published_container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(mapping).rsplit(":", 1)[-1].split("/")[0]) for mapping in service["ports"]}


def string_leaves(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for value in node.values():
            yield from string_leaves(value)
    elif isinstance(node, list):
        for value in node:
            yield from string_leaves(value)
    elif isinstance(node, str):
        yield node


def env_references(node: Any) -> set[str]:
    """Names that `{env: NAME}` entries of a Dagster config read."""
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(env_references(value) for value in node.values()))
    return set()


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        if (pending + line).strip():
            logical.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1].strip()) for text in logical]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in dockerfile_instructions():
        if instruction == "ENV":
            for token in shlex.split(args):
                name, _, value = token.partition("=")
                env[name] = value
    return env


def expand(text: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda match: env[match.group(1)], text)


def dockerfile_copies() -> list[tuple[list[str], str]]:
    """(sources, absolute destination) of every COPY, with WORKDIR and ENV applied."""
    env = dockerfile_env()
    workdir = "/"
    copies = []
    for instruction, args in dockerfile_instructions():
        if instruction == "WORKDIR":
            workdir = os.path.join(workdir, expand(args, env))
        elif instruction == "COPY":
            tokens = [token for token in args.split() if not token.startswith("--")]
            destination = expand(tokens[-1], env)
            if not destination.startswith("/"):
                destination = os.path.normpath(os.path.join(workdir, destination))
            copies.append((tokens[:-1], destination))
    return copies


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also covers what lies below."""
    ignored = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: length + 1]) for length in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        body = pattern.removeprefix("!").strip("/")
        if body.startswith("**/"):
            matches = any(fnmatch.fnmatch(part, body[3:]) for part in parts)
        else:
            matches = any(fnmatch.fnmatch(prefix, body) for prefix in prefixes)
        if matches:
            ignored = not negated
    return ignored


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_every_service_exists_with_an_image_and_a_command(services):
    assert set(services) >= EXPECTED_SERVICES
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: neither image nor build"
        if name not in ("postgres",):  # postgres runs its image's own entrypoint
            assert command_args(service), f"{name}: no command"
    for name in LONG_RUNNING:
        assert services[name]["restart"] in ("unless-stopped", "always"), name
    for name in ("minio-init", "dagster-migrate"):
        assert services[name]["restart"] == "no", f"{name} is a one-shot, restarting it loops"


def test_dagster_services_share_one_image_built_from_this_repository(services):
    images = {services[name]["image"] for name in DAGSTER_SERVICES}
    assert len(images) == 1
    for name in DAGSTER_SERVICES:
        assert services[name]["build"]["context"] == "."
        assert (REPO / services[name]["build"]["dockerfile"]).is_file()


def test_ui_and_minio_ports_are_published_and_the_code_server_is_not(services):
    assert 3000 in published_container_ports(services["webserver"])
    assert {9000, 9001} <= published_container_ports(services["minio"])
    for internal in ("user_code", "postgres", "daemon"):
        assert "ports" not in services[internal], f"{internal} must stay on the internal network"
    assert option_value(command_args(services["webserver"]), "-p", "--port") == "3000"
    assert "--console-address" in command_args(services["minio"])


def test_servers_have_healthchecks(services):
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["minio"]["healthcheck"]["test"]
    for name in ("user_code", "webserver", "daemon"):
        check = services[name]["healthcheck"]
        assert not check.get("disable") and check["test"], name


def test_depends_on_names_existing_services_with_meaningful_conditions(services):
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            condition = spec["condition"]
            assert condition in DEPENDS_CONDITIONS, f"{name} -> {dependency}: {condition}"
            target = services[dependency]
            if condition == "service_healthy":
                assert "healthcheck" in target and not target["healthcheck"].get("disable")
            if condition == "service_completed_successfully":
                assert target["restart"] == "no", f"{dependency} never completes"
    for name in DAGSTER_SERVICES:
        assert services[name]["depends_on"], f"{name} starts before its storage"
    assert services["user_code"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_named_volumes_are_declared_and_used(compose, services):
    declared = set(compose["volumes"])
    used = {
        source
        for service in services.values()
        for source in volume_mounts(service).values()
        if is_named_volume(source)
    }
    assert used <= declared, f"undeclared volumes: {used - declared}"
    assert declared <= used, f"declared but unused volumes: {declared - used}"
    assert volume_mounts(services["postgres"])["/var/lib/postgresql/data"] in declared
    assert volume_mounts(services["minio"])["/data"] in declared
    for service in services.values():
        for source in volume_mounts(service).values():
            if not is_named_volume(source):
                assert (REPO / source).exists(), f"bind mount {source} does not exist"


def test_compose_variables_come_from_env_example_and_all_are_used(compose, env_example):
    text = "\n".join(string_leaves(compose))  # parsed: comments do not count
    referenced = {a or b for a, b in COMPOSE_REFERENCE.findall(text)}
    assert referenced, "the compose file reads nothing from .env"
    assert referenced <= set(env_example), (
        f"missing in .env.example: {referenced - set(env_example)}"
    )
    code = " ".join(path.read_text() for path in (REPO / "aindex_assets").rglob("*.py"))
    unused = {name for name in env_example if name not in referenced and name not in code}
    assert not unused, f".env.example defines variables nothing reads: {unused}"


def test_no_literal_secrets_in_compose(compose, services, env_example):
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_REFERENCE.match(str(value)), f"{name}.{key} must be ${{VAR:?...}}"
    for text in string_leaves(compose):
        for password in URL_USERINFO.findall(text):
            assert REQUIRED_REFERENCE.match(password), f"literal password in URL {text!r}"
    for key, value in env_example.items():
        if SECRET_NAME.search(key) or key == "MINIO_ROOT_USER":
            assert value == "", f".env.example {key} must be empty: compose refuses it so"


def test_dagster_services_get_every_variable_the_instance_config_reads(services):
    needed = env_references(yaml.safe_load(INSTANCE_YAML.read_text()))
    assert {"DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_HOST", "DAGSTER_PG_DB"} <= needed
    for name in DAGSTER_SERVICES:
        missing = needed - set(services[name]["environment"])
        assert not missing, f"{name} lacks {missing}"
    assert services["user_code"]["environment"]["DAGSTER_PG_HOST"] == "postgres"


def test_catalog_database_is_created_by_the_mounted_init_script(services):
    url = services["user_code"]["environment"]["AINDEX_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg2://")
    catalog_db = url.rsplit("/", 1)[-1]
    assert f"CREATE DATABASE {catalog_db};" in INITDB_SQL.read_text()
    mounts = volume_mounts(services["postgres"])
    init_sources = [
        src for dst, src in mounts.items() if dst.startswith("/docker-entrypoint-initdb.d/")
    ]
    assert (REPO / init_sources[0]).resolve() == INITDB_SQL


def test_compute_logs_live_on_a_volume_shared_by_writer_and_reader(services):
    config = yaml.safe_load(INSTANCE_YAML.read_text())
    log_dir = config["compute_logs"]["config"]["base_dir"]
    for name in ("user_code", "webserver"):  # run workers write, the UI reads
        mounts = volume_mounts(services[name])
        assert any(log_dir.startswith(target + "/") for target in mounts), f"{name}: {log_dir}"


def test_dockerfile_builds_a_non_root_cpu_image_with_the_instance_config(services):
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    runs = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert '".[cpu]"' in runs or ".[cpu]" in runs
    assert "download.pytorch.org/whl/cpu" in " ".join(args for _, args in instructions)
    assert "libmagic1" in runs
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(instruction == "HEALTHCHECK" for instruction, _ in instructions)
    env = dockerfile_env()
    assert env["DAGSTER_HOME"] == "/opt/dagster/dagster_home"
    destinations = {dest: sources for sources, dest in dockerfile_copies()}
    assert destinations[f"{env['DAGSTER_HOME']}/dagster.yaml"] == ["deploy/dagster.yaml"]
    workspace_in_image = option_value(command_args(services["webserver"]), "-w", "--workspace")
    assert destinations[workspace_in_image] == ["deploy/workspace.yaml"]
    assert option_value(command_args(services["daemon"]), "-w", "--workspace") == workspace_in_image


def test_dockerignore_keeps_what_the_image_copies_and_drops_secrets():
    patterns = dockerignore_patterns()
    for sources, _ in dockerfile_copies():
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile copies missing {source}"
            assert not dockerignored(source, patterns), f".dockerignore drops {source}"
    assert not dockerignored("aindex_assets/defs/resources.py", patterns)
    for private in (".env", ".venv/bin/python", ".git/HEAD", "aindex_data/catalog.db"):
        assert dockerignored(private, patterns), f"{private} would reach the build context"
    assert dockerignored("aindex_assets/__pycache__/x.pyc", patterns)


def test_workspace_points_at_the_code_server(services):
    workspace = yaml.safe_load(WORKSPACE_YAML.read_text())
    (location,) = workspace["load_from"]
    server = location["grpc_server"]
    assert server["host"] in services
    args = command_args(services[server["host"]])
    assert args[:3] == ["dagster", "code-server", "start"]
    assert option_value(args, "-h", "--host") == "0.0.0.0"
    assert int(option_value(args, "-p", "--port")) == server["port"]
    assert option_value(args, "--location-name") == server["location_name"]
    module = option_value(args, "-m", "--module-name")
    assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"no module {module}"
    healthcheck = services[server["host"]]["healthcheck"]["test"]
    assert option_value(healthcheck, "-p") == str(server["port"])


@pytest.fixture
def instance_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "dagster.yaml").write_text(INSTANCE_YAML.read_text())
    for name, value in {
        "DAGSTER_PG_USER": "aindex_user",
        "DAGSTER_PG_PASSWORD": "s3cr/et@pw",
        "DAGSTER_PG_HOST": "postgres",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": "dagster",
    }.items():
        monkeypatch.setenv(name, value)
    return tmp_path


def test_instance_config_passes_dagster_validation_and_pins_psycopg2(instance_dir):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.storage.config import pg_config
    from dagster_postgres.utils import pg_url_from_config

    config, custom_class = dagster_instance_config(str(instance_dir))
    assert custom_class is None
    # The same resolution of `env:` entries that the Postgres storages apply on start.
    resolved = process_config(pg_config(), config["storage"]["postgres"])
    assert resolved.success, resolved.errors
    url = make_url(pg_url_from_config(resolved.value))
    assert url.drivername == "postgresql+psycopg2"
    assert (url.username, url.password, url.host, url.database) == (
        "aindex_user",
        "s3cr/et@pw",
        "postgres",
        "dagster",
    )
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] > 0
    assert config["telemetry"]["enabled"] is False


def test_instance_config_rejects_a_broken_copy(instance_dir):
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    broken = yaml.safe_load(INSTANCE_YAML.read_text())
    broken["run_coordinator"]["config"]["max_concurrent_runs"] = 4  # clashes with concurrency:
    (instance_dir / "dagster.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(instance_dir))


@pytest.fixture
def fresh_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A throwaway database on the test PostgreSQL, dropped afterwards; its DAGSTER_PG_* values."""
    server = make_url(os.environ.get("AINDEX_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES))
    params = {
        "host": server.host or "127.0.0.1",
        "port": server.port or 5432,
        "user": server.username or "postgres",
        "password": server.password or "",
        "dbname": server.database or "postgres",
        "connect_timeout": 3,
    }
    try:
        admin = psycopg2.connect(**params)
    except psycopg2.OperationalError as error:
        if os.environ.get("AINDEX_REQUIRE_SERVICES") == "1":
            pytest.fail(f"PostgreSQL at {params['host']}:{params['port']} is required: {error}")
        pytest.skip(f"PostgreSQL at {params['host']}:{params['port']} is unreachable: {error}")
    admin.autocommit = True
    name = f"aindex_deploy_test_{uuid.uuid4().hex[:12]}"
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    values = {
        "DAGSTER_PG_USER": params["user"],
        "DAGSTER_PG_PASSWORD": params["password"],
        "DAGSTER_PG_HOST": params["host"],
        "DAGSTER_PG_PORT": str(params["port"]),
        "DAGSTER_PG_DB": name,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    try:
        yield values
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.mark.services
def test_instance_opens_postgres_storage_and_round_trips_a_heartbeat(tmp_path, fresh_database):
    import time

    from dagster import DagsterInstance
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._daemon.types import DaemonHeartbeat
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    (tmp_path / "dagster.yaml").write_text(INSTANCE_YAML.read_text())
    instance = DagsterInstance.from_config(str(tmp_path))
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.run_storage.postgres_url.startswith("postgresql+psycopg2://")
        assert fresh_database["DAGSTER_PG_DB"] in instance.run_storage.postgres_url
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert instance.get_runs() == []
        beat = DaemonHeartbeat(time.time(), "SENSOR", "deploy-test", None)
        instance.add_daemon_heartbeat(beat)
        assert instance.get_daemon_heartbeats()["SENSOR"].daemon_id == "deploy-test"
    finally:
        instance.dispose()


class RequiredVariableMissing(Exception):
    """What `docker compose` stops with: `required variable NAME is missing a value: ...`."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"required variable {name} is missing a value: {message}")
        self.name = name


COMPOSE_EXPRESSION = re.compile(
    r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)"
)


def compose_interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-d}`, `${VAR-d}`, `${VAR:?e}`,
    `${VAR?e}`, `${VAR:+r}`, `${VAR+r}` (with a colon, an empty value counts as unset)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2) or "", match.group(3) or ""
        value = env.get(name)
        unset = value is None or (operator.startswith(":") and value == "")
        if operator.endswith("?") and unset:
            raise RequiredVariableMissing(name, argument)
        if operator.endswith("-") and unset:
            return argument
        if operator.endswith("+"):
            return "" if unset else argument
        return value or ""

    return COMPOSE_EXPRESSION.sub(replace, text)


def refused_variables(compose: dict[str, Any], env: dict[str, str]) -> set[str]:
    """The variables `docker compose` would stop on with this .env (every one, not the first)."""
    refused = set()
    for text in string_leaves(compose):
        while True:
            try:
                compose_interpolate(text, env)
                break
            except RequiredVariableMissing as missing:
                refused.add(missing.name)
                env = {**env, missing.name: "filled-in"}
    return refused


def test_an_unedited_copy_of_env_example_is_refused_by_compose(compose, env_example):
    credentials = {name for name in env_example if SECRET_NAME.search(name)}
    credentials.add("MINIO_ROOT_USER")
    assert {"DAGSTER_PG_PASSWORD", "MINIO_ROOT_PASSWORD", "AINDEX_S3_SECRET_KEY"} <= credentials
    # `cp .env.example .env && docker compose up`: stopped, naming each credential.
    assert refused_variables(compose, env_example) == credentials
    # Every credential filled in: compose starts, and the values reach the services.
    filled = {
        **env_example,
        **{name: f"{name.lower()}-{os.urandom(4).hex()}" for name in credentials},
    }
    assert refused_variables(compose, filled) == set()
    user_code = compose["services"]["user_code"]["environment"]
    url = compose_interpolate(user_code["AINDEX_DATABASE_URL"], filled)
    assert url == (
        f"postgresql+psycopg2://dagster:{filled['DAGSTER_PG_PASSWORD']}@postgres:5432/aindex"
    )
    assert compose_interpolate("$${HOME} ${AINDEX_IMAGE_TAG:-latest}", {}) == "${HOME} latest"
