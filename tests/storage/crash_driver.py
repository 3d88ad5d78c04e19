"""Subprocess driver for the crash tests: performs storage operations and acknowledges each one
on stdout (flushed) only after it returned, so the parent knows what must survive a SIGKILL.

    python crash_driver.py import DATA_DIR SOURCE NAME
    python crash_driver.py writer DATA_DIR FILES_DIR PREFIX
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from llmos.config import StorageConfig
from llmos.storage.datasets import Datasets
from llmos.storage.registry import Registry
from llmos.storage.store import Storage


def ack(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main(argv: list[str]) -> None:
    mode, data_dir = argv[0], Path(argv[1])
    storage = Storage(StorageConfig(data_dir=data_dir))
    registry, datasets = Registry(storage), Datasets(storage)
    ack("ready")
    if mode == "import":
        registry.import_model(argv[2], argv[3])
        ack(f"import {argv[3]}")
        return
    files, prefix = Path(argv[2]), argv[3]
    ggufs = sorted(files.glob("*.gguf"))
    for i in itertools.count():  # until killed
        gguf = ggufs[i % len(ggufs)]
        registry.import_model(gguf, f"{prefix}-m{i}")
        ack(f"import {prefix}-m{i}")
        registry.tag(f"{prefix}-m{i}", f"{prefix}-m{i}:copy")
        ack(f"tag {prefix}-m{i}:copy")
        datasets.import_file(files / "data.jsonl", f"{prefix}-d{i}")
        ack(f"data {prefix}-d{i}")
        if i % 2:
            registry.remove(f"{prefix}-m{i}:copy")
            ack(f"rm {prefix}-m{i}:copy")


if __name__ == "__main__":
    main(sys.argv[1:])
