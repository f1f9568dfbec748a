"""Prometheus scraping a running sidecar, and promtool checking its exposition.

The Prometheus job comes from deploy/prometheus/scrape-config.yaml with its
relabel rules unchanged. Only target discovery differs: Debian's Prometheus
is built without Kubernetes discovery and no cluster runs here, so a
file_sd_configs file stands in for the Kubernetes API. It lists the targets
that the pod role would produce for the example pod (one per container
port, carrying the pod's prometheus.io annotations as meta labels) and for
a pod that does not ask to be scraped.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_checks import DEPLOY_DIR
from loopback import RunningSidecar, free_port, http_get, wait_until

SCRAPE_CONFIG = DEPLOY_DIR / "prometheus" / "scrape-config.yaml"
JOB = "kibo-token-sidecar"
PROMETHEUS_TIMEOUT_S = 60.0
CUSTOMER_ENV = {
    "KIBO_CUSTOMER_USERNAME": "shopper@example.test",
    "KIBO_CUSTOMER_PASSWORD": "demo-password",
}


def pod_targets(
    pod: str, addresses: list[str], annotations: dict[str, str]
) -> list[dict[str, Any]]:
    """Return file_sd target groups shaped like Kubernetes pod-role targets, one per port."""
    labels = {
        "__meta_kubernetes_namespace": "storefront",
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_controller_name": "shop",
    }
    for key, value in annotations.items():
        name = key.replace(".", "_").replace("/", "_")
        labels[f"__meta_kubernetes_pod_annotation_{name}"] = value
    return [{"targets": [address], "labels": labels} for address in addresses]


def prometheus_config(targets_file: Path) -> dict[str, Any]:
    """Return the example scrape config with file discovery and a 1 s scrape interval."""
    config: dict[str, Any] = yaml.safe_load(SCRAPE_CONFIG.read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == JOB]
    assert "kubernetes_sd_configs" in job, "the example job must discover pods in Kubernetes"

    del job["kubernetes_sd_configs"]
    job["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "1s"}]
    job["scrape_interval"] = "1s"
    job["scrape_timeout"] = "1s"
    config["scrape_configs"] = [job]
    return config


def query(prometheus_url: str, expression: str) -> list[dict[str, Any]]:
    """Run an instant query through /api/v1/query and return the result vector."""
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expression})}"
    status, body = http_get(url)
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


@pytest.fixture
def running_prometheus(prometheus: str, promtool: str, tmp_path: Path, start_sidecar: Any) -> Any:
    """Start a sidecar with both tickets and a Prometheus that scrapes it; yield both."""
    sidecar: RunningSidecar = start_sidecar(**CUSTOMER_ENV)
    admin = sidecar.admin_url.removeprefix("http://")
    proxy = sidecar.proxy_url.removeprefix("http://")
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": admin.rsplit(":", 1)[1],
        "prometheus.io/path": "/metrics",
    }
    targets_file = tmp_path / "targets.json"
    targets_file.write_text(
        json.dumps(
            pod_targets("shop-1", [proxy, admin], annotations)
            + pod_targets("other-1", ["127.0.0.1:1"], {})
        )
    )
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(prometheus_config(targets_file)))

    check = subprocess.run(
        [promtool, "check", "config", str(config_file)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr

    port = free_port()
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(
                f"prometheus exited with code {process.returncode}:\n{log_path.read_text()}"
            )
        try:
            return http_get(f"{url}/-/ready", timeout=1.0)[0] == 200
        except OSError:
            return False

    try:
        wait_until(ready, PROMETHEUS_TIMEOUT_S, "Prometheus to become ready")
        yield url, sidecar
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_scrape(prometheus_url: str) -> None:
    """Wait until Prometheus has discovered and scraped the sidecar once (`up` is 1)."""

    def scraped() -> bool:
        samples = query(prometheus_url, f'up{{job="{JOB}"}}')
        return [sample["value"][1] for sample in samples] == ["1"]

    wait_until(scraped, PROMETHEUS_TIMEOUT_S, "up == 1 for the sidecar", interval_s=0.5)


def test_prometheus_scrapes_token_expiry(running_prometheus: Any) -> None:
    """Prometheus finds the sidecar through the example relabel rules and stores token expiry."""
    url, sidecar = running_prometheus

    wait_for_scrape(url)

    expiry = {
        sample["metric"]["ticket"]: float(sample["value"][1])
        for sample in query(url, "kibo_sidecar_token_expiry_timestamp_seconds")
    }
    now = time.time()
    assert set(expiry) == {"app", "customer"}
    assert expiry["app"] > now
    assert expiry["customer"] > now

    [up] = query(url, f'up{{job="{JOB}"}}')
    assert up["metric"]["instance"] == sidecar.admin_url.removeprefix("http://")
    assert up["metric"]["namespace"] == "storefront"
    assert up["metric"]["pod"] == "shop-1"


def test_relabel_keeps_one_target_per_pod(running_prometheus: Any) -> None:
    """The unannotated pod is dropped and the two ports of the sidecar's pod become one target."""
    url, sidecar = running_prometheus
    wait_for_scrape(url)

    status, body = http_get(f"{url}/api/v1/targets")

    assert status == 200
    targets = json.loads(body)["data"]
    [active] = targets["activeTargets"]
    assert active["scrapeUrl"] == f"{sidecar.admin_url}/metrics"
    dropped_pods = {
        target["discoveredLabels"]["__meta_kubernetes_pod_name"]
        for target in targets["droppedTargets"]
    }
    assert dropped_pods == {"other-1"}


def test_promtool_accepts_metrics(promtool: str, start_sidecar: Any) -> None:
    """`promtool check metrics` has no findings on /metrics after proxied traffic."""
    sidecar: RunningSidecar = start_sidecar(**CUSTOMER_ENV)
    for path in ("/api/platform/standin/slow?seconds=0", "/no/such/path"):
        http_get(f"{sidecar.proxy_url}{path}")

    status, exposition = http_get(f"{sidecar.admin_url}/metrics")
    assert status == 200
    for family in (
        "kibo_sidecar_token_expiry_timestamp_seconds",
        "kibo_sidecar_token_refreshes_total",
        "kibo_sidecar_proxy_requests_total",
        "kibo_sidecar_proxy_request_duration_seconds",
    ):
        assert f"\n{family}".encode() in exposition, family

    check = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, check=False
    )
    findings = (check.stdout + check.stderr).decode(errors="replace")
    assert findings == ""
    assert check.returncode == 0
