"""A small, randomly initialised BERT saved as a real Hugging Face + sentence-transformers directory.

Made with transformers (test-only) so that our loader is exercised on files we did not write ourselves.
Its tokenizer is the embedded MiniLM's, so text goes through the same vocabulary as the real model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from export.models import minilm_dir

TINY_SHAPE = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 96}
# sentence-transformers prompts of the session's tiny model (no default: plain inputs stay plain)
TINY_PROMPTS = {"query": "query: ", "passage": "passage: "}


def make_tiny_checkpoint(directory: Path, *, seed: int = 0, pooling: str = "mean", max_seq_length: int = 128,
                         prompts: dict[str, str] | None = None, default_prompt_name: str | None = None,
                         **overrides: int) -> Path:
    """Write config.json, model.safetensors, tokenizer.json and sentence-transformers files into directory
    (config_sentence_transformers.json too when `prompts` are given)."""
    import torch
    from transformers import BertConfig, BertModel

    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    shape = {**TINY_SHAPE, **overrides}
    config = BertConfig(vocab_size=30522, max_position_embeddings=256, type_vocab_size=2, **shape)
    model = BertModel(config, add_pooling_layer=True).eval()
    # Random init leaves LayerNorm at identity and biases at zero; perturb them so the load is really checked.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.05)
    model.save_pretrained(directory, safe_serialization=True)
    shutil.copy(minilm_dir() / "tokenizer.json", directory / "tokenizer.json")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (directory / "modules.json").write_text(json.dumps(modules))
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": shape["hidden_size"],
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": pooling == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    }))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False})
    )
    if prompts is not None:
        write_prompts(directory, prompts, default_prompt_name)
    return directory


def write_prompts(directory: Path, prompts: dict[str, str], default_prompt_name: str | None = None) -> None:
    """config_sentence_transformers.json as sentence-transformers 3+ writes it."""
    (directory / "config_sentence_transformers.json").write_text(json.dumps({
        "__version__": {"sentence_transformers": "3.0.0"}, "prompts": prompts,
        "default_prompt_name": default_prompt_name, "similarity_fn_name": "cosine",
    }))
