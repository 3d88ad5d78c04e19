"""Builds and loads the C kernels (csrc/: paged attention, the batch-invariant GEMM) on first use.

The shared library is compiled once per source version with the system C compiler into
`$XDG_CACHE_HOME/llmos/kernels/` (about a second) and loaded with ctypes, which releases the GIL
during the call. If no compiler is found, `load()` returns None and the caller falls back to the
pure-PyTorch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

_SOURCES = [Path(__file__).parent / "csrc" / name for name in ("paged_attention.c", "gemm.c")]
# -fopenmp links libgomp.so.1; inside a process that imported torch that is torch's own copy
# (same soname, already loaded), so the kernels share PyTorch's thread pool.
_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-fopenmp", "-Wall"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmos" / "kernels"


def library_path() -> Path:
    """Where the library built from these sources and flags lives (it may not exist yet)."""
    code = b"".join(src.read_bytes() for src in _SOURCES)
    digest = hashlib.sha256(code + " ".join(_FLAGS).encode()).hexdigest()
    return _cache_dir() / f"llmos_kernels-{digest[:16]}.so"


def compiler() -> str | None:
    """The C compiler the kernels are built with ($CC, else cc or gcc on PATH), if any."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def build(target: Path) -> None:
    """Compile the kernels into `target` (atomically); raises when they do not compile."""
    compiler_path = compiler()
    if compiler_path is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        subprocess.run(
            [compiler_path, *_FLAGS, *map(str, _SOURCES), "-o", str(out), "-lm"],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        os.replace(out, target)  # atomic: concurrent builders never see a half-written file


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, building it if needed; None when it cannot be built."""
    global _lib, _tried
    with _lock:
        if _tried:
            return _lib
        _tried = True
        target = library_path()
        try:
            if not target.exists():
                build(target)
            lib = ctypes.CDLL(str(target))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", "") or e
            logger.warning("native kernels unavailable (%s); using the PyTorch paths", detail)
            return None
        i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
        # q, k_cache, v_cache, tables, max_blocks, row_seq, row_ctx, num_rows, max_ctx, H, Hkv,
        # D, Dv, bs, scale, window, softcap, out, num_threads
        lib.paged_attention_f32.argtypes = [
            *(ptr, ptr, ptr, ptr, i64, ptr, ptr),
            *(i64, i64, i64, i64, i64, i64, i64),
            *(f32, i64, f32, ptr, i64),
        ]
        lib.paged_attention_f32.restype = ctypes.c_int
        lib.linear_f32_available.argtypes = []
        lib.linear_f32_available.restype = ctypes.c_int
        lib.linear_f32.argtypes = [ptr, i64, i64, ptr, i64, ptr, ptr, i64]
        lib.linear_f32.restype = None
        lib.linear_q8_f32.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i64, ptr, ptr, i64]
        lib.linear_q8_f32.restype = None
        lib.linear_q4_f32.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i64, i64, ptr, ptr, i64]
        lib.linear_q4_f32.restype = None
        _lib = lib
        return lib
