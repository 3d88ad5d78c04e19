"""What the program loader and the driver report to the event log (a real EventLog on SQLite):
loads, failed loads, evictions with their reason, and one preemption storm per storm. Tiny random
llamas with SmolLM2's tokenizer, real engines, a real driver thread."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llmos.config import KernelConfig, MemoryConfig
from llmos.errors import ModelNotResident
from llmos.kernel.engine import Engine
from llmos.kernel.loop import EngineLoop
from llmos.kernel.params import SamplingParams
from llmos.kernel.residency import Residency
from llmos.monitor.eventlog import EventLog
from llmos.monitor.events import Event, PreemptionStorms
from llmos.storage.db import Database
from tests.kernel.test_residency import PROMPT, Sink, TinySource, make_engine
from tests.kernel.tiny import tiny_llama


@pytest.fixture
def tokenizer(smollm2_files):  # type: ignore[no-untyped-def]
    return smollm2_files.tokenizer


@pytest.fixture
def events(tmp_path: Path) -> Iterator[EventLog]:
    db = Database(f"sqlite:///{tmp_path / 'llmos.db'}")
    log = EventLog(db)
    yield log
    log.close()
    db.dispose()


@pytest.fixture
def loop() -> Iterator[EngineLoop]:
    loop = EngineLoop(max_running=8, max_waiting=8)
    loop.start()
    yield loop
    loop.stop()


def _read(events: EventLog, **filters: str) -> list[Event]:
    assert events.flush()
    return events.read(limit=1000, **filters).events  # type: ignore[arg-type]


def test_loads_failures_and_evictions_are_reported_with_their_reason(
    loop: EngineLoop,
    tokenizer,  # type: ignore[no-untyped-def]
    events: EventLog,
) -> None:
    residency = Residency(loop, TinySource(tokenizer), max_resident=1, events=events)
    try:
        residency.adopt(make_engine(tokenizer, "a", loop.pids), is_reloadable=True)
        residency.load("b")  # room for one model: a goes
        with pytest.raises(ModelNotResident):
            residency.load("broken")  # fails its check: b stays
        assert residency.unload("b")
        got = [(e.kind, e.model) for e in _read(events)]
        assert got == [
            ("model_loaded", "a"),
            ("model_evicted", "a"),
            ("model_loaded", "b"),
            ("model_load_failed", "broken"),
            ("model_evicted", "b"),
        ]
        start, lru, loaded, failed, unload = _read(events)
        assert "started with" in start.message
        assert lru.details["reason"] == "lru" and lru.details["for_model"] == "b"
        assert lru.details["idle_s"] >= 0 and "to make room for b" in lru.message
        assert loaded.details["load_s"] > 0
        assert failed.severity == "error" and "corrupted" in failed.message
        assert failed.details["code"] == "model_unavailable"
        assert unload.details["reason"] == "unload" and unload.severity == "info"
    finally:
        residency.close()


def test_a_preemption_storm_is_one_event(tokenizer, events: EventLog) -> None:  # type: ignore[no-untyped-def]
    # 8 KV blocks of 16 tokens (64 KiB; 4 KV heads of 16 fp32 dims: 8 KiB a block): each process needs 8 blocks by its end, so 4 of them at once
    # preempt each other over and over (recompute: no swap).
    engine = Engine(
        tiny_llama(tokenizer.vocab_size, seed=1, hidden=64, intermediate=64, layers=1, heads=4,
                   kv_heads=4, max_positions=512),
        tokenizer,
        model_name="storm",
        kernel=KernelConfig(max_model_len=512),
        memory=MemoryConfig(kv_cache_bytes=64 << 10, swap_bytes=0, block_size=16),
    )  # fmt: skip
    assert engine.stats().kv_blocks_total == 8
    loop = EngineLoop(engine, max_running=8, max_waiting=8)
    loop.preemption_storms = PreemptionStorms(events, threshold=3, window_s=3600.0)
    loop.storm_check_s = 0.0  # sample every round: the run is shorter than a second
    loop.start()
    try:
        sink = Sink()
        params = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)
        pids = loop.submit([(PROMPT, params)] * 4, sink)
        sink.wait(pids)
        assert [sink.reason(p) for p in pids] == ["length"] * 4
        num_preemptions = loop.stats().num_preemptions
    finally:
        loop.stop()
    assert num_preemptions >= 6  # the setup really storms
    storms = _read(events, kind="preemption_storm")
    assert len(storms) == 1  # one event for the storm, not one per preemption
    assert storms[0].model == "storm" and storms[0].severity == "warning"
    assert 3 <= storms[0].details["num_preemptions"] <= num_preemptions
