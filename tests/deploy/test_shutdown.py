"""The SIGTERM drain of a running sidecar, timed against the chart's termination grace period.

The shutdown settings come from the chart rendered in classic mode, the mode
with the longer drain: SIDECAR_DRAIN_DELAY_SECONDS and
SIDECAR_SHUTDOWN_GRACE_SECONDS from the sidecar's env, and the pod's
terminationGracePeriodSeconds. The kubelet sends SIGKILL when that period
runs out, so the sidecar must have exited 0 before it.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from types import ModuleType
from typing import Any

import pytest
import yaml
from deploy_checks import (
    CHART_DIR,
    env_values,
    find_sidecar,
    load_objects,
    pod_spec,
    render_chart,
)
from loopback import RunningSidecar, http_get, wait_until

SLOW_PATH = "/api/platform/standin/slow"


def chart_shutdown_settings(helm: ModuleType) -> tuple[dict[str, str], int]:
    """Return the shutdown env of the classic-mode chart and its terminationGracePeriodSeconds."""
    values = yaml.safe_load((CHART_DIR / "ci" / "classic-mode-values.yaml").read_text())
    spec = pod_spec(load_objects(render_chart(helm, values)))
    _, sidecar = find_sidecar(spec)
    env = env_values(sidecar)

    defaults = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    period = spec["terminationGracePeriodSeconds"]
    assert period == defaults["terminationGracePeriodSeconds"], "the ci file must keep the default"
    shutdown = {
        name: env[name]
        for name in ("SIDECAR_DRAIN_DELAY_SECONDS", "SIDECAR_SHUTDOWN_GRACE_SECONDS")
    }
    return shutdown, int(period)


class BackgroundRequest:
    """A GET through the proxy, run on a thread so the test can act while it is in flight."""

    def __init__(self, url: str) -> None:
        self.status: int | None = None
        self.body = b""
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self._thread.start()

    def _run(self, url: str) -> None:
        try:
            self.status, self.body = http_get(url, timeout=120.0)
        except BaseException as error:  # Reported by the test through self.error.
            self.error = error

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the request did not finish within {timeout:g} s"


def in_flight(sidecar: RunningSidecar) -> float:
    """Return kibo_sidecar_proxy_requests_in_flight from the sidecar's /metrics."""
    _, body = http_get(f"{sidecar.admin_url}/metrics")
    for line in body.decode().splitlines():
        if line.startswith("kibo_sidecar_proxy_requests_in_flight "):
            return float(line.split()[1])
    pytest.fail("/metrics has no kibo_sidecar_proxy_requests_in_flight sample")


def wait_for_exit(process: subprocess.Popen[bytes], timeout_s: float) -> int:
    """Wait for the sidecar to exit, or SIGKILL it at `timeout_s` as the kubelet would, and fail."""
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the sidecar was still running {timeout_s:g} s after SIGTERM")


def test_drain_fits_grace_period(helm: ModuleType, start_sidecar: Any) -> None:
    """A request in flight at SIGTERM completes, and the sidecar exits 0 within the period."""
    shutdown, period = chart_shutdown_settings(helm)
    drain = float(shutdown["SIDECAR_DRAIN_DELAY_SECONDS"])
    sidecar: RunningSidecar = start_sidecar(**shutdown)
    slow = BackgroundRequest(f"{sidecar.proxy_url}{SLOW_PATH}?seconds=3")
    wait_until(lambda: in_flight(sidecar) == 1, 10, "the slow request to reach the sidecar")

    sigterm_at = time.monotonic()
    sidecar.process.send_signal(signal.SIGTERM)

    # During the drain delay /readyz already fails, but new requests are served.
    wait_until(
        lambda: http_get(f"{sidecar.admin_url}/readyz")[0] == 503, 1, "/readyz to return 503"
    )
    status, _ = http_get(f"{sidecar.proxy_url}{SLOW_PATH}?seconds=0")
    assert time.monotonic() - sigterm_at < drain, "the check ran after the drain delay"
    assert status == 200

    exit_code = wait_for_exit(sidecar.process, period)
    elapsed = time.monotonic() - sigterm_at
    slow.join(timeout=5)

    assert slow.error is None
    assert slow.status == 200
    assert b"sleptSeconds" in slow.body
    assert exit_code == 0, sidecar.output()
    assert elapsed >= drain, "the sidecar stopped before its drain delay ended"
    assert elapsed < period


def test_long_request_cut_before_kill(helm: ModuleType, start_sidecar: Any) -> None:
    """A request longer than the grace is cut, and the sidecar still exits 0 within the period."""
    shutdown, period = chart_shutdown_settings(helm)
    sidecar: RunningSidecar = start_sidecar(**shutdown)
    endless = BackgroundRequest(f"{sidecar.proxy_url}{SLOW_PATH}?seconds=60")
    wait_until(lambda: in_flight(sidecar) == 1, 10, "the slow request to reach the sidecar")

    sigterm_at = time.monotonic()
    sidecar.process.send_signal(signal.SIGTERM)
    exit_code = wait_for_exit(sidecar.process, period)
    elapsed = time.monotonic() - sigterm_at
    endless.join(timeout=5)

    assert exit_code == 0, sidecar.output()
    assert elapsed < period
    assert endless.status != 200
