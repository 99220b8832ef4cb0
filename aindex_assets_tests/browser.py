"""Headless Chromium for the rendering tests, driven over the DevTools protocol.

Chromium is the Debian package (`/usr/bin/chromium`; scripts/run-tests.sh installs it on
a CI machine). Without it the tests skip, or fail under AINDEX_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from aindex_assets_tests.servers import unavailable


def chromium() -> str:
    """The Chromium executable, or skip/fail the test."""
    found = os.environ.get("AINDEX_CHROMIUM") or shutil.which("chromium")
    if not found:
        unavailable("headless Chromium is not installed (apt-get install chromium)")
    return found


def distinct_colours(pixels: np.ndarray) -> int:
    return len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


class DevToolsPage:
    """One page of a headless Chromium driven over the DevTools protocol (clicks, waits)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.last_id = 0

    def call(self, method: str, timeout: float = 30, **params: Any) -> dict:
        self.last_id += 1
        self.connection.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:  # events arrive in between: skip them
            remaining = max(0.1, deadline - time.monotonic())
            message = json.loads(self.connection.recv(timeout=remaining))
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        """Poll a JavaScript expression until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"still false after {timeout:.0f} s: {expression}")

    def screenshot(self, path: Path) -> np.ndarray:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@contextlib.contextmanager
def devtools_page(size: tuple[int, int] = (1280, 1600)) -> Iterator[DevToolsPage]:
    """A headless Chromium with one blank page to drive; stopped on exit."""
    from websockets.sync.client import connect

    port = free_port()
    # Chromium's helper processes may still write to the profile as the browser exits.
    profile_dir = tempfile.TemporaryDirectory(prefix="aindex-chromium-", ignore_cleanup_errors=True)
    with profile_dir as profile:
        command = [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={size[0]},{size[1]}",
            f"--remote-debugging-port={port}",
            "about:blank",
        ]
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/json/version", process, timeout=30)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                targets = json.load(answer)
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            with connect(url, max_size=None, open_timeout=10) as connection:
                yield DevToolsPage(connection)
        finally:
            process.terminate()
            process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # helpers left behind by the browser
