"""The family checkpoints are what they claim: sentence-transformers and transformers load them, their two
tokenizer paths agree, their attention is neither flat nor one-hot, and each family's key feature changes the
output (a fixture whose features are invisible would let a wrong implementation pass a parity test)."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel

from bench.random_checkpoints import QWEN_PRETOKENIZE_REGEX
from tests.families.builders import (
    DENSE_OUT_FEATURES,
    FAMILIES,
    HIDDEN_SIZE,
    MAX_SEQ_LENGTH,
    QWEN3_PROMPTS,
    build_checkpoint,
    mixed_texts,
)

log = logging.getLogger(__name__)

# The class AutoTokenizer must pick: all but ModernBERT's rebuild their pipeline from the class (the trap).
EXPECTED_TOKENIZER_CLASS = {"distilbert": "DistilBertTokenizer", "xlm-roberta": "XLMRobertaTokenizer",
                            "mpnet": "MPNetTokenizer", "modernbert": "TokenizersBackend",
                            "qwen3": "Qwen2Tokenizer"}


@pytest.fixture(scope="session", params=FAMILIES)
def family_checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    family: str = request.param
    return family, build_checkpoint(family, tmp_path_factory.mktemp("families") / family)


def _load_eager(directory: Path, **config_overrides: Any) -> PreTrainedModel:
    return AutoModel.from_pretrained(directory, attn_implementation="eager", **config_overrides).eval()


def _batch(directory: Path) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return dict(tokenizer(mixed_texts(), padding=True, truncation=True, return_tensors="pt"))


def _hidden(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).last_hidden_state


def test_sentence_transformers_encodes_mixed_texts(family_checkpoint: tuple[str, Path]) -> None:
    family, directory = family_checkpoint
    model = SentenceTransformer(str(directory), device="cpu")
    embeddings = model.encode(mixed_texts())
    assert embeddings.shape == (len(mixed_texts()), HIDDEN_SIZE)
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    cosines = embeddings @ embeddings.T
    assert cosines[~np.eye(len(cosines), dtype=bool)].min() < 0.95, f"{family}: texts are barely told apart"
    assert model.max_seq_length == MAX_SEQ_LENGTH
    # Padding never leaks into a text's vector: one batch equals one text at a time.
    one_by_one = np.stack([model.encode([text])[0] for text in mixed_texts()])
    np.testing.assert_allclose(embeddings, one_by_one, atol=1e-5)


def test_auto_tokenizer_agrees_with_tokenizer_json(family_checkpoint: tuple[str, Path]) -> None:
    """transformers 5 rebuilds most tokenizers from their class; the trained tokenizer.json must match it."""
    family, directory = family_checkpoint
    auto = AutoTokenizer.from_pretrained(directory)
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    assert type(auto).__name__ == EXPECTED_TOKENIZER_CLASS[family]
    texts = mixed_texts()
    for text in texts:
        assert auto(text)["input_ids"] == raw.encode(text).ids, f"{family}: {text!r}"
        assert auto(text, add_special_tokens=False)["input_ids"] == raw.encode(text, add_special_tokens=False).ids
    for first, second in itertools.pairwise(texts):
        assert auto(first, second)["input_ids"] == raw.encode(first, second).ids, f"{family}: pair {first!r}"
    config = AutoConfig.from_pretrained(directory)
    assert auto.pad_token_id == config.pad_token_id
    lengths = [len(raw.encode(text).ids) for text in texts]
    assert max(lengths) <= MAX_SEQ_LENGTH, f"{family}: {lengths} would be truncated"
    assert sum(n > 24 for n in lengths) >= 4, f"{family}: {lengths} has too few long texts"
    assert max(lengths) >= 55, f"{family}: {lengths} has too few long texts"
    log.info("%s token counts: %s", family, lengths)


def test_eager_attentions_are_returned_and_not_saturated(family_checkpoint: tuple[str, Path]) -> None:
    family, directory = family_checkpoint
    model = _load_eager(directory)
    config = model.config
    batch = _batch(directory)
    with torch.no_grad():
        out = model(**batch, output_attentions=True)
    n_texts, length = batch["input_ids"].shape
    assert len(out.attentions) == config.num_hidden_layers
    real = batch["attention_mask"].bool()
    keys = real.sum(-1).float()
    for layer, probs in enumerate(out.attentions):
        # (B, H, T, T); H is num_attention_heads, also for GQA (qwen3's 2 key/value heads are repeated)
        assert probs.shape == (n_texts, config.num_attention_heads, length, length)
        assert torch.isfinite(probs).all()
        rows = real[:, None, :].expand(probs.shape[:3])  # query positions that are real tokens
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1) / keys.log().clamp_min(1e-6)[:, None, None]
        mean_entropy, mean_top = entropy[rows].mean().item(), probs.max(-1).values[rows].mean().item()
        log.info("%s layer %d: attention %s, normalised entropy %.2f, mean top weight %.2f", family, layer,
                 tuple(probs.shape), mean_entropy, mean_top)
        assert 0.2 < mean_entropy < 0.95, f"{family} layer {layer}: entropy {mean_entropy:.2f}"
        assert mean_top < 0.75, f"{family} layer {layer}: attention nearly one-hot ({mean_top:.2f})"
    hidden = out.last_hidden_state[real]
    assert torch.isfinite(hidden).all()
    assert hidden.abs().max() < 50


def _zero(attribute: str) -> Callable[[PreTrainedModel], None]:
    def ablate(model: PreTrainedModel) -> None:
        target: Any = model
        for name in attribute.split("."):
            target = getattr(target, name)
        target.weight.data.zero_()

    return ablate


def _unit_k_norm(model: PreTrainedModel) -> None:
    for layer in model.layers:
        layer.self_attn.k_norm.weight.data.fill_(1.0)


def _identity_norms(model: PreTrainedModel) -> None:
    for name, param in model.named_parameters():
        if param.dim() == 1 and "norm" in name.lower():
            param.data.fill_(1.0 if name.endswith("weight") else 0.0)


# family -> (what is dropped, how): each must move the hidden states by far more than a parity tolerance.
ABLATIONS: dict[str, list[tuple[str, Callable[[PreTrainedModel], None] | dict[str, Any]]]] = {
    "distilbert": [("learned positions", _zero("embeddings.position_embeddings"))],
    "xlm-roberta": [("learned positions", _zero("embeddings.position_embeddings"))],
    "mpnet": [("relative position bias", _zero("encoder.relative_attention_bias")),
              ("learned positions", _zero("embeddings.position_embeddings"))],
    "modernbert": [("local window", {"local_attention": 4096}),
                   ("local rope theta", {"rope_parameters": {"full_attention": {"rope_type": "default",
                                                                                "rope_theta": 160_000.0},
                                                             "sliding_attention": {"rope_type": "default",
                                                                                   "rope_theta": 160_000.0}}})],
    "qwen3": [("k_norm weights", _unit_k_norm),
              ("rope theta", {"rope_parameters": {"rope_type": "default", "rope_theta": 10_000.0}})],
}


@pytest.mark.parametrize("family", FAMILIES)
def test_key_features_change_the_output(family: str, tmp_path: Path) -> None:
    directory = build_checkpoint(family, tmp_path / family)
    batch = _batch(directory)
    real = batch["attention_mask"].bool()
    reference = _hidden(_load_eager(directory), batch)
    for what, change in [*ABLATIONS[family], ("norm weights and biases", _identity_norms)]:
        if isinstance(change, dict):
            ablated = _load_eager(directory, **change)
        else:
            ablated = _load_eager(directory)
            change(ablated)
        moved = (_hidden(ablated, batch) - reference)[real].abs().max().item()
        log.info("%s without %s: max |hidden change| %.3f", family, what, moved)
        assert moved > 0.3, f"{family}: dropping {what} moves hidden states by only {moved:.4f}"


def test_saved_configs_exercise_each_family(tmp_path: Path) -> None:
    """The keys our family modules must read, as transformers 5.23 writes them."""
    configs = {family: json.loads((build_checkpoint(family, tmp_path / family) / "config.json").read_text())
               for family in FAMILIES}
    distilbert = configs["distilbert"]
    assert distilbert["sinusoidal_pos_embds"] is False
    assert distilbert["activation"] == "gelu"
    xlmr = configs["xlm-roberta"]
    assert (xlmr["pad_token_id"], xlmr["max_position_embeddings"], xlmr["type_vocab_size"]) == (
        1, MAX_SEQ_LENGTH + 2, 1)
    mpnet = configs["mpnet"]
    assert (mpnet["relative_attention_num_buckets"], mpnet["pad_token_id"]) == (32, 1)
    modernbert = configs["modernbert"]
    assert modernbert["layer_types"] == ["full_attention", "sliding_attention", "sliding_attention",
                                         "full_attention"]
    assert modernbert["rope_parameters"] == {"full_attention": {"rope_theta": 160000.0, "rope_type": "default"},
                                             "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"}}
    assert "global_rope_theta" not in modernbert
    assert "local_rope_theta" not in modernbert
    assert (modernbert["local_attention"], modernbert["global_attn_every_n_layers"], modernbert["norm_bias"]) == (
        8, 3, False)
    qwen3 = configs["qwen3"]
    assert (qwen3["num_attention_heads"], qwen3["num_key_value_heads"], qwen3["head_dim"]) == (4, 2, 16)
    assert qwen3["layer_types"] == ["full_attention"] * qwen3["num_hidden_layers"]
    assert qwen3["sliding_window"] is None
    assert qwen3["use_sliding_window"] is False
    assert qwen3["rope_parameters"] == {"rope_theta": 1000000.0, "rope_type": "default"}
    for family, config in configs.items():
        assert config["initializer_range"] == 0.2, family


def test_qwen3_pads_left_pools_the_last_token_and_prepends_its_prompt(tmp_path: Path) -> None:
    directory = build_checkpoint("qwen3", tmp_path / "qwen3")
    tokenizer_config = json.loads((directory / "tokenizer_config.json").read_text())
    assert tokenizer_config["padding_side"] == "left"
    assert tokenizer_config["pad_token"] == "<|endoftext|>"  # noqa: S105  a token, not a password
    st_config = json.loads((directory / "config_sentence_transformers.json").read_text())
    assert st_config["prompts"]["query"] == QWEN3_PROMPTS["query"]
    assert st_config["default_prompt_name"] is None
    pooling = json.loads((directory / "1_Pooling" / "config.json").read_text())
    assert pooling == {"embedding_dimension": HIDDEN_SIZE, "pooling_mode": "lasttoken", "include_prompt": True}

    model = SentenceTransformer(str(directory), device="cpu")
    assert model[0].tokenizer.padding_side == "left"
    features = model.tokenize(["a", "a much longer text than the first one"])
    eos = model[0].tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert features["attention_mask"][0, 0] == 0
    assert features["attention_mask"][0, -1] == 1
    assert (features["input_ids"][:, -1] == eos).all()  # lasttoken pools the appended EOS
    # A prompt is text put in front (include_prompt=True: its tokens are pooled too); none is applied by default.
    text = "what is the capital of France?"
    with_prompt = model.encode([text], prompt_name="query")
    np.testing.assert_allclose(with_prompt, model.encode([QWEN3_PROMPTS["query"] + text]), atol=1e-6)
    np.testing.assert_allclose(with_prompt, model.encode_query([text]), atol=1e-6)
    assert not np.allclose(with_prompt, model.encode([text]), atol=1e-3)
    assert model.preprocess([text], prompt=QWEN3_PROMPTS["query"])["prompt_length"] == len(
        model[0].tokenizer(QWEN3_PROMPTS["query"])["input_ids"]) - 1  # the prompt's own EOS is not counted


def test_dense_weightedmean_variant(tmp_path: Path) -> None:
    directory = build_checkpoint("mpnet", tmp_path / "mpnet", pooling="weightedmean", dense=True)
    modules = json.loads((directory / "modules.json").read_text())
    assert [(m["path"], m["type"].rsplit(".", 1)[-1]) for m in modules] == [
        ("", "Transformer"), ("1_Pooling", "Pooling"), ("2_Dense", "Dense"), ("3_Normalize", "Normalize")]
    dense_config = json.loads((directory / "2_Dense" / "config.json").read_text())
    assert dense_config == {"in_features": HIDDEN_SIZE, "out_features": DENSE_OUT_FEATURES, "bias": True,
                            "activation_function": "torch.nn.modules.activation.Tanh",
                            "module_input_name": "sentence_embedding", "module_output_name": "sentence_embedding"}
    from safetensors.torch import load_file

    weights = load_file(str(directory / "2_Dense" / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {
        "linear.weight": (DENSE_OUT_FEATURES, HIDDEN_SIZE), "linear.bias": (DENSE_OUT_FEATURES,)}
    assert weights["linear.bias"].abs().min() > 0  # perturbed, not zero
    model = SentenceTransformer(str(directory), device="cpu")
    embeddings = model.encode(mixed_texts())
    assert embeddings.shape == (len(mixed_texts()), DENSE_OUT_FEATURES)
    assert np.isfinite(embeddings).all()
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_lasttoken_variant_without_normalize(tmp_path: Path) -> None:
    directory = build_checkpoint("modernbert", tmp_path / "modernbert", pooling="lasttoken", normalize=False)
    modules = json.loads((directory / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    model = SentenceTransformer(str(directory), device="cpu")
    embeddings = model.encode(mixed_texts())
    assert embeddings.shape == (len(mixed_texts()), HIDDEN_SIZE)
    assert np.isfinite(embeddings).all()
    assert not np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-2)
    # Right padding: the last real token is [SEP], the same id for every text, but its vector is contextual.
    assert np.abs(embeddings[0] - embeddings[1]).max() > 1e-2


@pytest.mark.parametrize("family", ["xlm-roberta", "qwen3"])
def test_legacy_layout_loads_to_the_same_model(family: str, tmp_path: Path) -> None:
    current = build_checkpoint(family, tmp_path / "current", dense=True, pooling="mean")
    legacy = build_checkpoint(family, tmp_path / "legacy", dense=True, pooling="mean", legacy_layout=True)
    modules = json.loads((legacy / "modules.json").read_text())
    assert [m["type"] for m in modules] == ["sentence_transformers.models.Transformer",
                                            "sentence_transformers.models.Pooling",
                                            "sentence_transformers.models.Dense",
                                            "sentence_transformers.models.Normalize"]
    pooling = json.loads((legacy / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == HIDDEN_SIZE
    assert pooling["pooling_mode_mean_tokens"] is True
    assert sum(value is True for key, value in pooling.items() if key.startswith("pooling_mode")) == 1
    assert json.loads((legacy / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": MAX_SEQ_LENGTH, "do_lower_case": False}
    assert not (legacy / "3_Normalize").exists()
    np.testing.assert_allclose(SentenceTransformer(str(legacy), device="cpu").encode(mixed_texts()),
                               SentenceTransformer(str(current), device="cpu").encode(mixed_texts()), atol=1e-6)


def _digests(directory: Path) -> dict[str, str]:
    return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("family", FAMILIES)
def test_builds_are_byte_identical_and_seeded(family: str, tmp_path: Path) -> None:
    first = _digests(build_checkpoint(family, tmp_path / "a"))
    assert first == _digests(build_checkpoint(family, tmp_path / "b"))
    other_seed = _digests(build_checkpoint(family, tmp_path / "c", seed=1))
    assert other_seed["model.safetensors"] != first["model.safetensors"]
    assert other_seed["tokenizer.json"] == first["tokenizer.json"]  # the tokenizer does not depend on the seed


def test_qwen_regex_is_the_one_transformers_rebuilds_with() -> None:
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    assert QWEN_PRETOKENIZE_REGEX == PRETOKENIZE_REGEX


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown family"):
        build_checkpoint("bert-large", tmp_path / "x")
    with pytest.raises(ValueError, match="unknown pooling"):
        build_checkpoint("mpnet", tmp_path / "x", pooling="median")
    with pytest.raises(ValueError, match="default_prompt_name"):
        build_checkpoint("mpnet", tmp_path / "x", prompts={"query": "q: "}, default_prompt_name="passage")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "stale.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty"):
        build_checkpoint("mpnet", tmp_path / "full")
