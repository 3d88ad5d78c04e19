"""The program loader and the one-thread driver over several engines: tiny random llamas with
SmolLM2's tokenizer, real engines, a real driver thread.

Covers: pids unique across engines and `kill` finding the right one; one load for concurrent
requests; a model that fails its check evicts nothing and its error is clear; LRU unloading of
idle models only; models with live processes or that cannot be reloaded stay resident.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from llmos.config import KernelConfig, MemoryConfig
from llmos.errors import Conflict, ModelCorrupted, ModelNotResident, NotFound, Overloaded
from llmos.kernel.engine import Engine
from llmos.kernel.loop import EngineLoop
from llmos.kernel.outputs import ProcessOutput
from llmos.kernel.params import SamplingParams
from llmos.kernel.residency import Residency
from tests.kernel.tiny import tiny_llama

PROMPT = list(range(1000, 1016))


class TinySource:
    """A model source of tiny engines: `broken` fails its check, `gate` holds loads back."""

    def __init__(self, tokenizer, names: tuple[str, ...] = ("a", "b", "c")) -> None:  # type: ignore[no-untyped-def]
        self.tokenizer = tokenizer
        self.names = set(names) | {"broken"}
        self.num_loads: dict[str, int] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.loading = threading.Event()

    def find(self, name: str) -> str | None:
        return name if name in self.names else None

    def check(self, model_id: str) -> None:
        if model_id == "broken":
            raise ModelCorrupted(
                f"model {model_id}:latest is corrupted: its file w.gguf does not match its sha256",
                hint=f"re-import it: llmos models import pkg:x --name {model_id}",
            )
        if model_id not in self.names:
            raise NotFound(f"model {model_id} not found")

    def load_bytes(self, model_id: str) -> int:
        return 0  # no memory budget in these tests (tests/api/test_memory_budget.py has one)

    def load(self, model_id: str, pids: Iterator[int]) -> Engine:
        self.loading.set()
        assert self.gate.wait(30)
        self.num_loads[model_id] = self.num_loads.get(model_id, 0) + 1
        return make_engine(self.tokenizer, model_id, pids)


def make_engine(tokenizer, name: str, pids: Iterator[int] | None = None) -> Engine:  # type: ignore[no-untyped-def]
    return Engine(
        tiny_llama(
            tokenizer.vocab_size,
            seed=len(name),
            hidden=32,
            intermediate=64,
            layers=1,
            heads=2,
            kv_heads=1,
            max_positions=4096,
        ),
        tokenizer,
        model_name=name,
        kernel=KernelConfig(max_model_len=4096),
        memory=MemoryConfig(kv_cache_bytes=1 << 20, swap_bytes=0),
        pids=pids,
    )


class Sink:
    """Collects outputs per pid from the driver thread; `wait` until all have finished."""

    def __init__(self) -> None:
        self.outputs: dict[int, list[ProcessOutput]] = {}
        self.finished: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    def __call__(self, out: ProcessOutput) -> None:
        with self._lock:
            self.outputs.setdefault(out.pid, []).append(out)
            if out.finished:
                self.finished.setdefault(out.pid, threading.Event()).set()

    def wait(self, pids: list[int], timeout_s: float = 60) -> None:
        for pid in pids:
            with self._lock:
                event = self.finished.setdefault(pid, threading.Event())
            assert event.wait(timeout_s), f"pid {pid} did not finish"

    def reason(self, pid: int) -> str | None:
        return self.outputs[pid][-1].finish_reason


@pytest.fixture
def tokenizer(smollm2_files):  # type: ignore[no-untyped-def]
    return smollm2_files.tokenizer


@pytest.fixture
def loop() -> Iterator[EngineLoop]:
    loop = EngineLoop(max_running=8, max_waiting=8)
    loop.start()
    yield loop
    loop.stop()


def _submit(loop: EngineLoop, engine: Engine, sink: Sink, max_tokens: int = 4) -> int:
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    return loop.submit([(PROMPT, params)], sink, engine=engine)[0]


def test_one_thread_drives_many_engines_with_unique_pids(loop: EngineLoop, tokenizer) -> None:  # type: ignore[no-untyped-def]
    a, b = make_engine(tokenizer, "a", loop.pids), make_engine(tokenizer, "b", loop.pids)
    loop.add_engine(a)
    loop.add_engine(b)
    sink = Sink()
    pids = [_submit(loop, e, sink) for e in (a, b, a, b)]
    assert len(set(pids)) == 4
    long_pid = _submit(loop, b, sink, max_tokens=4000)
    assert {p.model for p in loop.processes() if p.pid == long_pid} == {"b"}
    assert loop.kill(long_pid)  # found in engine b, whatever engine a holds
    sink.wait([*pids, long_pid])
    assert [sink.reason(p) for p in pids] == ["length"] * 4
    assert sink.reason(long_pid) == "killed"
    assert all(len([o for o in sink.outputs[p] if o.new_token_ids]) == 4 for p in pids)
    assert loop.stats().model == "a, b" and loop.stats().num_finished == 5
    assert set(loop.snapshot()) == {"a", "b"}
    assert loop.num_live == 0 and loop.remove_engine("a") is a
    with pytest.raises(ModelNotResident):
        _submit(loop, a, sink)


def test_concurrent_requests_load_a_model_once(loop: EngineLoop, tokenizer) -> None:  # type: ignore[no-untyped-def]
    source = TinySource(tokenizer)
    residency = Residency(loop, source, max_resident=2)
    source.gate.clear()
    first = residency.request("a")
    assert source.loading.wait(30)
    second = residency.request("a")
    assert second is first  # shared, not a second load
    source.gate.set()
    engine = first.result(60)
    assert residency.load("a") is engine and source.num_loads == {"a": 1}
    assert residency.resident_ids == ["a"] and loop.engine("a") is engine
    residency.close()


def test_a_broken_model_gets_a_clear_error_and_evicts_nothing(loop: EngineLoop, tokenizer) -> None:  # type: ignore[no-untyped-def]
    source = TinySource(tokenizer)
    residency = Residency(loop, source, max_resident=1)
    residency.adopt(make_engine(tokenizer, "a", loop.pids), is_reloadable=True)
    with ThreadPoolExecutor(2) as pool:  # two requests at once share the one failure
        futures = [pool.submit(residency.load, "broken") for _ in range(2)]
        errors = [f.exception(60) for f in futures]
    for err in errors:
        assert isinstance(err, ModelNotResident) and err.code == "model_unavailable"
        assert "'broken' could not be loaded" in err.message and "corrupted" in err.message
        assert "llmos models verify broken" in str(err.hint)
    assert source.num_loads == {} and residency.resident_ids == ["a"]
    sink = Sink()
    pid = _submit(loop, residency.pin("a"), sink)  # type: ignore[arg-type]
    residency.release("a")
    sink.wait([pid])
    assert sink.reason(pid) == "length"
    with pytest.raises(NotFound):
        residency.resolve("../etc/passwd")
    residency.close()


def test_lru_unloads_idle_models_only(loop: EngineLoop, tokenizer) -> None:  # type: ignore[no-untyped-def]
    source = TinySource(tokenizer)
    residency = Residency(loop, source, max_resident=2)
    a, b = residency.load("a"), residency.load("b")
    assert residency.pin("a") is a  # a is now the most recently used
    residency.release("a")
    sink = Sink()
    pid = _submit(loop, a, sink, max_tokens=4000)  # and busy: b must go instead
    residency.load("c")
    assert sorted(residency.resident_ids) == ["a", "c"] and loop.engine("b") is None
    with pytest.raises(Conflict):
        residency.unload("a")  # live process
    assert residency.pin("c") is not None  # c pinned by a request being admitted
    with pytest.raises(Overloaded) as busy:
        residency.load("b")
    assert busy.value.code == "models_busy"
    residency.release("c")
    loop.kill(pid)
    sink.wait([pid])
    assert residency.load("b") is not b  # loaded again, evicting the least recently used
    assert len(residency.resident_ids) == 2 and source.num_loads["b"] == 2
    done: list[str] = []
    assert residency.unload("b", then=lambda: done.append("removed")) is True
    assert done == ["removed"] and "b" not in residency.resident_ids
    residency.close()


def test_a_model_that_cannot_be_reloaded_is_never_unloaded(loop: EngineLoop, tokenizer) -> None:  # type: ignore[no-untyped-def]
    source = TinySource(tokenizer)
    residency = Residency(loop, source, max_resident=1)
    residency.adopt(
        make_engine(tokenizer, "start", loop.pids), aliases=["/x.gguf"], is_reloadable=False
    )
    assert residency.lookup("/x.gguf") == "start"
    with pytest.raises(Overloaded):
        residency.load("a")
    assert residency.resident_ids == ["start"]
    residency.close()


def test_check_open_refuses_before_a_load_when_draining(loop: EngineLoop) -> None:
    loop.check_open("a")  # open: no error
    loop.begin_drain()
    with pytest.raises(Overloaded) as refused:
        loop.check_open("a")
    assert refused.value.code == "shutting_down"
