"""The plain manifests under deploy/, built with `kubectl kustomize` as a user would."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

from deploy_checks import (
    DEPLOY_DIR,
    assert_native_sidecar,
    assert_sidecar_deployable,
    env_secret_refs,
    find_sidecar,
    load_objects,
    objects_of_kind,
    pod_annotations,
    pod_spec,
    port_named,
    schema_errors,
)


def kustomize(kubectl: str, directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return load_objects(result.stdout)


def overlay_with_metrics_service(tmp_path: Path) -> Path:
    """Write an overlay that uses deploy/ as its base and adds the metrics-service component."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    # kustomize accepts only relative paths to other kustomization directories.
    base = os.path.relpath(DEPLOY_DIR, overlay)
    (overlay / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        f"resources:\n  - {base}\n"
        f"components:\n  - {base}/metrics-service\n"
    )
    return overlay


def test_base_matches_kubernetes_schemas(kubectl: str, kubernetes_validate: ModuleType) -> None:
    """`kubectl kustomize deploy/` yields a Secret and a Deployment that pass strict validation."""
    objects = kustomize(kubectl, DEPLOY_DIR)

    assert sorted(obj["kind"] for obj in objects) == ["Deployment", "Secret"]
    assert schema_errors(kubernetes_validate, objects) == []


def test_base_sidecar_deployable(kubectl: str) -> None:
    """The example Deployment runs a locked-down native sidecar with probes on the admin port."""
    objects = kustomize(kubectl, DEPLOY_DIR)
    spec = pod_spec(objects)

    assert_sidecar_deployable(spec)
    assert_native_sidecar(spec)
    assert spec["terminationGracePeriodSeconds"] == 30


def test_base_secret_refs_resolve(kubectl: str) -> None:
    """Every secretKeyRef in the Deployment names the example Secret and one of its keys."""
    objects = kustomize(kubectl, DEPLOY_DIR)
    [secret] = objects_of_kind(objects, "Secret")
    _, sidecar = find_sidecar(pod_spec(objects))

    refs = env_secret_refs(sidecar)
    assert refs, "the sidecar takes no credentials from the Secret"
    for variable, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"], variable
        assert ref["key"] in secret["stringData"], variable


def test_base_scrape_annotations(kubectl: str) -> None:
    """The pod annotations tell Prometheus to scrape /metrics on the admin port."""
    objects = kustomize(kubectl, DEPLOY_DIR)
    annotations = pod_annotations(objects)
    _, sidecar = find_sidecar(pod_spec(objects))

    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    admin_port = port_named(sidecar, "sidecar-admin")["containerPort"]
    assert annotations["prometheus.io/port"] == str(admin_port)


def test_metrics_service_component(
    kubectl: str, kubernetes_validate: ModuleType, tmp_path: Path
) -> None:
    """The metrics-service component adds a valid Service that selects the pods' admin port."""
    objects = kustomize(kubectl, overlay_with_metrics_service(tmp_path))
    [service] = objects_of_kind(objects, "Service")
    deployment = objects_of_kind(objects, "Deployment")[0]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    _, sidecar = find_sidecar(pod_spec(objects))

    assert schema_errors(kubernetes_validate, objects) == []
    for key, value in service["spec"]["selector"].items():
        assert pod_labels.get(key) == value, key
    [port] = service["spec"]["ports"]
    assert port_named(sidecar, port["targetPort"])["containerPort"] == 9090
