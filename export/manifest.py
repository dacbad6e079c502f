"""manifest.json: everything the service must know about the artifacts, and checksums to trust them."""

from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def library_versions() -> dict[str, str]:
    names = ("torch", "onnx", "onnxruntime", "tokenizers", "numpy", "safetensors")
    versions = {name: metadata.version(name) for name in names}
    versions["python"] = platform.python_version()
    return versions


def io_spec(name: str, dtype: str, shape: list[str | int]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


def write_manifest(out_dir: Path, manifest: dict[str, Any]) -> Path:
    """Checksum every file but the manifest itself, then write it with sorted keys for stable diffs."""
    manifest["files"] = {
        p.name: sha256_file(p) for p in sorted(out_dir.iterdir()) if p.is_file() and p.name != MANIFEST
    }
    path = out_dir / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def is_up_to_date(out_dir: Path, inputs_sha256: str) -> bool:
    """True when the artifacts were made from these exact inputs and no file has changed since."""
    manifest = read_manifest(out_dir)
    if not manifest or manifest.get("export", {}).get("inputs_sha256") != inputs_sha256:
        return False
    files = manifest.get("files", {})
    return bool(files) and all(
        (out_dir / name).is_file() and sha256_file(out_dir / name) == digest for name, digest in files.items()
    )
