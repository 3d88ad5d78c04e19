"""Builds and loads the C paged-attention kernel (csrc/paged_attention.c) on first use.

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

_SOURCE = Path(__file__).parent / "csrc" / "paged_attention.c"
_FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-Wall"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llmos" / "kernels"


def _build(target: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        subprocess.run(
            [compiler, *_FLAGS, str(_SOURCE), "-o", str(out), "-lm"],
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
        digest = hashlib.sha256(_SOURCE.read_bytes() + " ".join(_FLAGS).encode()).hexdigest()
        target = _cache_dir() / f"paged_attention-{digest[:16]}.so"
        try:
            if not target.exists():
                _build(target)
            lib = ctypes.CDLL(str(target))
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            detail = getattr(e, "stderr", "") or e
            logger.warning(
                "native attention kernel unavailable (%s); using the PyTorch path", detail
            )
            return None
        i64, f32, ptr = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p
        lib.paged_attention_f32.argtypes = [
            ptr,
            ptr,
            ptr,
            ptr,
            i64,
            ptr,
            ptr,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            f32,
            i64,
            f32,
            ptr,
        ]
        lib.paged_attention_f32.restype = ctypes.c_int
        _lib = lib
        return lib
