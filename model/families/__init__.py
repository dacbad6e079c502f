"""Each supported architecture as a recipe over the shared components (see base.Family)."""

from __future__ import annotations

from pathlib import Path

from model.families.base import CheckpointError, Family
from model.families.bert import BERT, ROBERTA
from model.families.distilbert import DISTILBERT
from model.families.modernbert import MODERNBERT
from model.families.mpnet import MPNET
from model.families.qwen3 import QWEN3

FAMILIES: tuple[Family, ...] = (BERT, ROBERTA, DISTILBERT, MPNET, MODERNBERT, QWEN3)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def family_for(model_type: object, path: Path) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise CheckpointError(
        f"{path}: unsupported architecture model_type={model_type!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
    )


__all__ = ["FAMILIES", "SUPPORTED_MODEL_TYPES", "CheckpointError", "Family", "family_for"]
