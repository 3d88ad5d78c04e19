"""Doctor checks of the installation: Python, torch and its device, compute threads, and whether
the native kernels compiled (tried in a temporary folder when not built yet, never cached here).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.metadata
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from llmos.monitor.doctor.base import CheckResult, Inspection, fail, ok, warn
from llmos.ops import native

_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def check_python(_: Inspection) -> list[CheckResult]:
    requires = "unknown"
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        requires = importlib.metadata.metadata("llmos")["Requires-Python"] or requires
    version = platform.python_version()
    return [
        ok(
            "python",
            f"Python {version} ({platform.machine()}, {sys.platform}); llmos needs {requires}",
            version=version,
            requires=requires,
        )
    ]


def check_torch(ins: Inspection) -> list[CheckResult]:
    try:
        import torch
    except ImportError as exc:
        return [fail("torch", f"torch does not import: {exc}", "pip install torch")]
    device = ins.settings.kernel.device
    version = str(torch.__version__)
    if device.startswith("cuda") and not torch.cuda.is_available():
        return [
            fail(
                "torch",
                f"kernel.device is {device!r} but torch {version} sees no CUDA device",
                "export LLMOS_KERNEL__DEVICE=cpu",
                version=version,
                device=device,
            )
        ]
    return [ok("torch", f"torch {version}, device {device}", version=version, device=device)]


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup CPU quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = _CGROUP_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    return cpus


def check_threads(ins: Inspection) -> list[CheckResult]:
    configured = ins.settings.kernel.num_threads
    # The engine asks for this many (kernel/engine.py set_compute_threads).
    threads = configured or os.cpu_count() or 1
    cpus = usable_cpus()
    details = {"threads": threads, "usable_cpus": cpus, "num_threads": configured}
    if threads > cpus:
        source = "kernel.num_threads" if configured else "the default (one per core)"
        return [
            warn(
                "threads",
                f"{source} gives {threads} compute threads but this process may use {cpus} "
                "CPUs (affinity or cgroup quota): threads will contend and ticks slow down",
                f"export LLMOS_KERNEL__NUM_THREADS={cpus}",
                **details,
            )
        ]
    return [ok("threads", f"{threads} compute threads on {cpus} usable CPUs", **details)]


def check_native_kernels(_: Inspection) -> list[CheckResult]:
    target = native.library_path()
    if target.exists():
        try:
            lib = ctypes.CDLL(str(target))
        except OSError as exc:
            return [
                fail(
                    "native_kernels",
                    f"the compiled kernels at {target} do not load: {exc}",
                    f"rm {target}  (rebuilt on the next model load)",
                )
            ]
        gemm = "AVX-512 GEMM" if lib.linear_f32_available() else "no AVX-512: PyTorch GEMM"
        return [ok("native_kernels", f"native kernels compiled ({gemm})", path=str(target))]
    if native.compiler() is None:
        return [
            warn(
                "native_kernels",
                "no C compiler (cc/gcc): the native kernels cannot be built, PyTorch paths run "
                "instead (slower)",
                "sudo apt-get install gcc  (or set $CC)",
            )
        ]
    error = _try_build()
    if error is not None:
        return [
            warn(
                "native_kernels",
                f"the native kernels do not compile, PyTorch paths run instead: {error}",
                "check the compiler: $CC, cc or gcc must accept -march=native -fopenmp",
            )
        ]
    return [
        ok(
            "native_kernels",
            "native kernels compile (not cached yet: built on the first model load)",
            path=str(target),
        )
    ]


def _try_build() -> str | None:
    """None if the kernels compile (in a temporary folder, removed after), else the first line
    of the compiler's complaint."""
    with tempfile.TemporaryDirectory(prefix="llmos-doctor-") as tmp:
        try:
            native.build(Path(tmp) / "kernels.so")
        except subprocess.CalledProcessError as exc:
            lines = (exc.stderr or "").strip().splitlines()
            return lines[0] if lines else f"exit status {exc.returncode}"
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            return str(exc)
    return None
