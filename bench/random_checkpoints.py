"""Randomly initialised checkpoints on disk as sentence-transformers writes them: the parts tests and benchmarks share.

The family fixtures (tests/families/builders.py) and the shaped benchmarks (bench/qwen3_shaped.py) both need a
checkpoint that neither we nor a hand-written fixture produced: transformers' own model class, a tokenizer trained
here with the `tokenizers` library, and the module files sentence-transformers itself saves. What they share lives
here; what only the fixtures need (their corpus, their weight perturbation, the other families) stays in tests/.

Why in bench/ and not export/: transformers and sentence-transformers are test-only requirements
(requirements/test.txt), and export/ ships in the package; bench/ already runs from the test set.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

# Qwen2's pre-tokenizer regex, exactly as transformers' Qwen2Tokenizer and Qwen's tokenizer.json hold it.
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# tokenizer_config.json as Qwen3-Embedding's checkpoints declare it (the caller adds model_max_length).
QWEN3_TOKENIZER_CONFIG: dict[str, Any] = {
    "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|endoftext|>",
    "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False, "errors": "replace",
    "split_special_tokens": False, "clean_up_tokenization_spaces": False, "padding_side": "left"}


def train_byte_level_bpe(tok: Tokenizer, texts: Iterable[str], vocab_size: int) -> None:
    """Train `tok`'s BPE model on `texts` over the full 256-byte alphabet, so that no text has an unknown byte.

    `vocab_size` is an upper bound: on a small corpus the trainer stops when no pair is left to merge.
    """
    from tokenizers import pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(texts, trainer)


def qwen3_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Byte-level BPE as Qwen2Tokenizer rebuilds it and as Qwen3-Embedding's tokenizer.json holds it: NFC,
    Split(Qwen regex, isolated) + ByteLevel(no prefix space, no regex), <|endoftext|> after the merges and
    appended to every input.

    The pipeline must be the class's: transformers 5 rebuilds Qwen2Tokenizer's normalizer and pre-tokenizer from
    the class instead of reading tokenizer.json, so a different one would make AutoTokenizer and
    `tokenizers.Tokenizer.from_file` disagree, which a real checkpoint does not.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(dropout=None, unk_token=None, continuing_subword_prefix="", end_of_word_suffix="",
                               fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    train_byte_level_bpe(tok, texts, vocab_size)
    tok.add_special_tokens([AddedToken("<|endoftext|>", normalized=False, special=True)])
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0 <|endoftext|>:0", pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eos)])
    return tok


def write_tokenizer(directory: Path, tokenizer_json: str, tokenizer_config: dict[str, Any]) -> None:
    (directory / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n",
                                                    encoding="utf-8")


def save_sentence_transformer(directory: Path, tokenizer_json: str, tokenizer_config: dict[str, Any], *,
                              embedding_dim: int, pooling: str, max_seq_length: int,
                              heads: Sequence[torch.nn.Module] = (), normalize: bool = True,
                              prompts: dict[str, str] | None = None,
                              default_prompt_name: str | None = None) -> None:
    """Turn `directory` (a transformers save_pretrained output) into a sentence-transformers checkpoint.

    sentence-transformers itself writes modules.json, sentence_bert_config.json, config_sentence_transformers.json,
    README.md, 1_Pooling/ and one folder per head module (then <n>_Normalize/ when `normalize`), so the layout is
    what a real save has, not our idea of it. It re-saves the tokenizer as transformers rebuilt it; the trained
    files are put back (they tokenize the same), with the legacy sentence_bert_config keys our loader and older
    releases read. The model is loaded once more to do this (sentence-transformers saves what it holds).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    write_tokenizer(directory, tokenizer_json, tokenizer_config)
    transformer = Transformer(str(directory), max_seq_length=max_seq_length)
    modules: list[torch.nn.Module] = [transformer, Pooling(embedding_dim, pooling_mode=pooling, include_prompt=True),
                                      *heads]
    if normalize:
        modules.append(Normalize())
    st_model = SentenceTransformer(modules=modules, device="cpu", prompts=prompts or {},
                                   default_prompt_name=default_prompt_name, similarity_fn_name="cosine")
    st_model.save(str(directory))
    write_tokenizer(directory, tokenizer_json, tokenizer_config)
    st_config_path = directory / "sentence_bert_config.json"
    st_config = json.loads(st_config_path.read_text())
    st_config.update(max_seq_length=max_seq_length, do_lower_case=False)
    st_config_path.write_text(json.dumps(st_config, indent=2) + "\n")
