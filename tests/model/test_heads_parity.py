"""Our task heads against the references on the same weights: transformers' *ForSequenceClassification /
*ForMaskedLM and sentence-transformers' CrossEncoder.predict and SparseEncoder.encode.

Rerank inputs are (query, document) PAIRS tokenized with the pair template and segment ids; sparse inputs are
single texts. Neither is the export's validation text. Tolerance: 1e-4 absolute on logits and SPLADE weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

from model import CheckpointError
from model.task_checkpoint import detect_task, load_task_checkpoint
from tests.families.task_builders import CLASSIFIER_LABELS, EXPECTED_TASK, task_checkpoint

TOLERANCE = 1e-4
PAIRS = [
    ("how do rotary embeddings work", "Rotary position embeddings rotate queries and keys by an angle."),
    ("capital of japan", "Tokyo is the capital of Japan and its largest city by far."),
    ("pizza", "I love pizza 🍕 and coffee ☕"),
    ("what does a sentence embedding contain, and how is it pooled from the tokens of a long passage?",
     "A sentence embedding is the pooled output of a transformer encoder over all of its tokens. " * 3),
    ("SELECT name FROM users", "the the the a a a"),
]
TEXTS = ["search engines rank documents", "Café crème à Zürich", "a",
         "Local attention only looks at a window of nearby tokens, while global attention sees everything.",
         "ERROR 404 at https://example.com/path?q=1"]


def _root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "task-checkpoints"


@pytest.fixture(scope="module", params=["bert-reranker", "xlm-roberta-reranker", "modernbert-reranker",
                                        "bert-classifier", "distilbert-classifier"])
def classifier_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return task_checkpoint(request.param, _root(tmp_path_factory))


@pytest.fixture(scope="module", params=["bert-splade", "distilbert-splade"])
def splade_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return task_checkpoint(request.param, _root(tmp_path_factory))


def _pair_batch(directory: Path) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return dict(tokenizer([q for q, _ in PAIRS], [d for _, d in PAIRS], padding=True, truncation=True,
                          max_length=96, return_tensors="pt"))


def test_detected_task_labels_and_logits_match_transformers(classifier_dir: Path) -> None:
    assert detect_task(classifier_dir) == EXPECTED_TASK[classifier_dir.name]
    loaded = load_task_checkpoint(classifier_dir)
    if loaded.task == "classify":
        assert loaded.labels == tuple(CLASSIFIER_LABELS[i] for i in range(3))
        assert loaded.score_activation == "softmax"
    else:
        assert len(loaded.labels) == 1
        assert loaded.score_activation == "sigmoid"
    batch = _pair_batch(classifier_dir)
    if "token_type_ids" in batch and loaded.config.uses_token_types:
        assert batch["token_type_ids"].max() == 1, "pairs must carry segment B ids"
    reference = AutoModelForSequenceClassification.from_pretrained(classifier_dir, attn_implementation="eager")
    with torch.no_grad():
        want = reference.eval()(**batch).logits
        got = loaded.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).logits
    assert got.shape == (len(PAIRS), len(loaded.labels))
    diff = (got - want).abs().max().item()
    assert diff <= TOLERANCE, f"{classifier_dir.name}: logits differ by {diff:.2e}"
    assert want.std() > 0.05, "the pairs must not all score the same (a meaningless fixture)"


def test_cross_encoder_predict_matches(tmp_path_factory: pytest.TempPathFactory) -> None:
    from sentence_transformers import CrossEncoder

    directory = task_checkpoint("bert-reranker", _root(tmp_path_factory))
    loaded = load_task_checkpoint(directory)
    scores = CrossEncoder(str(directory), device="cpu").predict(PAIRS, activation_fn=torch.nn.Identity(),
                                                                batch_size=2)
    batch = _pair_batch(directory)
    with torch.no_grad():
        ours = loaded.model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).logits[:, 0]
    diff = float(np.abs(np.asarray(scores) - ours.numpy()).max())
    assert diff <= TOLERANCE, f"CrossEncoder.predict differs by {diff:.2e}"


def test_splade_matches_sparse_encoder_and_masked_lm(splade_dir: Path) -> None:
    from sentence_transformers import SparseEncoder

    loaded = load_task_checkpoint(splade_dir)
    assert loaded.task == "sparse"
    assert loaded.sparse is not None
    reference = SparseEncoder(str(splade_dir), device="cpu")
    want = reference.encode(TEXTS, convert_to_tensor=True, batch_size=2).to_dense().numpy()
    tokenizer = AutoTokenizer.from_pretrained(splade_dir)
    batch = dict(tokenizer(TEXTS, padding=True, truncation=True, max_length=96, return_tensors="pt"))
    with torch.no_grad():
        dense, _, _ = loaded.model.sparse_embedding(batch["input_ids"], batch["attention_mask"],
                                                    batch.get("token_type_ids"))
        top = loaded.model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                           torch.tensor([25]))
        mlm = AutoModelForMaskedLM.from_pretrained(splade_dir, attn_implementation="eager").eval()
        logits = mlm(**batch).logits
    got = dense.numpy()
    assert (want > 0).sum(axis=1).min() > 5, "the fixture's vectors must have several nonzero weights"
    np.testing.assert_array_equal(np.nonzero(got > TOLERANCE), np.nonzero(want > TOLERANCE))
    assert float(np.abs(got - want).max()) <= TOLERANCE
    by_hand = torch.log1p(torch.relu(logits * batch["attention_mask"][..., None])).max(dim=1).values
    assert float((dense - by_hand).abs().max()) <= TOLERANCE
    # top_k: the 25 largest weights, descending, at their vocabulary ids.
    rows = np.arange(len(TEXTS))[:, None]
    np.testing.assert_allclose(want[rows, top.sparse_indices.numpy()], top.sparse_values.numpy(), atol=TOLERANCE)
    np.testing.assert_allclose(top.sparse_values.numpy(), -np.sort(-want, axis=1)[:, :25], atol=TOLERANCE)


def test_partial_head_is_refused(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    """A classifier whose head weights are missing, or the wrong task for the weights, names file and key."""
    import shutil

    from safetensors.torch import load_file, save_file

    source = task_checkpoint("bert-classifier", _root(tmp_path_factory))
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    state = load_file(str(broken / "model.safetensors"))
    del state["bert.pooler.dense.bias"]
    save_file(state, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing head key 'bert\.pooler\.dense\.bias'"):
        load_task_checkpoint(broken)
    with pytest.raises(CheckpointError, match=r"missing head key 'cls\.predictions\.transform\.dense\.weight'"):
        load_task_checkpoint(source, "sparse")
    with pytest.raises(CheckpointError, match="has 3"):
        load_task_checkpoint(source, "rerank")
