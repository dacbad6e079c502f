"""Padded-width bucketing in the runner (same numbers, fewer shapes), the batcher's failed-batch streak that
readiness trips on, the fault hook's marker matching, and the log escaping."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from service.artifacts import load_manifest
from service.batching import Batcher, BatcherConfig, BatchItem
from service.faults import FAULT_MARKERS, FaultInjectingRunner, InjectedFault
from service.logs import EscapingFormatter, escape
from service.runner import EMBED, TOKENS, OnnxRunner
from service.settings import Settings
from service.tokenizer import TextTokenizer, TruncationPolicy


def _runner(artifact: Path, multiple: int) -> OnnxRunner:
    settings = Settings(artifact_dir=artifact, pad_to_multiple=multiple, intra_op_threads=1)
    return OnnxRunner(load_manifest(artifact), settings)


def _tokenizer(artifact: Path) -> TextTokenizer:
    manifest = load_manifest(artifact, verify=False)
    return TextTokenizer(manifest.tokenizer_path, max_length=manifest.max_seq_length, max_chars=5000)


def test_padded_width_rounds_up_within_the_window(tiny_artifact_dir: Path) -> None:
    runner = _runner(tiny_artifact_dir, 16)
    window = runner.manifest.max_seq_length
    assert [runner.padded_width(n) for n in (1, 16, 17, window - 1, window)] == [16, 16, 32, window, window]
    rows = [np.arange(101, 101 + n, dtype=np.int64) for n in (3, 21)]
    (chunk,) = runner.prepare(EMBED, rows).chunks
    assert chunk.feeds["input_ids"].shape == (2, 32)
    assert chunk.feeds["attention_mask"].sum(axis=1).tolist() == [3, 21]


def test_bucketed_padding_gives_the_same_vectors(tiny_artifact_dir: Path) -> None:
    exact, bucketed = _runner(tiny_artifact_dir, 1), _runner(tiny_artifact_dir, 16)
    rng = np.random.default_rng(0)
    rows = [np.concatenate([[101], rng.integers(1000, 20000, n - 2), [102]]).astype(np.int64) for n in (5, 9, 19, 33)]
    for graph in (EMBED, TOKENS):
        for alone_rows in ([r] for r in rows):  # every row alone, at its own width vs rounded up
            a = exact.execute(exact.prepare(graph, alone_rows))[0]
            b = bucketed.execute(bucketed.prepare(graph, alone_rows))[0]
            np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-5)
            if graph == TOKENS:
                np.testing.assert_allclose(a.token_embeddings, b.token_embeddings, atol=1e-5)
        together = bucketed.execute(bucketed.prepare(graph, rows))
        for row, result in zip(rows, together, strict=True):
            alone = exact.execute(exact.prepare(graph, [row]))[0]
            np.testing.assert_allclose(alone.embedding, result.embedding, atol=1e-5)


def test_failed_batch_streak_counts_and_resets(tiny_artifact_dir: Path) -> None:
    runner = _runner(tiny_artifact_dir, 8)
    tokenizer = _tokenizer(tiny_artifact_dir)
    faulty = FaultInjectingRunner(runner, tokenizer, duration_s=0.0)

    def ids(text: str) -> np.ndarray:
        return tokenizer.encode_batch([text], TruncationPolicy())[0].ids

    async def scenario() -> list[int]:
        batcher = Batcher(faulty, BatcherConfig(max_wait_ms=0))
        await batcher.start()
        seen = []
        try:
            for text in [f"bad {FAULT_MARKERS['raise']}"] * 3 + ["good text", f"x {FAULT_MARKERS['raise']}"]:
                with batcher.try_admit(1) as admission:
                    await batcher.submit(admission, [BatchItem(ids(text))])
                seen.append(batcher.consecutive_failed_batches)
        finally:
            await batcher.stop(timeout_s=5)
        return seen

    assert asyncio.run(scenario()) == [1, 2, 3, 0, 1]


def test_fault_markers_match_whole_token_runs_only(tiny_artifact_dir: Path) -> None:
    tokenizer = _tokenizer(tiny_artifact_dir)
    faulty = FaultInjectingRunner(_runner(tiny_artifact_dir, 8), tokenizer, duration_s=0.0)

    def prepare(text: str) -> object:
        return faulty.prepare(EMBED, [tokenizer.encode_batch([text], TruncationPolicy())[0].ids])

    with pytest.raises(InjectedFault):
        faulty.execute(prepare(f"some text {FAULT_MARKERS['raise']} more"))
    assert len(faulty.execute(prepare("zz fault raise zz, a normal text"))) == 1


def test_log_messages_are_escaped_but_tracebacks_keep_newlines() -> None:
    assert escape("a\x1b[31mb\u202ec\nd\x00") == "a\\x1b[31mb\\u202ec\\nd\\x00"
    assert escape("plain ünïcödé 中文") == "plain ünïcödé 中文"
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "path %s", ("/x\x1b[2J\n",), sys.exc_info())
    text = formatter.format(record)
    first, *rest = text.split("\n")
    assert first == "ERROR path /x\\x1b[2J\\n"
    assert rest
    assert "Traceback" in rest[0]
