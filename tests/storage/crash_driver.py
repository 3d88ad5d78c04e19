"""Subprocess driver for the crash tests: performs storage operations, announcing each one on
stdout before it starts (`begin OP NAME`) and acknowledging it only after it returned
(`done OP NAME`), both flushed. So the parent knows what must survive a SIGKILL (everything
done) and which one operation was in flight (it may or may not have taken effect).

    python crash_driver.py import DATA_DIR SOURCE NAME
    python crash_driver.py writer DATA_DIR FILES_DIR PREFIX
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path

from llmos.config import StorageConfig
from llmos.storage.datasets import Datasets
from llmos.storage.registry import Registry
from llmos.storage.store import Storage


def ack(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run(op: str, name: str, fn: Callable[[], object]) -> None:
    ack(f"begin {op} {name}")
    fn()
    ack(f"done {op} {name}")


def main(argv: list[str]) -> None:
    mode, data_dir = argv[0], Path(argv[1])
    storage = Storage(StorageConfig(data_dir=data_dir))
    registry, datasets = Registry(storage), Datasets(storage)
    ack("ready")
    if mode == "import":
        run("import", argv[3], lambda: registry.import_model(argv[2], argv[3]))
        return
    files, prefix = Path(argv[2]), argv[3]
    ggufs = sorted(files.glob("*.gguf"))
    for i in itertools.count():  # until killed
        gguf, model, copy = ggufs[i % len(ggufs)], f"{prefix}-m{i}", f"{prefix}-m{i}:copy"
        run("import", model, lambda: registry.import_model(gguf, model))  # noqa: B023
        run("tag", copy, lambda: registry.tag(model, copy))  # noqa: B023
        data = f"{prefix}-d{i}"
        run("data", data, lambda: datasets.import_file(files / "data.jsonl", data))  # noqa: B023
        if i % 2:
            run("rm", copy, lambda: registry.remove(copy))  # noqa: B023


if __name__ == "__main__":
    main(sys.argv[1:])
