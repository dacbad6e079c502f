"""Rotary settings as config.json states them, in transformers 4 form (rope_theta, global_rope_theta,
local_rope_theta, rope_scaling) or transformers 5 form (rope_parameters, per layer type for ModernBERT)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.families.base import CheckpointError


def _theta(params: Any, where: str, path: Path, default: float) -> float:
    if params is None:
        return default
    if not isinstance(params, dict):
        raise CheckpointError(f"{path}: {where} must be an object")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        # Scaled variants (linear, dynamic, yarn, llama3, ...) change the angles; we compute only the default.
        raise CheckpointError(
            f"{path}: unsupported rope scaling {where}.rope_type={rope_type!r} (supported: 'default')"
        )
    return float(params.get("rope_theta", default))


def refuse_rope_scaling(raw: dict[str, Any], path: Path) -> None:
    scaling = raw.get("rope_scaling")
    if scaling:
        _theta(scaling, "rope_scaling", path, 0.0)


def single_theta(raw: dict[str, Any], path: Path, default: float = 10000.0) -> float:
    """One theta for every layer (Qwen3)."""
    refuse_rope_scaling(raw, path)
    params = raw.get("rope_parameters")
    if params is not None:
        return _theta(params, "rope_parameters", path, float(raw.get("rope_theta", default)))
    return float(raw.get("rope_theta", default))


def global_local_theta(raw: dict[str, Any], path: Path, defaults: tuple[float, float]) -> tuple[float, float]:
    """(global theta, local theta) for ModernBERT."""
    refuse_rope_scaling(raw, path)
    params = raw.get("rope_parameters")
    global_theta = float(raw.get("global_rope_theta", defaults[0]))
    local_theta = float(raw.get("local_rope_theta", defaults[1]))
    if params is not None:
        if not isinstance(params, dict):
            raise CheckpointError(f"{path}: rope_parameters must be an object")
        global_theta = _theta(params.get("full_attention"), "rope_parameters.full_attention", path, global_theta)
        local_theta = _theta(params.get("sliding_attention"), "rope_parameters.sliding_attention", path,
                             local_theta)
    return global_theta, local_theta
