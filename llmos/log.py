"""Logging setup: the only place that configures handlers (plain text or JSON lines)."""

from __future__ import annotations

import json
import logging
import sys
import time

_warned_once: set[str] = set()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(level: str = "INFO", *, json_lines: bool = False) -> None:
    """Configure the root llmos logger once (server and CLI entry points call this)."""
    root = logging.getLogger("llmos")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False


def warn_once(logger: logging.Logger, message: str) -> None:
    """Log a warning the first time this exact message is seen in the process."""
    if message not in _warned_once:
        _warned_once.add(message)
        logger.warning(message)
