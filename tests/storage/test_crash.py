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


def _kill_after(proc: subprocess.Popen[str], delay_s: float) -> list[tuple[str, str, str]]:
    """SIGKILL after `delay_s`; the driver's lines as (begin|done, op, name)."""
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    return [(w[0], w[1], w[2]) for w in (line.split() for line in out.splitlines()) if w]


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
    for _ in range(NUM_IMPORT_KILLS):
        proc = _start("import", str(home), str(src), "m")
        acked, _ = _split(_kill_after(proc, rng.uniform(0, duration_s * 1.2)))
        storage = _open(home)  # "restart": start-up cleanup runs here
        registry = Registry(storage)
        assert _temps(home) == []
        if registry.exists("m"):
            outcomes["complete"] += 1
            assert [r.is_ok for r in registry.verify("m")] == [True]
            assert registry.resolve("m").read_bytes() == src.read_bytes()
            registry.remove("m")
        else:
            assert acked == []
            outcomes["absent"] += 1
        storage.gc()
        assert storage.disk_usage_bytes() == baseline
        assert storage.db.integrity_check() == "ok"
        storage.close()
    print(f"import kills: {outcomes}, import takes {duration_s:.2f}s")


def test_kill_during_writer_loop_keeps_every_acknowledged_operation(tmp_path):
    home = tmp_path / "home"
    files = tmp_path / "files"
    files.mkdir()
    for i in range(6):
        write_gguf(files / f"m{i}.gguf", num_tensors=2, elements=1 << 16, seed=i)
    write_chat_jsonl(files / "data.jsonl", 50)
    rng = random.Random(99)
    total_acked = 0
    for round_idx in range(NUM_WRITER_KILLS):
        proc = _start("writer", str(home), str(files), f"r{round_idx}")
        # The operation in flight at the kill may have taken effect without its acknowledgement
        # (e.g. a remove committed just before the kill): its target may be either way, but
        # must be whole if present. Every acknowledged operation must hold.
        acked, in_flight = _split(_kill_after(proc, rng.uniform(0.2, 2.0)))
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
    print(f"writer kills: {NUM_WRITER_KILLS}, acknowledged operations checked: {total_acked}")
