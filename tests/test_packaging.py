"""The project installs as a package: pins equal to the requirement files, a wheel with every module and the
page, and an `encoder-serve` command whose `info` lists every setting."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from service.settings import Settings
from tests.conftest import REPO


def _pins(name: str) -> list[str]:
    lines = (REPO / "requirements" / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith(("#", "-r"))]


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def test_package_pins_are_the_requirement_files() -> None:
    project = _project()
    assert project["dependencies"] == _pins("serve.txt")
    assert project["optional-dependencies"]["export"] == _pins("export.txt")
    gpu = {p for p in _pins("serve-gpu.txt") if p.startswith("onnxruntime")}
    assert set(project["optional-dependencies"]["gpu"]) == gpu
    assert set(project["optional-dependencies"]["test"]) <= set(_pins("test.txt"))
    assert project["scripts"]["encoder-serve"] == "service.cli:main"


def test_wheel_holds_every_module_the_page_and_the_command(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("service", "model", "export"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("encoder_serve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("service/cli.py", "service/static/index.html", "model/families/qwen3.py", "export/models.py"):
        assert module in names, module
    assert not any(n.startswith("tests/") for n in names)
    meta = next(n for n in names if n.endswith("entry_points.txt"))
    assert "encoder-serve = service.cli:main" in zipfile.ZipFile(wheel).read(meta).decode()
    requires = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: onnxruntime==1.31.1" in requires
    assert re.search(r"Requires-Dist: torch==2\.13\.0; extra == \"export\"", requires)


def test_info_lists_every_setting_with_its_default() -> None:
    out = subprocess.run([sys.executable, "-m", "service.cli", "info"], capture_output=True, text=True, cwd=REPO,
                         check=True, timeout=60).stdout
    for name in Settings.model_fields:
        assert f"EMBED_{name.upper()}" in out
    assert re.search(r"EMBED_PORT\s+8080", out)
    assert re.search(r"EMBED_GRAPH_VARIANT\s+fp32", out)


def test_unknown_subcommand_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "service.cli", "launch"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_info_shows_list_defaults_as_empty_not_required() -> None:
    from service.cli import settings_table

    defaults = {env: default for env, default, _ in settings_table()}
    assert defaults["EMBED_MODELS"] == "(empty)"
    assert defaults["EMBED_CORS_ORIGINS"] == "(empty)"
    assert "(required)" not in defaults.values()  # every setting has a default


def _locked(name: str) -> dict[str, list[str]]:
    """requirements/lock/<name> as {package: [its --hash options]} (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", (REPO / "requirements" / "lock" / name).read_text())
    locked: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement, *options = line.split()
            locked[requirement] = [o for o in options if o.startswith("--hash=sha256:")]
    return locked


def _canonical(pin: str) -> str:
    name, version = re.sub(r"\[.*\]", "", pin).split("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


def test_every_lock_pins_each_package_with_a_hash_and_holds_its_inputs_pins() -> None:
    """`make lock` output: exact pins and sha256s for every package, the top-level pins among them, so that
    `pip install --require-hashes` (make, the Dockerfile) accepts it and installs what requirements/ asks for."""
    inputs = {"serve.txt": ["serve.txt"], "serve-gpu.txt": ["serve-gpu.txt"], "export.txt": ["serve.txt", "export.txt"],
              "test.txt": ["serve.txt", "export.txt", "test.txt"], "model.txt": ["model.txt"],
              "build.txt": ["build.txt"], "tools.txt": ["tools.txt"]}
    assert {p.name for p in (REPO / "requirements" / "lock").glob("*.txt")} == set(inputs)
    for lock, sources in inputs.items():
        locked = _locked(lock)
        for requirement, hashes in locked.items():
            assert re.fullmatch(r"[a-z0-9-]+==\S+", requirement), f"{lock}: {requirement} is not an exact pin"
            assert hashes, f"{lock}: {requirement} has no --hash"
        # torch's pin is the CPU build of the same release (torch==2.13.0 -> torch==2.13.0+cpu)
        versions = {r.split("+")[0] for r in locked}
        for source in sources:
            for pin in _pins(source):
                assert _canonical(pin) in versions, f"{lock} lacks {source}'s {pin}"
    assert set(_locked("serve.txt")) <= set(_locked("export.txt")) <= set(_locked("test.txt")), "one version each"
