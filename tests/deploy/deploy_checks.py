"""Paths and checks shared by the deployment tests: schema validation and pod specs."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "kibo-token-sidecar"
DEPLOY_DIR = REPO_ROOT / "deploy"

SIDECAR_NAME = "kibo-token-sidecar"

# Native sidecars (restartPolicy: Always on an init container) need 1.29; the
# latest schema that kubernetes-validate ships catches removed fields.
KUBERNETES_VERSIONS = ("1.29.0", "latest")

# Kinds from CRDs that kubernetes-validate has no schema for.
CUSTOM_RESOURCE_GROUPS = ("monitoring.coreos.com/",)

SECRET_VARIABLES = (
    "KIBO_CLIENT_ID",
    "KIBO_CLIENT_SECRET",
    "KIBO_CUSTOMER_USERNAME",
    "KIBO_CUSTOMER_PASSWORD",
    "KIBO_CUSTOMER_REFRESH_TOKEN",
)

LOCKED_DOWN_SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


RELEASE = "shop"
NAMESPACE = "storefront"


def render_chart(helm: ModuleType, values: dict[str, Any], chart_dir: Path = CHART_DIR) -> str:
    """Render a chart as `helm template` would and return the manifests as one YAML stream."""
    with helm.Chart.load(str(chart_dir)) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    return "\n---\n".join(
        text for path, text in sorted(manifests.items()) if path.endswith((".yaml", ".yml"))
    )


def load_objects(text: str) -> list[dict[str, Any]]:
    """Parse a multi-document YAML stream, leaving out empty documents."""
    return [document for document in yaml.safe_load_all(text) if document]


def schema_errors(kubernetes_validate: ModuleType, objects: list[dict[str, Any]]) -> list[str]:
    """Validate every object against the Kubernetes schemas and return one line per error."""
    errors = []
    for obj in objects:
        if obj["apiVersion"].startswith(CUSTOM_RESOURCE_GROUPS):
            continue
        for version in KUBERNETES_VERSIONS:
            desired = kubernetes_validate.latest_version() if version == "latest" else version
            try:
                kubernetes_validate.validate(obj, desired, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                name = f"{obj['kind']}/{obj['metadata']['name']}"
                errors.append(f"{name} against {desired}: {path}: {error.message}")
    return errors


def objects_of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the pod spec of the only Deployment among `objects`."""
    deployments = objects_of_kind(objects, "Deployment")
    assert len(deployments) == 1, f"expected one Deployment, found {len(deployments)}"
    spec: dict[str, Any] = deployments[0]["spec"]["template"]["spec"]
    return spec


def pod_annotations(objects: list[dict[str, Any]]) -> dict[str, str]:
    deployment = objects_of_kind(objects, "Deployment")[0]
    annotations: dict[str, str] = deployment["spec"]["template"]["metadata"].get("annotations", {})
    return annotations


def find_sidecar(spec: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Return ("initContainers" or "containers", container) for the sidecar in a pod spec."""
    found = [
        (field, container)
        for field in ("initContainers", "containers")
        for container in spec.get(field) or []
        if container["name"] == SIDECAR_NAME
    ]
    assert len(found) == 1, f"expected one {SIDECAR_NAME} container, found {len(found)}"
    return found[0]


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """Return the plain `value` env entries of a container by name."""
    return {item["name"]: item["value"] for item in container["env"] if "value" in item}


def env_secret_refs(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the secretKeyRef of each env entry that has one, by variable name."""
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def port_named(container: dict[str, Any], name: str) -> dict[str, Any]:
    ports: list[dict[str, Any]] = [port for port in container["ports"] if port["name"] == name]
    assert len(ports) == 1, f"expected one port named {name!r} in {container['ports']}"
    return ports[0]


def assert_sidecar_deployable(spec: dict[str, Any]) -> None:
    """Assert what every pod spec with the sidecar must get right, whatever the mode."""
    _, sidecar = find_sidecar(spec)
    env = {item["name"]: item for item in sidecar["env"]}

    admin_port = int(env_values(sidecar)["SIDECAR_ADMIN_LISTEN"].rsplit(":", 1)[1])
    for probe_name, path in (
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/livez"),
        ("startupProbe", "/livez"),
    ):
        probe = sidecar[probe_name]["httpGet"]
        assert probe["path"] == path, f"{probe_name} path"
        assert port_named(sidecar, probe["port"])["containerPort"] == admin_port, (
            f"{probe_name} must use the named admin port"
        )

    proxy_listen = env_values(sidecar)["SIDECAR_LISTEN"]
    assert proxy_listen.startswith("127.0.0.1:"), "the proxy must listen on loopback only"

    security = sidecar["securityContext"]
    for key, expected in LOCKED_DOWN_SECURITY_CONTEXT.items():
        assert security.get(key) == expected, f"securityContext.{key}"
    assert isinstance(security.get("runAsUser"), int), "runAsUser must be numeric"
    assert security["runAsUser"] > 0, "runAsUser must not be root"

    for variable in SECRET_VARIABLES:
        if variable in env:
            assert "value" not in env[variable], f"{variable} must not be a plain value"
            assert "secretKeyRef" in env[variable]["valueFrom"], f"{variable} secretKeyRef"
    assert "KIBO_CLIENT_ID" in env, "KIBO_CLIENT_ID is required"
    assert "KIBO_CLIENT_SECRET" in env, "KIBO_CLIENT_SECRET is required"

    drain = float(env_values(sidecar).get("SIDECAR_DRAIN_DELAY_SECONDS", "0"))
    grace = float(env_values(sidecar).get("SIDECAR_SHUTDOWN_GRACE_SECONDS", "20"))
    period = spec.get("terminationGracePeriodSeconds", 30)
    assert period > drain + grace, (
        f"terminationGracePeriodSeconds {period} must exceed drain {drain:g} + grace {grace:g}"
    )


def assert_native_sidecar(spec: dict[str, Any]) -> None:
    field, sidecar = find_sidecar(spec)
    assert field == "initContainers", "native mode puts the sidecar under initContainers"
    assert sidecar.get("restartPolicy") == "Always", "a native sidecar needs restartPolicy Always"


def assert_classic_sidecar(spec: dict[str, Any]) -> None:
    field, sidecar = find_sidecar(spec)
    assert field == "containers", "classic mode puts the sidecar under containers"
    assert "restartPolicy" not in sidecar, "a regular container takes no restartPolicy"
    drain = float(env_values(sidecar)["SIDECAR_DRAIN_DELAY_SECONDS"])
    assert drain >= 5, "classic mode needs a drain delay so the app is not cut off"
