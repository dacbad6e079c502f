"""The service reads the artifacts with torch made unimportable: the runtime image carries no torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

SCRIPT = """
import sys
for name in ("torch", "model", "export", "transformers", "sentence_transformers"):
    sys.modules[name] = None  # any import of these now raises ImportError
from service.artifacts import load_manifest
manifest = load_manifest(__import__("pathlib").Path(sys.argv[1]), verify=True)
print(manifest.model_name, manifest.embedding_dim)
"""


def test_service_reads_manifest_without_torch(tiny_artifact_dir: Path) -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_artifact_dir)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["tiny-bert", "48"]
