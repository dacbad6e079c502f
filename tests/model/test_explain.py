"""The walk-through module (the explain graph's source) is the served computation, for every family.

`ExplainEncoder` re-runs `Encoder.forward`'s steps keeping the intermediates; if it drifted from the encoder
(a norm in the wrong place, a mask of the wrong kind, a missed rotary), /v1/explain would explain another
model. Each family's key feature is exercised: segments (BERT), padding-offset positions (XLM-RoBERTa), the
relative bias (MPNet), local windows and rotary (ModernBERT), causal GQA with q/k norms and pre-norm (Qwen3).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from model import load_checkpoint
from model.explain import EXPLAIN_OUTPUTS, ExplainEncoder
from tests.families.builders import FAMILIES, build_checkpoint
from tests.tiny_checkpoint import make_tiny_checkpoint

TEXT = "the quick brown fox jumps over the lazy dog while the cat sleeps on a very warm mat"


@pytest.fixture(scope="module", params=("bert", *FAMILIES))
def checkpoint_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(f"explain-{request.param}")
    if request.param == "bert":
        return make_tiny_checkpoint(directory / "ck")
    return build_checkpoint(str(request.param), directory / "ck")


def test_walkthrough_reproduces_the_forward_pass(checkpoint_dir: Path) -> None:
    checkpoint = load_checkpoint(checkpoint_dir)
    encoder = checkpoint.encoder.eval()
    tok = Tokenizer.from_file(str(checkpoint_dir / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    ids = torch.tensor([tok.encode(TEXT).ids])
    mask = torch.ones_like(ids)
    query = 5
    with torch.no_grad():
        served = encoder(ids, mask)
        walk = ExplainEncoder(encoder)(ids, mask, torch.tensor([query]))
    assert walk._fields == EXPLAIN_OUTPUTS
    torch.testing.assert_close(walk.last_hidden_state, served.last_hidden_state[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(walk.probs, served.attentions[:, 0], rtol=0, atol=1e-6)
    # The parts add up: token + position + segment is the sum; softmax rows sum to 1 over visible keys only.
    torch.testing.assert_close(walk.embed_token + walk.embed_position + walk.embed_segment, walk.embed_sum)
    assert torch.all(walk.probs[walk.visibility[:, None].expand_as(walk.probs) == 0] == 0)
    torch.testing.assert_close(walk.probs.sum(-1), torch.ones_like(walk.probs[..., 0]))
    # Each layer's output is the next layer's input; the heads' outputs plus b_O are the attention output.
    config = checkpoint.config
    for layer in range(config.num_layers):
        previous = walk.embed_output if layer == 0 else walk.layer_output[layer - 1]
        torch.testing.assert_close(walk.attention_residual[layer], previous + walk.attention_output[layer])
        bias = encoder.layers[layer].attention.output.bias
        total = walk.head_outputs[layer].sum(0) + (bias if bias is not None else 0.0)
        torch.testing.assert_close(total, walk.attention_output[layer, query], rtol=0, atol=1e-5)
    torch.testing.assert_close(walk.context, torch.matmul(walk.probs, walk.values))
    if config.local_window:  # a local layer's query sees only its window
        local = next(i for i in range(config.num_layers) if not config.is_global_layer(i))
        far = [j for j in range(ids.shape[1]) if abs(j - query) > config.local_window // 2]
        assert far
        assert torch.all(walk.visibility[local, query, far] == 0)
    if config.causal:
        assert torch.all(walk.visibility[:, query, query + 1:] == 0)
