"""Malformed and hostile model files are refused in bounded work and memory, writing nothing.

"Bounded work" is counted, not timed: the refusal may execute at most `MAX_LINES` Python lines
(a trace hook counts them and aborts past the budget), so a parser that believes a header's
2^60 count and starts looping fails at once, on any machine, however fast."""

from __future__ import annotations

import json
import os
import struct
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from types import FrameType

import pytest

from llmos.errors import InvalidModelFile, LlmosError
from tests.storage.helpers import write_gguf, write_hf_folder, write_safetensors

MAX_LINES = 20_000  # the costliest refusal runs ~2,400 lines
MAX_PEAK_BYTES = 16 << 20


class _OverBudget(BaseException):
    """Raised from the trace hook; a BaseException so `except Exception` in the code under test
    cannot swallow it."""


class _LineBudget:
    """Counts the Python lines run in this thread while active; raises past `limit`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.num_lines = 0

    def _trace(self, frame: FrameType, event: str, arg: object) -> Callable[..., object] | None:
        if event == "line":
            self.num_lines += 1
            if self.num_lines > self.limit:
                raise _OverBudget(f"more than {self.limit} lines run")
        return self._trace

    def __enter__(self) -> _LineBudget:
        sys.settrace(self._trace)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.settrace(None)


def _gguf_prefix(num_tensors: int, num_kv: int, version: int = 3) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, num_tensors, num_kv)


def _huge_string_kv() -> bytes:
    key = b"general.architecture"
    return _gguf_prefix(0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, 1 << 60)


def _huge_array_kv() -> bytes:
    key = b"tokenizer.ggml.tokens"
    return (
        _gguf_prefix(0, 1) + struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 1 << 40)
    )


def _gguf_cases(tmp: Path) -> dict[str, bytes]:
    good = write_gguf(tmp / "good.gguf").read_bytes()
    return {
        "empty": b"",
        "garbage": os.urandom(4096),
        "bad magic": b"GGUX" + good[4:],
        "bad version": b"GGUF" + struct.pack("<I", 99) + good[8:],
        "2^60 tensors": _gguf_prefix(1 << 60, 0) + b"\0" * 64,
        "2^60 kv": _gguf_prefix(0, 1 << 60) + b"\0" * 64,
        "2^60-byte string": _huge_string_kv() + b"\0" * 64,
        "2^40-item array": _huge_array_kv() + b"\0" * 64,
        "truncated header": good[:200],
        "truncated data": good[: len(good) // 2],
    }


def _st_header(n: int, body: bytes) -> bytes:
    return struct.pack("<Q", n) + body


def _safetensors_cases() -> dict[str, bytes]:
    ok = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}

    def st(header: dict, data: bytes = b"\0" * 8) -> bytes:
        raw = json.dumps(header).encode()
        return _st_header(len(raw), raw) + data

    return {
        "short": b"\x01\x02",
        "header claims 2^60": _st_header(1 << 60, b"{}"),
        "header beyond file": _st_header(10_000, b"{}"),
        "not json": _st_header(4, b"\xff\xfe{{"),
        "not an object": st([1, 2]),  # type: ignore[arg-type]
        "offsets beyond data": st(
            {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b""
        ),
        "overlap": st(
            {**ok, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12
        ),
        "dtype/shape mismatch": st({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}),
        "unknown dtype": st({"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}),
        "huge shape": st(
            {"a": {"dtype": "F32", "shape": [1 << 40, 1 << 40], "data_offsets": [0, 8]}}
        ),
    }


def _assert_refused_fast(registry, storage, source, name="bad"):
    tracemalloc.start()
    try:
        with _LineBudget(MAX_LINES) as budget, pytest.raises(LlmosError) as e:
            registry.import_model(source, name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert budget.num_lines <= MAX_LINES
    assert peak < MAX_PEAK_BYTES, f"peak {peak} bytes"
    assert os.listdir(storage.layout.blobs) == [] and registry.list() == []
    return e.value


def test_bad_gguf_files_are_refused(registry, storage, tmp_path):
    for label, data in _gguf_cases(tmp_path).items():
        path = tmp_path / "bad.gguf"
        path.write_bytes(data)
        err = _assert_refused_fast(registry, storage, path)
        assert isinstance(err, InvalidModelFile), (label, err)
        assert "bad.gguf" in err.message, (label, err.message)


def test_bad_safetensors_headers_are_refused(registry, storage, tmp_path):
    for label, data in _safetensors_cases().items():
        folder = write_hf_folder(tmp_path / "hf")
        (folder / "model.safetensors").write_bytes(data)
        err = _assert_refused_fast(registry, storage, folder)
        assert isinstance(err, InvalidModelFile), label
        assert "safetensors" in err.message, (label, err.message)


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pt", "weights.pth", "x.ckpt"])
def test_pickle_files_are_refused_without_being_opened(registry, storage, tmp_path, filename):
    opened: list[str] = []
    pickle = tmp_path / filename
    pickle.write_bytes(b"\x80\x04 not really a pickle")
    _record_opens(opened)
    try:
        err = _assert_refused_fast(registry, storage, pickle)
    finally:
        _AUDIT["on"] = False
    assert "safetensors" in str(err) and "GGUF" in str(err)
    assert str(pickle) not in opened


def test_a_folder_with_only_pickles_is_refused(registry, storage, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"x")
    err = _assert_refused_fast(registry, storage, folder)
    assert "pytorch_model.bin" in err.message and "safetensors" in str(err)


def test_a_bare_safetensors_file_is_refused(registry, storage, tmp_path):
    path = write_safetensors(tmp_path / "m.safetensors", {"a": ("F32", [2])})
    assert "config.json" in str(_assert_refused_fast(registry, storage, path))


_AUDIT: dict[str, object] = {"on": False}


def _record_opens(out: list[str]) -> None:
    _AUDIT["on"] = True
    _AUDIT["out"] = out
    if not _AUDIT.get("installed"):
        _AUDIT["installed"] = True

        def hook(event: str, args: tuple) -> None:
            if _AUDIT["on"] and event == "open" and isinstance(args[0], str | Path):
                _AUDIT["out"].append(str(args[0]))  # type: ignore[union-attr]

        sys.addaudithook(hook)


def test_names_never_open_files_outside_the_data_dir(registry, storage, tmp_path):
    opened: list[str] = []
    _record_opens(opened)
    try:
        for name in ["../../etc/passwd", "/etc/passwd", "a/../../../b"]:
            with pytest.raises(LlmosError):
                registry.show(name)
            with pytest.raises(LlmosError):
                registry.resolve(name)
    finally:
        _AUDIT["on"] = False
    assert not [p for p in opened if "passwd" in p or not p.startswith(str(tmp_path))]
