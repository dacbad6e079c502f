"""The family checkpoints' own ways to be wrong: each is refused with the file and key, exit status 2, and
nothing written (never a partial load)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.__main__ import main
from tests.families.builders import build_checkpoint


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-family")
    return {
        "modernbert": build_checkpoint("modernbert", root / "modernbert"),
        "qwen3": build_checkpoint("qwen3", root / "qwen3"),
        "dense": build_checkpoint("distilbert", root / "dense", dense=True),
    }


def _copy(built: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built[name], tmp_path / name))


def _export(checkpoint: Path, out: Path, caplog: pytest.LogCaptureFixture) -> tuple[int, str]:
    code = main(["--model", str(checkpoint), "--out", str(out), "--skip-variants"])
    return code, "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def _edit_config(checkpoint: Path, **changes: object) -> None:
    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_unknown_model_type_names_the_supported_ones(built: dict[str, Path], tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = _copy(built, "qwen3", tmp_path)
    _edit_config(checkpoint, model_type="llama")
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "model_type='llama'" in message
    assert "qwen3" in message
    assert "modernbert" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("scaling", [
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
    {"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}},
])
def test_unsupported_rope_scaling_is_refused(built: dict[str, Path], tmp_path: Path, scaling: dict[str, object],
                                             caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = _copy(built, "qwen3", tmp_path)
    _edit_config(checkpoint, **scaling)
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "config.json" in message
    assert "unsupported rope scaling" in message


def test_modernbert_rope_scaling_per_layer_type_is_refused(built: dict[str, Path], tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = _copy(built, "modernbert", tmp_path)
    params = json.loads((checkpoint / "config.json").read_text())["rope_parameters"]
    params["sliding_attention"]["rope_type"] = "dynamic"
    _edit_config(checkpoint, rope_parameters=params)
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "rope_parameters.sliding_attention.rope_type='dynamic'" in message


def test_missing_dense_weights(built: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = _copy(built, "dense", tmp_path)
    dense_dir = next(checkpoint.glob("*_Dense"))
    (dense_dir / "model.safetensors").unlink()
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "missing Dense weights" in message
    assert dense_dir.name in message


def test_dense_shape_mismatch(built: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = _copy(built, "dense", tmp_path)
    config_path = next(checkpoint.glob("*_Dense")) / "config.json"
    config = json.loads(config_path.read_text())
    config["out_features"] += 1
    config_path.write_text(json.dumps(config))
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "linear.weight" in message
    assert "has shape" in message


def test_mismatched_shapes_in_a_fused_projection(built: dict[str, Path], tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = _copy(built, "modernbert", tmp_path)
    _edit_config(checkpoint, intermediate_size=80)  # Wi holds 2 x 96 rows
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "mlp.Wi.weight" in message
    assert "has shape (192" in message


def test_gqa_heads_that_do_not_divide(built: dict[str, Path], tmp_path: Path,
                                      caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = _copy(built, "qwen3", tmp_path)
    _edit_config(checkpoint, num_key_value_heads=3)
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "num_kv_heads" in message


def test_sliding_window_decoder_is_refused(built: dict[str, Path], tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = _copy(built, "qwen3", tmp_path)
    _edit_config(checkpoint, use_sliding_window=True, sliding_window=16)
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "use_sliding_window" in message


def test_unsupported_module_in_the_chain(built: dict[str, Path], tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    checkpoint = _copy(built, "qwen3", tmp_path)
    modules = json.loads((checkpoint / "modules.json").read_text())
    modules.insert(2, {"idx": 9, "name": "9", "path": "9_LayerNorm",
                       "type": "sentence_transformers.models.LayerNorm"})
    (checkpoint / "modules.json").write_text(json.dumps(modules))
    code, message = _export(checkpoint, tmp_path / "out", caplog)
    assert code == 2
    assert "unsupported module type" in message
    assert "LayerNorm" in message
