"""Crash safety: SIGKILL an import or a writer loop at random points (fixed seed), restart, and
check that nothing half-written is visible, nothing acknowledged is lost, and gc returns the disk
to its baseline. SQLite only (integrity_check); the page cache survives a process kill, so this
catches ordering bugs and non-atomic writes, not missing fsyncs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from llmos.config import StorageConfig
from llmos.storage.datasets import Datasets
from llmos.storage.layout import TEMP_PREFIX
from llmos.storage.registry import Registry
from llmos.storage.store import Storage
from tests.storage.helpers import write_chat_jsonl, write_gguf

DRIVER = Path(__file__).with_name("crash_driver.py")
NUM_IMPORT_KILLS = 20
NUM_WRITER_KILLS = 4


def _start(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(DRIVER), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # a killed driver may leave a half-written traceback
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    assert first == "ready", f"driver failed to start (rc={proc.poll()}): {first!r}"
    return proc


def _parse(text: str) -> list[tuple[str, str, str]]:
    return [(w[0], w[1], w[2]) for w in (line.split() for line in text.splitlines()) if w]


def _kill_when(
    proc: subprocess.Popen[str], *, num_acked: int, delay_s: float, into_next: bool = True
) -> list[tuple[str, str, str]]:
    """SIGKILL once the driver has acknowledged `num_acked` operations (and, with `into_next`,
    announced the next one), `delay_s` later; the driver's lines as (begin|done, op, name)."""
    assert proc.stdout is not None
    lines: list[tuple[str, str, str]] = []

    def waiting() -> bool:
        if sum(kind == "done" for kind, _, _ in lines) < num_acked:
            return True
        return into_next and (not lines or lines[-1][0] != "begin")

    while waiting():
        line = proc.stdout.readline()
        assert line, f"driver ended early (rc={proc.wait()}) after {lines}"
        lines += _parse(line)
    time.sleep(delay_s)  # where in the operation the kill lands; nothing asserts on time
    proc.send_signal(signal.SIGKILL)
    return lines + _parse(proc.communicate()[0])


def _split(
    lines: list[tuple[str, str, str]],
) -> tuple[list[tuple[str, str]], tuple[str, str] | None]:
    """(operations acknowledged, in order; the one operation begun but not acknowledged)."""
    done = [(op, name) for kind, op, name in lines if kind == "done"]
    begun = [(op, name) for kind, op, name in lines if kind == "begin"]
    in_flight = begun[-1] if len(begun) > len(done) else None
    return done, in_flight


def _temps(home: Path) -> list[str]:
    return [str(p) for p in home.rglob(f"{TEMP_PREFIX}*")]


def _open(home: Path) -> Storage:
    return Storage(StorageConfig(data_dir=home))


def test_kill_during_import_leaves_model_absent_or_complete(tmp_path):
    home = tmp_path / "home"
    src = write_gguf(tmp_path / "big.gguf", num_tensors=8, elements=1 << 19)  # 16 MiB
    baseline = _open(home).disk_usage_bytes()
    # One uninterrupted run measures how long the import takes here.
    proc = _start("import", str(home), str(src), "m")
    t0 = time.perf_counter()
    assert proc.communicate()[0].split() == ["begin", "import", "m", "done", "import", "m"]
    duration_s = time.perf_counter() - t0
    storage = _open(home)
    Registry(storage).remove("m")
    storage.gc()
    rng = random.Random(1234)
    outcomes = {"absent": 0, "complete": 0}
    num_acked = 0
    for kill_idx in range(NUM_IMPORT_KILLS):
        proc = _start("import", str(home), str(src), "m")
        if kill_idx % 4 == 3:  # right after the acknowledgement: the import must survive
            acked, _ = _split(_kill_when(proc, num_acked=1, delay_s=0, into_next=False))
            assert acked == [("import", "m")]
        else:
            acked, _ = _split(_kill_when(proc, num_acked=0, delay_s=rng.uniform(0, duration_s)))
        num_acked += len(acked)
        storage = _open(home)  # "restart": start-up cleanup runs here
        registry = Registry(storage)
        assert _temps(home) == []
        if acked:
            assert registry.exists("m"), "an acknowledged import was lost"
        if registry.exists("m"):
            outcomes["complete"] += 1
            assert [r.is_ok for r in registry.verify("m")] == [True]
            assert registry.resolve("m").read_bytes() == src.read_bytes()
            registry.remove("m")
        else:
            outcomes["absent"] += 1
        storage.gc()
        assert storage.disk_usage_bytes() == baseline
        assert storage.db.integrity_check() == "ok"
        storage.close()
    assert num_acked >= NUM_IMPORT_KILLS // 4
    print(f"import kills: {outcomes}, acknowledged: {num_acked}, import takes {duration_s:.2f}s")


def test_kill_during_writer_loop_keeps_every_acknowledged_operation(tmp_path):
    home = tmp_path / "home"
    files = tmp_path / "files"
    files.mkdir()
    for i in range(6):
        write_gguf(files / f"m{i}.gguf", num_tensors=2, elements=1 << 16, seed=i)
    write_chat_jsonl(files / "data.jsonl", 50)
    rng = random.Random(99)
    total_acked = 0
    min_acked = 0
    for round_idx in range(NUM_WRITER_KILLS):
        proc = _start("writer", str(home), str(files), f"r{round_idx}")
        # Kill once a random number of operations were acknowledged, somewhere inside the next.
        # The operation in flight at the kill may have taken effect without its acknowledgement
        # (e.g. a remove committed just before the kill): its target may be either way, but
        # must be whole if present. Every acknowledged operation must hold.
        want = rng.randint(1, 10)
        lines = _kill_when(proc, num_acked=want, delay_s=rng.uniform(0, 0.2))
        acked, in_flight = _split(lines)
        assert len(acked) >= want, lines
        min_acked += want
        storage = _open(home)
        registry, datasets = Registry(storage), Datasets(storage)
        assert storage.db.integrity_check() == "ok", acked
        assert _temps(home) == [], acked
        expected: dict[str, bool] = {}  # model name -> present, after every acked operation
        for op, name in acked:
            if op == "data":
                assert datasets.show(name).num_records == 50, acked
            else:
                expected[name] = op != "rm"
        if in_flight is not None and in_flight[0] != "data":
            expected.pop(in_flight[1], None)  # either way
            if registry.exists(in_flight[1]):
                assert [r.is_ok for r in registry.verify(in_flight[1])] == [True], in_flight
        for name, present in expected.items():
            assert registry.exists(name) == present, (name, acked, in_flight)
            if present:
                assert [r.is_ok for r in registry.verify(name)] == [True], (name, acked)
        total_acked += len(acked)
        storage.close()
    storage = _open(home)
    storage.gc()
    referenced = storage.referenced_digests()
    assert storage.blobs.digests() == referenced
    assert total_acked >= min_acked >= NUM_WRITER_KILLS
    print(f"writer kills: {NUM_WRITER_KILLS}, acknowledged operations checked: {total_acked}")
