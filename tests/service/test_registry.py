"""The model registry and the door with several models, on real Batchers over the fake runner of
test_batching.py: lookup by name, the capacity rule (refuse at the door only when every model would refuse),
the door's cost per refusal, EMBED_MODELS parsing, and the batcher's token budget on the padded width."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest

from service.api.shed import Door
from service.batching import Batcher, BatcherConfig
from service.errors import ModelNotFoundError, QueueFullError
from service.metrics import Metrics
from service.registry import ModelHandle, ModelLimits, ModelRegistry
from service.settings import ModelSpec, Settings, parse_model_specs
from tests.service.test_batching import FakeRunner, RecordingObserver, embed, run, started, tokens


def _handle(name: str, batcher: Batcher) -> ModelHandle:
    """A handle with a real batcher; the parts the registry never touches are left out."""
    none = cast(Any, None)
    return ModelHandle(name, none, none, none, batcher, none, ModelLimits(1, 1, batcher.max_queue_size), 0)


def test_lookup_by_name_default_and_unknown() -> None:
    a, b = Batcher(FakeRunner(), BatcherConfig()), Batcher(FakeRunner(), BatcherConfig())
    registry = ModelRegistry((_handle("a", a), _handle("b", b)))
    assert registry.get(None).name == "a"
    assert registry.get("b").batcher is b
    assert registry.names == ["a", "b"]
    assert len(registry) == 2
    with pytest.raises(ModelNotFoundError, match="a, b"):
        registry.get("c")


def test_door_refuses_only_when_every_model_would_and_stays_cheap() -> None:
    async def main() -> None:
        async with started(FakeRunner(), max_queue_size=2) as a, started(FakeRunner(), max_queue_size=3) as b, \
                started(FakeRunner(), max_queue_size=1) as c:
            registry = ModelRegistry((_handle("a", a), _handle("b", b), _handle("c", c)))
            door = Door(registry.check_capacity, lambda: True, Metrics())
            held = [a.try_admit(2), c.try_admit(1)]  # a and c are full, b is empty
            assert door.refusal() is None  # b can still take a request: the door cannot know which is named
            door.inside = 6  # as many let in as every queue together holds
            assert isinstance(door.refusal(), QueueFullError)
            door.inside = 0
            held.append(b.try_admit(3))
            refusal = door.refusal()
            assert isinstance(refusal, QueueFullError)
            assert refusal.retry_after_s > 0
            n = 20_000
            t0 = time.perf_counter()
            for _ in range(n):
                door.refusal()
            per_refusal_us = (time.perf_counter() - t0) / n * 1e6
            # A refusal is a few attribute reads per model, never a body read or an await: microseconds even on
            # a loaded CI box (measured ~5 µs per refusal here with three models, ~4 µs with one).
            assert per_refusal_us < 100, per_refusal_us
            for admission in held:
                admission.release()

    run(main)


def test_door_lets_everything_through_while_the_app_is_not_serving() -> None:
    calls: list[int] = []
    door = Door(lambda inside, small: calls.append(inside), lambda: False, Metrics())
    assert door.refusal() is None
    assert calls == []


def test_model_specs_parse_names_dirs_and_limits() -> None:
    specs = parse_model_specs("mini=artifacts/a, artifacts/b;max_queue_size=16;max_batch_tokens=512 ,")
    assert specs == [ModelSpec(Path("artifacts/a"), "mini"),
                     ModelSpec(Path("artifacts/b"), None, max_queue_size=16, max_batch_tokens=512)]
    for bad, message in (("a=", "no artifact directory"), ("a=x;speed=3", "unknown option"),
                         ("a=x;max_queue_size=many", "integer"), ("a=x;max_queue_size=0", ">= 1"), (" , ", "no model")):
        with pytest.raises(ValueError, match=message):
            parse_model_specs(bad)
    with pytest.raises(ValueError, match="more than once"):
        Settings(models="a=x,a=y")
    assert Settings(artifact_dir=Path("d"), served_model_name="n").model_specs() == [ModelSpec(Path("d"), "n")]
    assert Settings(models="x=d1,d2").model_specs()[1] == ModelSpec(Path("d2"))


def test_token_budget_counts_the_padded_width_the_runner_will_run() -> None:
    """Rows of 9 tokens padded to 16: a 64-token budget takes 4 of them, not 7 (7 x 16 = 112 would run)."""
    runner, observer = FakeRunner(), RecordingObserver()

    async def main() -> None:
        async with started(runner, observer, max_batch_tokens=64, max_wait_ms=20,
                           padded_width=lambda n: -(-n // 16) * 16) as batcher:
            runner.gate.clear()
            rows = [tokens(i, 9) for i in range(7)]
            task = embed(batcher, rows)
            runner.gate.set()
            await task

    run(main)
    assert [b[1] for b in observer.batches] == [4, 3]
    assert all(padded <= 64 for _, _, padded, _, _ in observer.batches)


def test_several_models_split_the_cores_unless_threads_are_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from service import registry

    monkeypatch.setattr(registry.os, "cpu_count", lambda: 8)
    assert registry.intra_op_threads_per_model(Settings(), 1) == 0  # one model: onnxruntime's own default
    assert registry.intra_op_threads_per_model(Settings(), 2) == 4
    assert registry.intra_op_threads_per_model(Settings(), 16) == 1
    assert registry.intra_op_threads_per_model(Settings(intra_op_threads=3), 2) == 3
