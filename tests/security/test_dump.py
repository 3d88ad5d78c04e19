"""A dump of the metadata database holds no key secret, no master/audit key and no plaintext of
an encrypted dataset: SQLite's file (with its WAL) and `pg_dump` output are grepped for markers."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

from sqlalchemy.engine import make_url

from llmos.config import StorageConfig
from llmos.security.audit import AuditLog
from llmos.security.crypto import EnvelopeCipher, Keyring, parse_master_key
from llmos.security.keys import ApiKeys, parse_key
from llmos.security.principals import Role, Users
from llmos.storage.datasets import Datasets
from llmos.storage.store import Storage
from tests.required import require

DATASET_MARKER = "PLANTED-PLAINTEXT-MARKER-41b7"
MASTER_KEY_TEXT = base64.urlsafe_b64encode(b"M" * 32).decode()
AUDIT_KEY = b"A-planted-audit-key-0123456789ab"


def _dump(storage: Storage, config: StorageConfig) -> bytes:
    db = storage.db
    if db.backend == "sqlite":
        path = db.sqlite_path
        assert path is not None
        parts = [path, path.with_name(path.name + "-wal")]
        return b"".join(p.read_bytes() for p in parts if p.exists())
    pg_dump = shutil.which("pg_dump") or next(
        iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_dump"))), None
    )
    require(pg_dump is not None, "pg_dump is not installed (the postgresql-client package)")
    assert pg_dump is not None
    url = make_url(config.database_url or "").set(drivername="postgresql")
    out = subprocess.run(
        [str(pg_dump), "--data-only", url.render_as_string(hide_password=False)],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return out.stdout


def test_dump_holds_no_secrets(storage: Storage, storage_config: StorageConfig, tmp_path) -> None:  # type: ignore[no-untyped-def]
    db = storage.db
    Users(db).add("alice", Role.USER)
    keys = [ApiKeys(db).create("alice", f"k{i}").secret for i in range(3)]
    keys[0] and ApiKeys(db).resolve(keys[0])  # last_used_at written
    AuditLog(db, AUDIT_KEY).append("alice", "key.create", details={"note": "no secrets here"})
    master = parse_master_key(MASTER_KEY_TEXT)
    src = tmp_path / "chat.jsonl"
    records = [
        {"messages": [{"role": "user", "content": f"{DATASET_MARKER} {i}"}]} for i in range(20)
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in records))
    Datasets(storage, cipher=EnvelopeCipher(db, Keyring(master))).import_file(src, "private")

    dump = _dump(storage, storage_config)
    assert b"alice" in dump  # the dump is real and readable
    secrets = [parse_key(k)[1] for k in keys]  # type: ignore[index]
    planted = {
        "dataset plaintext": DATASET_MARKER.encode(),
        "master key (base64)": MASTER_KEY_TEXT.encode(),
        "master key (hex)": master.hex().encode(),
        "master key (raw)": master,
        "audit key": AUDIT_KEY,
        "audit key (hex)": AUDIT_KEY.hex().encode(),
        **{f"key secret {i}": s.encode() for i, s in enumerate(secrets)},
        **{f"full key {i}": k.encode() for i, k in enumerate(keys)},
    }
    found = [what for what, marker in planted.items() if marker in dump]
    assert not found, f"the database dump contains: {found}"
    blobs = b"".join(p.read_bytes() for p in storage.layout.blobs.iterdir() if p.is_file())
    assert DATASET_MARKER.encode() not in blobs
