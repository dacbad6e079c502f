"""What the service must know about a tokenizer beyond tokenizer.json: its special tokens and padding side.

Hugging Face keeps both in tokenizer_config.json (and special_tokens_map.json); the service reads them from the
manifest, so that no BERT token id or name is written anywhere in service/.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from model import CheckpointError

log = logging.getLogger(__name__)

_ROLES = ("cls", "sep", "bos", "eos", "pad", "unk", "mask")
# Names used when neither config file says (BERT's WordPiece, RoBERTa/SentencePiece, GPT-style byte-level).
_FALLBACK_NAMES = {
    "cls": ("[CLS]", "<s>"), "sep": ("[SEP]", "</s>"), "bos": ("<s>",), "eos": ("</s>", "<|endoftext|>"),
    "pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "mask": ("[MASK]", "<mask>"),
}


def _read_optional(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable: {exc}") from None
    return raw if isinstance(raw, dict) else {}


def _content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def special_tokens(model_dir: Path, tokenizer: Tokenizer) -> dict[str, int]:
    """role -> id for every role the model has (cls/bos, sep/eos, pad, unk, mask)."""
    declared = {**_read_optional(model_dir / "special_tokens_map.json"),
                **_read_optional(model_dir / "tokenizer_config.json")}
    found: dict[str, int] = {}
    for role in _ROLES:
        name = _content(declared.get(f"{role}_token"))
        candidates = (name,) if name else _FALLBACK_NAMES[role]
        for candidate in candidates:
            token_id = tokenizer.token_to_id(candidate) if candidate else None
            if token_id is not None:
                found[role] = token_id
                break
    return found


def padding_side(model_dir: Path, default: str) -> str:
    side = _read_optional(model_dir / "tokenizer_config.json").get("padding_side", default)
    if side not in ("left", "right"):
        raise CheckpointError(f"{model_dir / 'tokenizer_config.json'}: padding_side must be 'left' or 'right'")
    return str(side)


def token_style(tokenizer: Tokenizer) -> str:
    """How the vocabulary spells word boundaries, for displaying tokens: "wordpiece" (continuations start with
    ##), "metaspace" (SentencePiece: word starts with U+2581), "byte_level" (GPT-2 bytes: a space is Ġ and
    every byte is a printable character), or "other"."""
    raw = json.loads(tokenizer.to_str())

    def kinds(node: Any) -> set[str]:
        if isinstance(node, dict):
            found = {str(node.get("type", ""))}
            for child in node.get("pretokenizers", []) or []:
                found |= kinds(child)
            return found
        return set()

    found = kinds(raw.get("pre_tokenizer")) | kinds(raw.get("decoder"))
    if "ByteLevel" in found:
        return "byte_level"
    if "Metaspace" in found:
        return "metaspace"
    if (raw.get("model") or {}).get("type") == "WordPiece" or "WordPiece" in found:
        return "wordpiece"
    return "other"
