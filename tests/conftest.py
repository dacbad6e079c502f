"""Session fixtures shared by every test package: a tiny seeded model exported once, and the real MiniLM.

Heavy imports (torch, transformers) happen inside the fixtures so that tests which need neither stay fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
REAL_ARTIFACT_DIR = REPO / "artifacts" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_checkpoint import TINY_PROMPTS, make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint") / "tiny-bert", prompts=TINY_PROMPTS)


@pytest.fixture(scope="session")
def tiny_artifact_dir(tiny_checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported with every variant (int8 quality is meaningless on random weights: no floor)."""
    from export.pipeline import ExportOptions, run_export

    out = tmp_path_factory.mktemp("tiny-artifact") / "tiny-bert"
    return run_export(ExportOptions(model_dir=tiny_checkpoint_dir, out_dir=out, model_name="tiny-bert",
                                    int8_min_cosine=0.0))


@pytest.fixture(scope="session")
def real_checkpoint_dir() -> Path:
    from export.models import minilm_dir

    return minilm_dir()


@pytest.fixture(scope="session")
def real_artifact_dir(real_checkpoint_dir: Path) -> Path:
    """The embedded MiniLM exported where `make serve` puts it; the export returns at once when up to date."""
    from export.pipeline import ExportOptions, run_export

    return run_export(ExportOptions(model_dir=real_checkpoint_dir, out_dir=REAL_ARTIFACT_DIR,
                                    model_name="all-MiniLM-L6-v2"))
