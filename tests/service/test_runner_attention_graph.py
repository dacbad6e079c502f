"""EMBED_ATTENTION_GRAPH: the attention-map graph built at start-up (eager), on the first attention batch (lazy,
the default) or never (off), with the same numbers whichever way it was built."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from service.artifacts import load_manifest
from service.errors import ProviderError
from service.runner import ATTENTION, EMBED, OnnxRunner
from service.settings import Settings

ROWS = [np.asarray([101, 2023, 2003, 1037, 3231, 102], dtype=np.int64), np.asarray([101, 7592, 102], dtype=np.int64)]


def _runner(artifact: Path, mode: str) -> OnnxRunner:
    settings = Settings(artifact_dir=artifact, attention_graph=mode, intra_op_threads=1)
    return OnnxRunner(load_manifest(artifact), settings)


def test_lazy_is_the_default_and_builds_on_first_attention_batch(tiny_artifact_dir: Path) -> None:
    assert Settings().attention_graph == "lazy"
    lazy, eager = _runner(tiny_artifact_dir, "lazy"), _runner(tiny_artifact_dir, "eager")
    assert ATTENTION in lazy.graphs
    assert ATTENTION not in lazy.loaded_graphs
    assert ATTENTION in eager.loaded_graphs
    lazy.execute(lazy.prepare(EMBED, ROWS))
    assert ATTENTION not in lazy.loaded_graphs, "an embedding batch must not build the attention graph"

    got = lazy.execute(lazy.prepare(ATTENTION, ROWS))
    want = eager.execute(eager.prepare(ATTENTION, ROWS))
    assert ATTENTION in lazy.loaded_graphs
    for g, w, row in zip(got, want, ROWS, strict=True):
        assert g.attentions is not None
        assert g.attentions.shape[-1] == len(row)
        np.testing.assert_array_equal(g.attentions, w.attentions)
        np.testing.assert_array_equal(g.embedding, w.embedding)


def test_lazy_build_happens_once_under_concurrent_first_use(tiny_artifact_dir: Path) -> None:
    runner = _runner(tiny_artifact_dir, "lazy")
    sessions = []

    def first_use() -> None:
        sessions.append(runner._session(ATTENTION))

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(s) for s in sessions}) == 1


def test_off_means_no_attention_graph(tiny_artifact_dir: Path) -> None:
    runner = _runner(tiny_artifact_dir, "off")
    assert ATTENTION not in runner.graphs
    with pytest.raises(ValueError, match="unknown graph"):
        runner.prepare(ATTENTION, ROWS)


def test_lazy_still_refuses_a_manifest_without_the_attention_output_at_start(tiny_artifact_dir: Path) -> None:
    manifest = load_manifest(tiny_artifact_dir)
    spec = manifest.graphs["attention"]
    without = dataclasses.replace(spec, outputs=tuple(o for o in spec.outputs if o != "attentions"))
    broken = dataclasses.replace(manifest, graphs={**manifest.graphs, "attention": without})
    with pytest.raises(ProviderError, match="attentions"):
        OnnxRunner(broken, Settings(artifact_dir=tiny_artifact_dir, intra_op_threads=1))
