"""Small, randomly initialised checkpoints of five encoder families, written as sentence-transformers saves them.

Each checkpoint is made with transformers' own model class and a tokenizer trained here with the `tokenizers`
library, so that our loader and exporter are exercised on files that neither we nor a hand-written fixture
produced. Nothing is downloaded: the tokenizer corpus is built in and the weights are seeded.

Why the weights are not transformers' defaults: with `initializer_range=0.02` a random encoder is nearly a
constant function of its input (dropping ModernBERT's local window or MPNet's relative bias still leaves
cosine >= 0.9998), so a parity test on it cannot tell a right implementation from a wrong one. We initialise
with 0.2 and then give every norm weight, norm bias and bias its own noise, so no parameter is an identity.

Why each tokenizer is shaped like the real family's: transformers 5 rebuilds the normalizer, pre-tokenizer and
(for some classes) post-processor of `XLMRobertaTokenizer`, `Qwen2Tokenizer`, `MPNetTokenizer` and
`BertTokenizer` from the class instead of reading them from tokenizer.json. A trained tokenizer.json that
differs from the class would make `AutoTokenizer` and `tokenizers.Tokenizer.from_file` disagree, which is not
what a real checkpoint does; tests/families/test_fixtures.py checks that they agree on every text.

The qwen3 tokenizer pipeline and the sentence-transformers save are in bench/random_checkpoints.py, which the
shaped benchmarks use too (bench/ may not import tests/).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.random_checkpoints import (
    QWEN3_TOKENIZER_CONFIG,
    qwen3_tokenizer,
    save_sentence_transformer,
    train_byte_level_bpe,
)

if TYPE_CHECKING:
    import torch
    from tokenizers import Tokenizer
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

FAMILIES = ("distilbert", "xlm-roberta", "mpnet", "modernbert", "qwen3")
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
DEFAULT_POOLING = {"distilbert": "mean", "xlm-roberta": "cls", "mpnet": "mean", "modernbert": "mean",
                   "qwen3": "lasttoken"}
# Qwen3-Embedding-style instruction prompt; no default, so plain inputs stay plain.
QWEN3_PROMPTS = {"query": "Instruct: find the answer\nQuery: "}

MAX_SEQ_LENGTH = 96
HIDDEN_SIZE = 64
NUM_HEADS = 4
DENSE_OUT_FEATURES = 24
INITIALIZER_RANGE = 0.2
# Noise on what random init leaves at an identity: norm weights become 1 + 0.3 n, every bias 0.2 n.
NORM_WEIGHT_NOISE = 0.3
BIAS_NOISE = 0.2
RELATIVE_BIAS_STD = 1.0
_UNIGRAM_PENALTY_STEP = 1e-4  # tokenizers' UnigramTrainer: score step between characters it did not score
_UNIGRAM_SCORE_DECIMALS = 4

# The tokenizer training corpus: English prose and code in the main, with accents, CJK, Korean and emoji so
# that those texts get real pieces as well as some unknowns (the CJK in mixed_texts is not all here).
_CORPUS = (
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.",
    "Machine learning models turn text into vectors so that similar sentences end up close together.",
    "A sentence embedding is the pooled output of a transformer encoder over all of its tokens.",
    "Search engines rank documents by how similar their embeddings are to the embedding of the query.",
    "The weather today is sunny with a light breeze from the west and a chance of rain in the evening.",
    "She opened the window, looked at the garden and decided to plant tomatoes, beans and sunflowers.",
    "Attention lets every token look at every other token and decide which of them matter the most.",
    "Local attention only looks at a window of nearby tokens, while global attention sees the whole input.",
    "Rotary position embeddings rotate queries and keys by an angle that grows with the position.",
    "Relative position buckets group distances between tokens so that far away pairs share one bias.",
    "Instruct: find the answer to the question. Query: what is the capital of France?",
    "Paris is the capital of France, Berlin is the capital of Germany and Tokyo is the capital of Japan.",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
    "for i in range(10):\n    if i % 2 == 0:\n        print(i, 'is even')",
    "SELECT name, count(*) FROM users WHERE age > 30 GROUP BY name ORDER BY name;",
    "ERROR 404: page not found at https://example.com/path?q=1&lang=en",
    "Café crème à la française, naïve façade, déjà vu, Zürich, São Paulo, Ærøskøbing, Kraków.",
    "Über den Wolken muss die Freiheit wohl grenzenlos sein, sagt man in München und Köln.",
    "El niño comió una manzana y la señora bebió café en la mañana.",
    "机器学习是人工智能的一个分支。东京是日本的首都。",
    "東京は日本の首都です。私は毎朝コーヒーを飲みます。",
    "안녕하세요 세계, 오늘 날씨가 좋네요.",
    "I love pizza 🍕 and coffee ☕, and when the party starts 🎉 everyone smiles 😀 👍.",
    "Numbers like 3.14159, 2.71828, 42 and 1,000,000 appear in many documents from 1999 to 2024.",
    "the the the a a a of of of and and and to to to in in in is is is it it it",
    "Hello world! Hello again, world. Goodbye, world.",
    "Tokenizers split words into pieces: unbelievable becomes un, believ and able.",
    "Embeddings, pooling, normalization and dense projections make up a sentence transformer.",
    "Left padding puts the pad tokens before the text so that the last token is always real.",
    "Short text.",
    "Every layer of the model adds a learned bias to the attention scores of pairs of tokens far away.",
    "A good encoder puts sentences that mean the same thing close together and others far apart.",
    "Queries, keys and values are projections of the hidden states; the scores are their dot products.",
    "Documents, passages and questions are all embedded by the same model and compared by cosine.",
    "The distances between tokens are grouped into buckets, and each bucket shares one bias per head.",
)


def mixed_texts() -> list[str]:
    """Texts that stress what differs between families: length (over a local window, over 24 tokens and about
    60 tokens), CJK, emoji, code, accents, repeated words, odd whitespace and a one-letter input."""
    return [
        "Hello world!",
        "a",
        "The quick brown fox jumps over the lazy dog.",
        "Search engines rank documents by how similar their embeddings are to the query, so a good encoder "
        "puts sentences that mean the same thing close together.",
        "Attention lets every token look at every other token. Local attention only looks at nearby tokens, "
        "rotary embeddings rotate queries and keys by position, and relative buckets group the distances "
        "between tokens so that far away pairs share one bias.",
        "机器学习是人工智能的一个分支。東京は日本の首都です。北京欢迎你！",
        "I love pizza 🍕🍕 and coffee ☕ — party time 🎉! 🤖",
        "def add(a, b):\n    return a + b  # sum\n\nprint(add(1, 2))",
        "Café crème à la française, naïve façade, Ærøskøbing, São Paulo, Zürich and Kraków.",
        "the the the the the the the the the the the the the the the the the the the the the the the the",
        "ERROR 404: Page Not Found at https://example.com/path?q=1&lang=en (retry in 30s)",
        "  leading and trailing spaces \t tabs\nand new lines  ",
    ]


@dataclass(frozen=True)
class _Recipe:
    """How one family's tokenizer and model are made, and what its tokenizer_config.json declares."""

    tokenizer: Callable[[], Tokenizer]
    tokenizer_config: dict[str, Any]
    model: Callable[[Tokenizer], PreTrainedModel]


def _corpus() -> Iterator[str]:
    yield from _CORPUS


# ---- tokenizers -------------------------------------------------------------------------------------------


def _wordpiece(specials: list[str], template_cls: str, template_sep: str, roberta_pair: bool,
               vocab_size: int) -> Tokenizer:
    """A lowercasing BERT WordPiece tokenizer: BertNormalizer, BertPreTokenizer, "##" pieces, as transformers'
    BertTokenizer and MPNetTokenizer rebuild it.

    tokenizers' WordPieceTrainer is not deterministic (its "##" pieces get ids in hash-map order, which changes
    how equal-count merges are broken), so the pieces come from its BpeTrainer, which is: every BPE token
    serves both as a word start and, with "##", as a continuation.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                            lowercase=True)
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizer
    bpe.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=(vocab_size - len(specials)) // 2,
                                                            min_frequency=1, show_progress=False))
    pieces = [token for token, _ in sorted(bpe.get_vocab().items(), key=lambda item: item[1])]
    vocab = {token: i for i, token in enumerate([*specials, *pieces, *(f"##{p}" for p in pieces)])}
    unk = next(s for s in specials if "unk" in s.lower())
    tok = Tokenizer(models.WordPiece(vocab, unk_token=unk, continuing_subword_prefix="##",
                                     max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(s, normalized=False, special=True) for s in specials])
    cls_id, sep_id = tok.token_to_id(template_cls), tok.token_to_id(template_sep)
    if roberta_pair:  # MPNet: <s> A </s></s> B </s>, all type 0 (as RobertaProcessing)
        pair = f"{template_cls} $A {template_sep} {template_sep} $B {template_sep}"
    else:  # BERT: [CLS] A [SEP] B [SEP] with type ids 0 / 1
        pair = f"{template_cls}:0 $A:0 {template_sep}:0 $B:1 {template_sep}:1"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{template_cls}:0 $A:0 {template_sep}:0", pair=pair,
        special_tokens=[(template_cls, cls_id), (template_sep, sep_id)])
    return tok


def _distilbert_tokenizer() -> Tokenizer:
    return _wordpiece(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], "[CLS]", "[SEP]", roberta_pair=False,
                      vocab_size=800)


def _mpnet_tokenizer() -> Tokenizer:
    tok = _wordpiece(["<s>", "<pad>", "</s>", "<unk>"], "<s>", "</s>", roberta_pair=True, vocab_size=800)
    _add_mask(tok, "<mask>")
    return tok


def _add_mask(tok: Tokenizer, mask: str) -> None:
    """The mask token last, eating the space before it, as in XLM-R's, MPNet's and ModernBERT's vocabularies."""
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(mask, lstrip=True, rstrip=False, normalized=False, special=True)])


def _xlm_roberta_tokenizer() -> Tokenizer:
    """SentencePiece-style Unigram as XLMRobertaTokenizer rebuilds it: no normalizer (the real one has a
    Precompiled charsmap we cannot train here), WhitespaceSplit + Metaspace("▁", always), <s>=0 <pad>=1 </s>=2
    <unk>=3 and <mask> last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=700, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                      unk_token="<unk>", show_progress=False)  # noqa: S106  a token, not a password
    tok.train_from_iterator(_corpus(), trainer)
    tok.model = models.Unigram(_canonical_unigram_vocab(json.loads(tok.to_str())["model"]["vocab"]), unk_id=3,
                               byte_fallback=False)
    _add_mask(tok, "<mask>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return tok


def _canonical_unigram_vocab(vocab: list[list[Any]]) -> list[tuple[str, float]]:
    """The trained pieces with the order-dependent part of their scores made deterministic.

    UnigramTrainer keeps every character of the corpus; one it did not score gets min_score + k * 1e-4, with k
    counted in hash-set order, and its EM sums in a varying order (scores differ by ~1e-11 run to run), so the
    same pieces come out with scores and ids that differ. Scores are rounded to 1e-4; the pieces on the
    penalty ladder (and any trained piece that sits exactly on it) get the ladder's scores in sorted order;
    equal scores are ordered by piece.
    """
    specials = vocab[:4]
    pieces = [(str(p), round(float(s), _UNIGRAM_SCORE_DECIMALS)) for p, s in vocab[4:]]
    floor = min(score for _, score in pieces)

    def on_ladder(score: float) -> bool:
        steps = (score - floor) / _UNIGRAM_PENALTY_STEP
        return abs(steps - round(steps)) < 1e-2 and round(steps) < len(pieces)

    ladder = sorted(piece for piece, score in pieces if on_ladder(score))
    rescored = {piece: round(floor + (len(ladder) - 1 - i) * _UNIGRAM_PENALTY_STEP, _UNIGRAM_SCORE_DECIMALS)
                for i, piece in enumerate(ladder)}
    kept = [(piece, rescored.get(piece, score)) for piece, score in pieces]
    kept.sort(key=lambda item: (-item[1], item[0]))
    return [(str(p), float(s)) for p, s in specials] + kept


def _modernbert_tokenizer() -> Tokenizer:
    """Byte-level BPE as ModernBERT's (OLMo's) tokenizer.json: NFC, ByteLevel pre-tokenizer with its regex,
    specials after the merges ([UNK] [CLS] [SEP] [PAD] [MASK], as ids 50280.. in the real one)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    train_byte_level_bpe(tok, _corpus(), vocab_size=700)
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in
                            ("[UNK]", "[CLS]", "[SEP]", "[PAD]")])
    _add_mask(tok, "[MASK]")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    return tok


def _qwen3_tokenizer() -> Tokenizer:
    """Qwen3-Embedding's byte-level BPE pipeline (bench/random_checkpoints.py), trained on the built-in corpus."""
    return qwen3_tokenizer(_corpus(), vocab_size=700)


# ---- models -----------------------------------------------------------------------------------------------


def _distilbert_model(tok: Tokenizer) -> PreTrainedModel:
    from transformers import DistilBertConfig, DistilBertModel

    config = DistilBertConfig(vocab_size=tok.get_vocab_size(), dim=HIDDEN_SIZE, n_layers=2, n_heads=NUM_HEADS,
                              hidden_dim=4 * HIDDEN_SIZE, max_position_embeddings=128, activation="gelu",
                              sinusoidal_pos_embds=False, pad_token_id=tok.token_to_id("[PAD]"),
                              initializer_range=INITIALIZER_RANGE)
    return DistilBertModel(config)


def _xlm_roberta_model(tok: Tokenizer) -> PreTrainedModel:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = XLMRobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN_SIZE, num_hidden_layers=2,
                              num_attention_heads=NUM_HEADS, intermediate_size=4 * HIDDEN_SIZE,
                              max_position_embeddings=MAX_SEQ_LENGTH + 2, type_vocab_size=1, pad_token_id=1,
                              bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                              initializer_range=INITIALIZER_RANGE)
    return XLMRobertaModel(config)


def _mpnet_model(tok: Tokenizer) -> PreTrainedModel:
    import torch
    from transformers import MPNetConfig, MPNetModel

    config = MPNetConfig(vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN_SIZE, num_hidden_layers=2,
                         num_attention_heads=NUM_HEADS, intermediate_size=4 * HIDDEN_SIZE,
                         max_position_embeddings=MAX_SEQ_LENGTH + 2, relative_attention_num_buckets=32,
                         pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
                         initializer_range=INITIALIZER_RANGE)
    model = MPNetModel(config)
    # Its relative bias is an Embedding, initialised at initializer_range like the token table: next to
    # attention scores of std ~2 that is too weak to notice (dropping it moves cosines by < 0.005). Unit noise
    # makes a loader that ignores it visible.
    with torch.no_grad():
        model.encoder.relative_attention_bias.weight.normal_(0.0, RELATIVE_BIAS_STD)
    return model


def _modernbert_model(tok: Tokenizer) -> PreTrainedModel:
    from transformers import ModernBertConfig, ModernBertModel

    config = ModernBertConfig(vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN_SIZE, num_hidden_layers=4,
                              num_attention_heads=NUM_HEADS, intermediate_size=96, hidden_activation="gelu",
                              max_position_embeddings=512, global_attn_every_n_layers=3, local_attention=8,
                              global_rope_theta=160_000.0, local_rope_theta=10_000.0, norm_bias=False,
                              norm_eps=1e-5, pad_token_id=tok.token_to_id("[PAD]"),
                              bos_token_id=tok.token_to_id("[CLS]"), eos_token_id=tok.token_to_id("[SEP]"),
                              cls_token_id=tok.token_to_id("[CLS]"), sep_token_id=tok.token_to_id("[SEP]"),
                              initializer_range=INITIALIZER_RANGE)
    return ModernBertModel(config)


def _qwen3_model(tok: Tokenizer) -> PreTrainedModel:
    from transformers import Qwen3Config, Qwen3Model

    eos = tok.token_to_id("<|endoftext|>")
    config = Qwen3Config(vocab_size=tok.get_vocab_size(), hidden_size=HIDDEN_SIZE, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=NUM_HEADS, num_key_value_heads=2, head_dim=16,
                         hidden_act="silu", max_position_embeddings=512, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                         attention_bias=False, use_sliding_window=False, tie_word_embeddings=True,
                         bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, use_cache=False,
                         initializer_range=INITIALIZER_RANGE)
    return Qwen3Model(config)


# tokenizer_config.json as each family's hub checkpoints declare it (class, specials, case handling, side).
_RECIPES: dict[str, _Recipe] = {
    "distilbert": _Recipe(_distilbert_tokenizer, {
        "tokenizer_class": "DistilBertTokenizer", "do_lower_case": True, "cls_token": "[CLS]",
        "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]",
        "tokenize_chinese_chars": True, "strip_accents": None, "padding_side": "right"}, _distilbert_model),
    "xlm-roberta": _Recipe(_xlm_roberta_tokenizer, {
        "tokenizer_class": "XLMRobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
        "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>", "mask_token": "<mask>",
        "padding_side": "right"}, _xlm_roberta_model),
    "mpnet": _Recipe(_mpnet_tokenizer, {
        "tokenizer_class": "MPNetTokenizer", "do_lower_case": True, "bos_token": "<s>", "eos_token": "</s>",
        "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "mask_token": "<mask>", "tokenize_chinese_chars": True, "strip_accents": None,
        "padding_side": "right"}, _mpnet_model),
    "modernbert": _Recipe(_modernbert_tokenizer, {
        "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": True, "cls_token": "[CLS]",
        "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]",
        "model_input_names": ["input_ids", "attention_mask"], "padding_side": "right"}, _modernbert_model),
    "qwen3": _Recipe(_qwen3_tokenizer, QWEN3_TOKENIZER_CONFIG, _qwen3_model),
}


# ---- weights ----------------------------------------------------------------------------------------------


def _is_norm(name: str) -> bool:
    lowered = name.lower()
    return any(key in lowered for key in ("layernorm", "layer_norm", "norm.", "_norm"))


def perturb_(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every norm weight 1 + 0.3 n and every bias 0.2 n (n ~ N(0, 1)), in parameter order, so that no
    LayerNorm/RMSNorm is an identity and no bias is zero: a loader that drops one of them must show."""
    import torch

    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if name.endswith("bias"):
                param.copy_(BIAS_NOISE * noise)
            elif _is_norm(name) and param.dim() == 1:
                param.copy_(1.0 + NORM_WEIGHT_NOISE * noise)


# ---- the checkpoint ---------------------------------------------------------------------------------------


def build_checkpoint(family: str, directory: Path, *, pooling: str | None = None, dense: bool = False,
                     normalize: bool = True, prompts: dict[str, str] | None = None,
                     default_prompt_name: str | None = None, seed: int = 0, legacy_layout: bool = False) -> Path:
    """Write a sentence-transformers checkpoint of `family` into `directory` (new or empty) and return it.

    The directory holds config.json, model.safetensors, tokenizer.json, tokenizer_config.json, modules.json,
    sentence_bert_config.json, config_sentence_transformers.json, README.md, 1_Pooling/config.json and, with
    `dense`, 2_Dense/{config.json,model.safetensors}; then <n>_Normalize/config.json when `normalize`.
    `pooling` defaults to the family's usual mode; qwen3's prompts default to QWEN3_PROMPTS. Same arguments,
    same bytes.

    The module files are what sentence-transformers 6.2 writes ("pooling_mode": "mean", module types under
    sentence_transformers.base / .sentence_transformer). `legacy_layout` rewrites them as checkpoints saved by
    releases before 5.x are on the hub (pooling_mode_*_tokens booleans, word_embedding_dimension,
    sentence_transformers.models.* types), which 6.2 still loads to the same model.
    """
    import torch
    from sentence_transformers.sentence_transformer.modules import Dense

    if family not in _RECIPES:
        raise ValueError(f"unknown family {family!r} (known: {', '.join(FAMILIES)})")
    pooling = pooling or DEFAULT_POOLING[family]
    if pooling not in POOLING_MODES:
        raise ValueError(f"unknown pooling {pooling!r} (known: {', '.join(POOLING_MODES)})")
    if prompts is None and family == "qwen3":
        prompts = dict(QWEN3_PROMPTS)
    if default_prompt_name is not None and default_prompt_name not in (prompts or {}):
        raise ValueError(f"default_prompt_name {default_prompt_name!r} is not one of the prompts")
    recipe = _RECIPES[family]
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise ValueError(f"{directory} is not empty: files of another build would mix into this one")
    directory.mkdir(parents=True, exist_ok=True)

    tokenizer = recipe.tokenizer()
    tokenizer_json = tokenizer.to_str(pretty=True)
    tokenizer_config = {"backend": "tokenizers", **recipe.tokenizer_config, "model_max_length": MAX_SEQ_LENGTH}

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed + 1)
    model = recipe.model(tokenizer).eval()
    perturb_(model, generator)
    model.save_pretrained(directory)

    heads: list[torch.nn.Module] = []
    if dense:
        head = Dense(HIDDEN_SIZE, DENSE_OUT_FEATURES, bias=True, activation_function=torch.nn.Tanh())
        with torch.no_grad():
            head.linear.weight.normal_(0.0, 1.0 / HIDDEN_SIZE**0.5, generator=generator)
        perturb_(head, generator)
        heads.append(head)
    # The trained tokenizer files are kept over what sentence-transformers re-saves (the test checks that they
    # tokenize the same).
    save_sentence_transformer(directory, tokenizer_json, tokenizer_config, embedding_dim=HIDDEN_SIZE,
                              pooling=pooling, max_seq_length=MAX_SEQ_LENGTH, heads=heads, normalize=normalize,
                              prompts=prompts, default_prompt_name=default_prompt_name)
    if legacy_layout:
        _rewrite_as_legacy(directory, pooling)
    logger.debug("built %s checkpoint (pooling=%s dense=%s normalize=%s legacy=%s) in %s", family, pooling,
                 dense, normalize, legacy_layout, directory)
    return directory


# sentence-transformers 6.2 module types -> the paths releases before 5.x wrote into modules.json.
_LEGACY_MODULE_TYPES = {"Transformer": "sentence_transformers.models.Transformer",
                        "Pooling": "sentence_transformers.models.Pooling",
                        "Dense": "sentence_transformers.models.Dense",
                        "Normalize": "sentence_transformers.models.Normalize"}
_LEGACY_POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens",
                        "max": "pooling_mode_max_tokens", "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
                        "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}


def _rewrite_as_legacy(directory: Path, pooling: str) -> None:
    """modules.json, 1_Pooling, 2_Dense and sentence_bert_config.json as sentence-transformers 3.x/4.x wrote them."""
    modules_path = directory / "modules.json"
    modules = json.loads(modules_path.read_text())
    for module in modules:
        module["type"] = _LEGACY_MODULE_TYPES[module["type"].rsplit(".", 1)[-1]]
    modules_path.write_text(json.dumps(modules, indent=2))
    for module in modules:
        config_path = directory / module["path"] / "config.json"
        kind = module["type"].rsplit(".", 1)[-1]
        if kind == "Pooling":
            raw = json.loads(config_path.read_text())
            legacy: dict[str, Any] = {"word_embedding_dimension": raw["embedding_dimension"]}
            legacy.update({key: mode == pooling for mode, key in _LEGACY_POOLING_KEYS.items()})
            legacy["include_prompt"] = raw["include_prompt"]
            config_path.write_text(json.dumps(legacy, indent=4))
        elif kind == "Dense":
            raw = json.loads(config_path.read_text())
            legacy = {key: raw[key] for key in ("in_features", "out_features", "bias", "activation_function")}
            config_path.write_text(json.dumps(legacy))
        elif kind == "Normalize":
            # Normalize has no files: a hub checkpoint has no such folder at all (git keeps no empty ones).
            config_path.unlink()
            config_path.parent.rmdir()
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False}, indent=2))

