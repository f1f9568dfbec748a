"""Loopback helpers for the deployment tests: free ports, HTTP GET, polling, a running sidecar."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    """Return a loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """GET `url` and return the status and body, for error statuses too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_until(
    condition: Callable[[], bool], timeout_s: float, description: str, *, interval_s: float = 0.1
) -> None:
    """Poll `condition` until it is true, and fail the test after `timeout_s` seconds."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {description}")
        time.sleep(interval_s)


@dataclass
class RunningSidecar:
    """A sidecar subprocess, with the loopback URLs of its proxy and admin listeners."""

    process: subprocess.Popen[bytes]
    log_path: Path
    proxy_url: str
    admin_url: str

    def output(self) -> str:
        """Return what the sidecar has printed to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")
