"""The Dockerfile: hadolint, the runtime stage's contract, and a build of its context.

No container engine runs in CI, so `docker build` itself is not tested. The
context test instead builds the wheel from exactly the files .dockerignore
lets through, which is what the builder stage's `pip install .` needs.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deploy_checks import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


def instructions(text: str) -> list[tuple[str, str]]:
    """Split a Dockerfile into (INSTRUCTION, arguments), joining continued lines."""
    result = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical = pending + stripped
        pending = ""
        keyword, _, arguments = logical.partition(" ")
        result.append((keyword.upper(), arguments.strip()))
    return result


def final_stage(text: str) -> list[tuple[str, str]]:
    """Return the instructions from the last FROM to the end."""
    steps = instructions(text)
    last_from = max(index for index, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def test_hadolint_clean(hadolint: str) -> None:
    """hadolint reports nothing, and no rule is switched off without a reason."""
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )

    assert result.stdout + result.stderr == ""
    assert result.returncode == 0
    lines = DOCKERFILE.read_text().splitlines()
    for index, line in enumerate(lines):
        if "hadolint ignore" in line:
            reason = lines[index - 1].strip() if index > 0 else ""
            assert reason.startswith("#"), f"line {index + 1}: no comment gives the reason"
            assert "hadolint" not in reason, f"line {index + 1}: no comment gives the reason"


def test_runtime_user_numeric_non_root() -> None:
    """The final stage runs as a numeric user other than 0."""
    users = [
        arguments for keyword, arguments in final_stage(DOCKERFILE.read_text()) if keyword == "USER"
    ]

    assert len(users) == 1
    user, _, group = users[0].partition(":")
    assert user.isdigit()
    assert int(user) != 0
    assert group == "" or group.isdigit()


def test_entrypoint_exec_form() -> None:
    """The entrypoint is exec form, so SIGTERM reaches Python directly."""
    entrypoints = [
        arguments
        for keyword, arguments in final_stage(DOCKERFILE.read_text())
        if keyword == "ENTRYPOINT"
    ]

    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0]) == ["python", "-m", "sidecar"]


def test_runtime_stage_contract() -> None:
    """Ports 8080 and 9090 are exposed, OCI labels set, and no HEALTHCHECK or RUN remains."""
    stage = final_stage(DOCKERFILE.read_text())
    keywords = [keyword for keyword, _ in stage]
    exposed = {
        port for keyword, arguments in stage if keyword == "EXPOSE" for port in arguments.split()
    }
    labels = " ".join(arguments for keyword, arguments in stage if keyword == "LABEL")

    assert exposed == {"8080", "9090"}
    assert "HEALTHCHECK" not in keywords
    assert "RUN" not in keywords, "the runtime stage must not install anything"
    for label in ("title", "description", "version", "revision", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels, label


def test_runtime_stage_copies_only_venv() -> None:
    """The runtime stage takes only the virtualenv from the builder stage."""
    stage = final_stage(DOCKERFILE.read_text())
    copies = [arguments for keyword, arguments in stage if keyword in ("COPY", "ADD")]

    assert copies == ["--from=builder /opt/venv /opt/venv"]


def test_builder_uses_ci_install_step() -> None:
    """The builder stage installs the package with `pip install .`, as CI does."""
    runs = [
        arguments for keyword, arguments in instructions(DOCKERFILE.read_text()) if keyword == "RUN"
    ]

    assert any("pip install --no-cache-dir ." in run for run in runs)
    ci_run = (DOCKERFILE.parent / ".ci" / "run").read_text()
    assert "pip install --quiet --no-cache-dir '.[test]'" in ci_run


def _context_files(root: Path) -> list[Path]:
    """Return the files a Docker build context of `root` contains under .dockerignore.

    Only the pattern forms this repository's .dockerignore uses are handled:
    `*`, `!name`, `!dir/` and `**/name`. Any other form fails the test, so
    the simplification cannot silently go wrong.
    """
    admitted: list[str] = []
    excluded_anywhere: list[str] = []
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#") or pattern == "*":
            continue
        if pattern.startswith("!") and "*" not in pattern:
            admitted.append(pattern[1:].rstrip("/"))
        elif pattern.startswith("**/") and "/" not in pattern[3:]:
            excluded_anywhere.append(pattern[3:])
        else:
            pytest.fail(f".dockerignore pattern {pattern!r} is not understood by this test")

    files = []
    for entry in admitted:
        path = root / entry
        if path.is_dir():
            candidates = list(path.rglob("*"))
        elif path.exists():
            candidates = [path]
        else:
            candidates = []
        for candidate in candidates:
            relative = candidate.relative_to(root)
            excluded = any(
                fnmatch.fnmatch(part, name) for name in excluded_anywhere for part in relative.parts
            )
            if candidate.is_file() and not excluded:
                files.append(relative)
    return files


def test_docker_context_builds_wheel(tmp_path: Path) -> None:
    """`pip wheel` succeeds on exactly the files that .dockerignore sends to the builder."""
    context = tmp_path / "context"
    for relative in _context_files(REPO_ROOT):
        (context / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, context / relative)

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(context),
        ],
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    [wheel] = (tmp_path / "dist").glob("kibo_token_sidecar-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "sidecar/__main__.py" in names
    assert "sidecar/service.py" in names
