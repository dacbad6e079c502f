"""A checkpoint we cannot load exactly fails with a message naming the file and key, and a non-zero exit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from export.__main__ import main
from tests.conftest import REPO


@pytest.fixture
def checkpoint(tiny_checkpoint_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint_dir, copy)
    return copy


def _export(checkpoint: Path, out: Path, caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    code = main(["--model", str(checkpoint), "--out", str(out), "--skip-variants"])
    return code, "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_missing_weights_file(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (checkpoint / "model.safetensors").unlink()
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "no weights file" in message
    assert str(checkpoint) in message
    assert not (tmp_path / "out").exists()


def test_missing_config(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (checkpoint / "config.json").unlink()
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "config.json: file not found" in message


def test_missing_tokenizer(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (checkpoint / "tokenizer.json").unlink()
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "tokenizer.json: file not found" in message


def test_wrong_shape(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    config["intermediate_size"] = 100  # the weights hold 96
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "model.safetensors" in message
    assert "intermediate.dense" in message
    assert "has shape (96" in message


def test_unknown_architecture(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    config["model_type"] = "gpt2"
    (checkpoint / "config.json").write_text(json.dumps(config))
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "config.json" in message
    assert "model_type='gpt2'" in message


def test_missing_key(checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoint / "model.safetensors"))
    del state["encoder.layer.1.output.LayerNorm.bias"]
    save_file(state, str(checkpoint / "model.safetensors"))
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "missing key(s) layers.1.output_norm.bias" in message


def test_corrupt_safetensors_exits_non_zero_from_the_command_line(checkpoint: Path, tmp_path: Path) -> None:
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(os.urandom(4096))
    result = subprocess.run(
        [sys.executable, "-m", "export", "--model", str(checkpoint), "--out", str(tmp_path / "out")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "corrupt or unreadable safetensors file" in result.stderr
    assert str(weights) in result.stderr
    assert "Traceback" not in result.stderr
