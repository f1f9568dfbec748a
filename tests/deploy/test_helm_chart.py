"""The Helm chart, rendered and linted by Helm's own Go engine (helm-python-sdk)."""

from __future__ import annotations

import base64
import copy
import re
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from deploy_checks import (
    CHART_DIR,
    NAMESPACE,
    assert_classic_sidecar,
    assert_native_sidecar,
    assert_sidecar_deployable,
    env_secret_refs,
    env_values,
    find_sidecar,
    load_objects,
    objects_of_kind,
    pod_annotations,
    pod_spec,
    render_chart,
    schema_errors,
)

CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
REQUIRED_SCENARIOS = ("default", "existing-secret", "classic-mode", "servicemonitor", "customer")


def read_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART_DIR / "ci" / f"{name}-values.yaml").read_text())
    return values


def render_objects(helm: ModuleType, values: dict[str, Any]) -> list[dict[str, Any]]:
    return load_objects(render_chart(helm, values))


def test_ci_scenarios_present() -> None:
    """Every scenario the chart promises has a ci/*-values.yaml file."""
    names = {path.name.removesuffix("-values.yaml") for path in CI_VALUES}
    for scenario in REQUIRED_SCENARIOS:
        assert scenario in names, f"ci/{scenario}-values.yaml is missing"


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.stem)
def test_chart_lint_clean(helm: ModuleType, values_file: Path) -> None:
    """`helm lint --strict` reports no warnings or errors for the scenario."""
    values = yaml.safe_load(values_file.read_text())

    report = helm.lint(str(CHART_DIR), values, strict=True)

    assert report["errors"] == []
    findings = [message for message in report["messages"] if message["severity"] >= 2]
    assert findings == []


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.stem)
def test_chart_objects_match_kubernetes_schemas(
    helm: ModuleType, kubernetes_validate: ModuleType, values_file: Path
) -> None:
    """Every rendered object passes strict schema validation for Kubernetes 1.29 and the latest."""
    objects = render_objects(helm, yaml.safe_load(values_file.read_text()))

    assert objects, "the chart rendered no objects"
    assert schema_errors(kubernetes_validate, objects) == []


@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda path: path.stem)
def test_chart_sidecar_deployable(helm: ModuleType, values_file: Path) -> None:
    """Probes, security context, secrets and grace period hold in every scenario."""
    objects = render_objects(helm, yaml.safe_load(values_file.read_text()))

    assert_sidecar_deployable(pod_spec(objects))


def test_default_mode_native_sidecar(helm: ModuleType) -> None:
    """The default renders the sidecar as an init container with restartPolicy Always."""
    spec = pod_spec(render_objects(helm, read_values("default")))

    assert_native_sidecar(spec)
    _, sidecar = find_sidecar(spec)
    assert env_values(sidecar)["SIDECAR_DRAIN_DELAY_SECONDS"] == "0"


def test_classic_mode_sets_drain_delay(helm: ModuleType) -> None:
    """Classic mode renders a regular container with a 5 s drain delay."""
    spec = pod_spec(render_objects(helm, read_values("classic-mode")))

    assert_classic_sidecar(spec)
    _, sidecar = find_sidecar(spec)
    assert env_values(sidecar)["SIDECAR_DRAIN_DELAY_SECONDS"] == "5"
    assert spec["terminationGracePeriodSeconds"] == 30


def test_probes_on_named_admin_port(helm: ModuleType) -> None:
    """Readiness is /readyz and liveness /livez, both on the port named sidecar-admin."""
    _, sidecar = find_sidecar(pod_spec(render_objects(helm, read_values("default"))))

    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "sidecar-admin"}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "sidecar-admin"}
    admin_ports = [port for port in sidecar["ports"] if port["name"] == "sidecar-admin"]
    assert admin_ports == [{"name": "sidecar-admin", "containerPort": 9090, "protocol": "TCP"}]
    assert env_values(sidecar)["SIDECAR_ADMIN_LISTEN"] == "0.0.0.0:9090"


def test_created_secret_holds_credentials(helm: ModuleType) -> None:
    """Without existingSecret the chart creates the Secret the env refers to."""
    objects = render_objects(helm, read_values("customer"))
    secrets = objects_of_kind(objects, "Secret")
    _, sidecar = find_sidecar(pod_spec(objects))
    refs = env_secret_refs(sidecar)

    assert len(secrets) == 1
    secret = secrets[0]
    for variable in ("KIBO_CLIENT_ID", "KIBO_CLIENT_SECRET"):
        assert refs[variable]["name"] == secret["metadata"]["name"]
    for variable, expected in (
        ("KIBO_CUSTOMER_USERNAME", "shopper@example.test"),
        ("KIBO_CUSTOMER_PASSWORD", "placeholder-password"),
    ):
        stored = base64.b64decode(secret["data"][refs[variable]["key"]]).decode()
        assert stored == expected, variable
    assert "KIBO_CUSTOMER_REFRESH_TOKEN" not in refs
    assert env_values(sidecar)["KIBO_ACCOUNT_ID"] == "1234"


def test_existing_secret_used_as_is(helm: ModuleType) -> None:
    """With existingSecret the chart creates no Secret and uses the configured keys."""
    objects = render_objects(helm, read_values("existing-secret"))
    _, sidecar = find_sidecar(pod_spec(objects))
    refs = env_secret_refs(sidecar)

    assert objects_of_kind(objects, "Secret") == []
    assert refs["KIBO_CLIENT_ID"] == {"name": "kibo-credentials", "key": "KIBO_CLIENT_ID"}
    assert refs["KIBO_CLIENT_SECRET"] == {"name": "kibo-credentials", "key": "KIBO_CLIENT_SECRET"}
    assert "checksum/kibo-token-sidecar-secret" not in pod_annotations(objects)


def test_existing_secret_refresh_token_only(helm: ModuleType) -> None:
    """Customer keys set to "" are left out, and the refresh token ref is optional."""
    _, sidecar = find_sidecar(
        pod_spec(render_objects(helm, read_values("customer-existing-secret")))
    )
    refs = env_secret_refs(sidecar)

    assert "KIBO_CUSTOMER_USERNAME" not in refs
    assert "KIBO_CUSTOMER_PASSWORD" not in refs
    assert refs["KIBO_CUSTOMER_REFRESH_TOKEN"] == {
        "name": "kibo-credentials",
        "key": "customer-refresh-token",
        "optional": True,
    }


def test_secret_change_rolls_pods(helm: ModuleType) -> None:
    """The pod's checksum annotation changes when a credential changes."""
    values = read_values("default")
    changed = copy.deepcopy(values)
    changed["kibo"]["credentials"]["clientSecret"] = "rotated-secret"

    before = pod_annotations(render_objects(helm, values))
    after = pod_annotations(render_objects(helm, changed))

    key = "checksum/kibo-token-sidecar-secret"
    assert re.fullmatch(r"[0-9a-f]{64}", before[key])
    assert before[key] != after[key]


def test_prometheus_annotations_name_admin_port(helm: ModuleType) -> None:
    """The scrape annotations point at the admin port and /metrics."""
    annotations = pod_annotations(render_objects(helm, read_values("default")))

    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9090"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_servicemonitor_selects_metrics_service(helm: ModuleType) -> None:
    """The ServiceMonitor selects the metrics Service, which targets the admin port."""
    objects = render_objects(helm, read_values("servicemonitor"))
    [monitor] = objects_of_kind(objects, "ServiceMonitor")
    [service] = objects_of_kind(objects, "Service")
    deployment = objects_of_kind(objects, "Deployment")[0]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    selector = monitor["spec"]["selector"]["matchLabels"]
    for key, value in selector.items():
        assert service["metadata"]["labels"].get(key) == value, key
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert service["spec"]["ports"][0]["targetPort"] == "sidecar-admin"
    for key, value in service["spec"]["selector"].items():
        assert pod_labels.get(key) == value, key
    assert "prometheus.io/scrape" not in pod_annotations(objects)


def test_state_file_on_empty_dir(helm: ModuleType) -> None:
    """stateFile.enabled mounts an emptyDir and points SIDECAR_STATE_FILE into it."""
    spec = pod_spec(render_objects(helm, read_values("customer")))
    _, sidecar = find_sidecar(spec)
    [mount] = sidecar["volumeMounts"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}

    assert "emptyDir" in volumes[mount["name"]]
    state_file = env_values(sidecar)["SIDECAR_STATE_FILE"]
    assert state_file.startswith(mount["mountPath"] + "/")


def test_short_grace_period_rejected(helm: ModuleType) -> None:
    """A terminationGracePeriodSeconds below drain + grace + 5 s fails to render."""
    values = read_values("classic-mode")
    values["terminationGracePeriodSeconds"] = 29

    with pytest.raises(helm.HelmRenderError, match="terminationGracePeriodSeconds is 29"):
        render_chart(helm, values)


def test_missing_api_url_rejected(helm: ModuleType) -> None:
    """Rendering without kibo.apiUrl fails and names the value."""
    values = read_values("default")
    del values["kibo"]["apiUrl"]

    with pytest.raises(helm.HelmRenderError, match=r"kibo\.apiUrl is required"):
        render_chart(helm, values)


def test_missing_credentials_rejected(helm: ModuleType) -> None:
    """Without existingSecret, an empty client secret fails to render."""
    values = read_values("default")
    values["kibo"]["credentials"]["clientSecret"] = ""

    with pytest.raises(helm.HelmRenderError, match=r"kibo\.credentials\.clientId and"):
        render_chart(helm, values)


def test_customer_without_credentials_rejected(helm: ModuleType) -> None:
    """customer.enabled with neither a password nor a refresh token fails to render."""
    values = read_values("default")
    values["kibo"]["customer"] = {"enabled": True}

    with pytest.raises(helm.HelmRenderError, match=r"kibo\.customer\.enabled is true"):
        render_chart(helm, values)


@pytest.mark.parametrize(
    ("path", "bad_value", "message"),
    [
        (("adminPort",), "9090", "got string, want integer"),
        (("adminPort",), 70000, "maximum"),
        (("mode",), "sidecar", "value must be one of"),
        (("terminationGracePeriodSeconds",), "30", "got string, want integer"),
        (("kibo", "accountId"), "1234", "want null or integer"),
        (("shutdown", "graceSeconds"), 2.5, "want integer"),
        (("metrics", "serviceMonitor", "enabled"), "yes", "want boolean"),
        (("probes", "readiness", "periodSeconds"), 0, "minimum"),
        (("extraEnv",), {"NAME": "value"}, "want array"),
        (("kibo", "unknownKey"), "x", "additional properties"),
    ],
    ids=lambda value: ".".join(value) if isinstance(value, tuple) else None,
)
def test_schema_rejects_wrong_values(
    helm: ModuleType, path: tuple[str, ...], bad_value: object, message: str
) -> None:
    """values.schema.json rejects values of the wrong type or range, and unknown keys."""
    values = read_values("default")
    target = values
    for key in path[:-1]:
        target = target.setdefault(key, {})
    target[path[-1]] = bad_value

    with helm.Chart.load(str(CHART_DIR)) as chart:
        with pytest.raises(helm.HelmValuesError, match=message):
            chart.validate_schema(values)


def test_image_tag_matches_app_version(helm: ModuleType) -> None:
    """The default image tag is the chart's appVersion."""
    with helm.Chart.load(str(CHART_DIR)) as chart:
        assert chart.values["image"]["tag"] == chart.metadata["appVersion"]


KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z]\w*):(?P<rest>.*)$")


def _undocumented_values(lines: list[str]) -> list[str]:
    """Return the values.yaml keys that lack a `# --` comment on themselves or a parent map.

    Children of a documented map (such as the defaults under `resources`)
    count as documented by the map's comment.
    """
    undocumented = []
    parents: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing maps

    for index, line in enumerate(lines):
        match = KEY_LINE.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        comment = []
        above = index - 1
        while above >= 0 and lines[above].lstrip().startswith("#"):
            comment.append(lines[above].strip())
            above -= 1
        documented = any(text.startswith("# --") for text in comment)

        while parents and parents[-1][0] >= indent:
            parents.pop()
        inherited = any(parent_documented for _, parent_documented in parents)

        following = next(
            (
                later
                for later in lines[index + 1 :]
                if later.strip() and not later.lstrip().startswith("#")
            ),
            "",
        )
        following_indent = len(following) - len(following.lstrip())
        opens_map = (
            match["rest"].strip() == ""
            and following_indent > indent
            and not following.lstrip().startswith("- ")
        )
        if opens_map:
            parents.append((indent, documented))
        elif not documented and not inherited:
            undocumented.append(match["key"])

    return undocumented


def test_every_value_documented() -> None:
    """Every value in values.yaml, or a map that contains it, has a `# --` comment."""
    lines = (CHART_DIR / "values.yaml").read_text().splitlines()

    assert _undocumented_values(lines) == []


def _readme_include_example() -> str:
    """Return the pod template from the README's 'Adding the sidecar' section."""
    readme = (CHART_DIR / "README.md").read_text()
    blocks: list[str] = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    [template] = [block for block in blocks if "$sidecar := dict" in block]
    return template


@pytest.mark.parametrize("mode", ["native", "classic"])
def test_readme_include_example_renders(
    helm: ModuleType, kubernetes_validate: ModuleType, tmp_path: Path, mode: str
) -> None:
    """A parent chart built from the README's include example renders valid objects."""
    parent = tmp_path / "shop"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART_DIR, parent / "charts" / "kibo-token-sidecar")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: shop\nversion: 1.0.0\n"
        "dependencies:\n"
        "  - name: kibo-token-sidecar\n    version: 0.1.0\n    alias: kiboTokenSidecar\n"
    )
    (parent / "templates" / "deployment.yaml").write_text(_readme_include_example())
    values = {
        "kiboTokenSidecar": {
            "mode": mode,
            "example": {"enabled": False},
            "kibo": {
                "apiUrl": "https://t100000.sandbox.mozu.com",
                "credentials": {"clientId": "placeholder", "clientSecret": "placeholder"},
            },
        }
    }

    objects = load_objects(render_chart(helm, values, chart_dir=parent))
    spec = pod_spec(objects)

    assert schema_errors(kubernetes_validate, objects) == []
    assert_sidecar_deployable(spec)
    if mode == "native":
        assert_native_sidecar(spec)
    else:
        assert_classic_sidecar(spec)
    [secret] = objects_of_kind(objects, "Secret")
    _, sidecar = find_sidecar(spec)
    assert env_secret_refs(sidecar)["KIBO_CLIENT_ID"]["name"] == secret["metadata"]["name"]
    assert "checksum/kibo-token-sidecar-secret" in pod_annotations(objects)
