"""Doctor checks of the data dir: permissions, free disk, database integrity and schema version,
blobs (quick: present with the recorded size; `--full`: re-hashed), and whether every stored
model can fit the memory budget. Everything is read through `Inspection.storage()`, read-only.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

from llmos.config import physical_memory_bytes
from llmos.models.footprint import load_bytes_for
from llmos.monitor.doctor.base import (
    CheckResult,
    Inspection,
    fail,
    human_bytes,
    not_checked,
    ok,
    restore_fix,
    warn,
)
from llmos.storage.datasets import Datasets
from llmos.storage.layout import TEMP_PREFIX
from llmos.storage.manifest import ModelManifest
from llmos.storage.registry import Registry
from llmos.storage.store import Storage

# The smallest KV pool worth suggesting (64 MiB holds a few thousand tokens of a small model).
MIN_KV_BYTES = 64 << 20


def check_data_dir(ins: Inspection) -> list[CheckResult]:
    root = ins.layout.root
    if not root.exists():
        return [ok("data_dir", f"no data dir yet at {root} (created on first use)", path=str(root))]
    if not root.is_dir():
        return [fail("data_dir", f"the data dir {root} is not a folder", f"mv {root} {root}.bak")]
    st = root.stat()
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        return [
            fail(
                "data_dir",
                f"the data dir {root} belongs to uid {st.st_uid}, not to this user "
                f"(uid {os.geteuid()})",
                f"sudo chown -R {os.geteuid()} {root}",
            )
        ]
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return [
            fail(
                "data_dir",
                f"the data dir {root} is open to group or others (mode {mode:o}): its database "
                "holds key hashes and the audit log",
                f"chmod 700 {root}",
                mode=f"{mode:o}",
            )
        ]
    unwritable = [p for p in (root, ins.layout.blobs) if p.exists() and not _is_writable(p)]
    if unwritable:
        return [
            fail(
                "data_dir",
                f"{unwritable[0]} is not writable by this user: imports and the database fail",
                f"chmod u+rwx {unwritable[0]}",
            )
        ]
    results = [ok("data_dir", f"data dir {root} (mode {mode:o})", path=str(root))]
    temps = _temp_files(ins)
    if temps:
        results.append(
            warn(
                "data_dir",
                f"{len(temps)} leftover temp file(s) from an interrupted import or write",
                "llmos models gc",
                files=[str(p) for p in temps[:10]],
            )
        )
    return results


def _is_writable(path: Path) -> bool:
    return os.access(path, os.W_OK | os.X_OK)


def _temp_files(ins: Inspection) -> list[Path]:
    folders = (ins.layout.blobs, ins.layout.hf_cache, ins.layout.gguf_cache)
    return [p for f in folders if f.is_dir() for p in f.iterdir() if p.name.startswith(TEMP_PREFIX)]


def check_disk(ins: Inspection) -> list[CheckResult]:
    path = ins.layout.root
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    floor = ins.settings.storage.min_free_bytes
    details = {"free_bytes": usage.free, "total_bytes": usage.total, "min_free_bytes": floor}
    if usage.free >= floor:
        return [
            ok("disk", f"{human_bytes(usage.free)} free of {human_bytes(usage.total)}", **details)
        ]
    reclaimable = _reclaimable_bytes(ins)
    fix = (
        f"llmos models gc  (frees {human_bytes(reclaimable)} of unused blobs)"
        if reclaimable
        else f"free space on the file system of {path}, or move the data dir (LLMOS_HOME)"
    )
    return [
        fail(
            "disk",
            f"disk almost full: {human_bytes(usage.free)} free on the data dir's file system "
            f"(below storage.min_free_bytes = {human_bytes(floor)}); imports and writes will fail",
            fix,
            reclaimable_bytes=reclaimable,
            **details,
        )
    ]


def _reclaimable_bytes(ins: Inspection) -> int:
    storage = ins.storage()
    if storage is None or not ins.layout.blobs.is_dir():
        return 0
    unused = storage.blobs.digests() - storage.referenced_digests()
    return sum(storage.blobs.path(d).stat().st_size for d in unused)


def check_database(ins: Inspection) -> list[CheckResult]:
    if not ins.has_database:
        return [ok("database", "no database yet (created on first use)")]
    storage = ins.storage()
    restore = restore_fix(ins)
    if storage is None and ins.settings.storage.database_url:
        return [
            fail(
                "database",
                f"the database at storage.database_url cannot be read: {ins.storage_error}",
                "check LLMOS_STORAGE__DATABASE_URL and that the database server is up",
            )
        ]
    if storage is None:
        return [
            fail("database", f"the database is corrupt or unreadable: {ins.storage_error}", restore)
        ]
    try:
        verdict = storage.db.integrity_check()
    except Exception as exc:  # a corrupt file fails the pragma itself
        verdict = f"{type(exc).__name__}: {exc}"
    if verdict != "ok":
        first = verdict.splitlines()[0] if verdict else "unknown error"
        return [fail("database", f"the database is corrupt: {first}", restore, report=verdict)]
    return [ok("database", f"database integrity ok ({storage.db.backend})")] + _schema(storage)


def _schema(storage: Storage) -> list[CheckResult]:
    db = storage.db
    current, head = db.revision(), db.head_revision()
    details = {"revision": current, "head": head}
    if current is None:
        return [warn("schema", "the database has no schema yet (created on first use)", **details)]
    if not db.is_known_revision(current):
        return [
            fail(
                "schema",
                f"the database schema {current!r} is newer than this llmos (head {head!r}): a "
                "newer llmos wrote it, and this one refuses to open it",
                "pip install --upgrade llmos",
                **details,
            )
        ]
    if current != head:
        return [
            warn(
                "schema",
                f"the database schema {current!r} is older than head {head!r}: it is migrated "
                "when llmos next opens it",
                "llmos models list  (any command that opens the database migrates it)",
                **details,
            )
        ]
    return [ok("schema", f"database schema {current} (head)", **details)]


def check_blobs(ins: Inspection) -> list[CheckResult]:
    storage = ins.storage()
    if storage is None:
        return [not_checked("blobs", ins)]
    manifests = Registry(storage).list()
    checked: dict[str, str | None] = {}  # digest -> problem; tags share blobs, check each once
    results = []
    for m in manifests:
        for f in m.files:
            if f.digest not in checked:
                checked[f.digest] = _blob_problem(storage, f.digest, f.size_bytes, ins.is_full)
            problem = checked[f.digest]
            if problem is not None:
                results.append(
                    fail(
                        "blobs",
                        f"model {m.ref} is corrupted: its file {f.path} (blob "
                        f"sha256-{f.digest[:12]}...) {problem}",
                        f"llmos models import {m.source} --name {m.ref}",
                        model=m.ref,
                        digest=f.digest,
                    )
                )
                break
    datasets = Datasets(storage).list()
    for d in datasets:
        problem = _blob_problem(storage, d.digest, None, ins.is_full)
        if problem is not None:
            results.append(
                fail(
                    "blobs",
                    f"dataset {d.name} is corrupted: its blob sha256-{d.digest[:12]}... {problem}",
                    f"llmos data import {d.source} --name {d.name} --replace",
                    dataset=d.name,
                    digest=d.digest,
                )
            )
    if not results:
        how = "re-hashed" if ins.is_full else "present with their sizes (--full re-hashes them)"
        total = sum(m.size_bytes for m in manifests)
        results.append(
            ok(
                "blobs",
                f"{len(manifests)} model(s), {len(datasets)} dataset(s), "
                f"{human_bytes(total)} of model files: {how}",
                num_models=len(manifests),
                num_datasets=len(datasets),
                is_full=ins.is_full,
            )
        )
    return results


def _blob_problem(storage: Storage, digest: str, size_bytes: int | None, full: bool) -> str | None:
    path = storage.blobs.path(digest)
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if size_bytes is not None and actual != size_bytes:
        return f"has {actual} bytes, {size_bytes} expected (truncated or replaced)"
    if full and not storage.blobs.verify(digest):
        return "does not match its sha256 (its bytes changed)"
    return None


def check_memory_budget(ins: Inspection) -> list[CheckResult]:
    kernel, memory = ins.settings.kernel, ins.settings.memory
    ram = physical_memory_bytes()
    budget = kernel.memory_budget(ram)
    source = "kernel.memory_budget_bytes" if kernel.memory_budget_bytes else "80% of usable RAM"
    storage = ins.storage()
    manifests = Registry(storage).list() if storage is not None else []
    results = []
    for m in manifests:
        # The server's own estimate of a load (llmos.models.footprint): what it refuses by.
        need = load_bytes_for(m.parameters, memory.kv_cache_bytes, memory.swap_bytes)
        if need > budget:
            results.append(
                fail(
                    "memory_budget",
                    f"model {m.ref} can never fit the memory budget: loading it needs about "
                    f"{human_bytes(need)} ({m.parameters:,} weights at their float32 load peak + "
                    f"{human_bytes(memory.kv_cache_bytes)} KV pool + "
                    f"{human_bytes(memory.swap_bytes)} swap), the budget is "
                    f"{human_bytes(budget)} ({source})",
                    _budget_fix(m, need, budget, ram),
                    model=m.ref,
                    need_bytes=need,
                    budget_bytes=budget,
                )
            )
    if not results:
        largest = max(manifests, key=lambda m: m.parameters, default=None)
        fits = (
            f"; loading the largest model {largest.ref} needs about "
            f"{human_bytes(load_bytes_for(largest.parameters, memory.kv_cache_bytes, memory.swap_bytes))}"
            if largest
            else ""
        )
        results.append(
            ok(
                "memory_budget",
                f"memory budget {human_bytes(budget)} ({source}, {human_bytes(ram)} RAM){fits}",
                budget_bytes=budget,
                ram_bytes=ram,
            )
        )
    return results


def _budget_fix(m: ModelManifest, need: int, budget: int, ram: int) -> str:
    if need <= ram * 0.9:  # the host has the memory: the budget is what is too small
        return f"export LLMOS_KERNEL__MEMORY_BUDGET_BYTES={_round_up(need)}"
    room = budget - load_bytes_for(m.parameters, 0, 0)
    if room >= MIN_KV_BYTES:
        kv = room // (1 << 20) << 20
        return f"export LLMOS_MEMORY__KV_CACHE_BYTES={kv} LLMOS_MEMORY__SWAP_BYTES=0"
    return f"llmos models rm {m.ref}"


def _round_up(n: int, step: int = 1 << 26) -> int:
    return -(-n // step) * step
