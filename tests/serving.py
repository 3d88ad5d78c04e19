"""A real `llmos serve` subprocess on 127.0.0.1 with an ephemeral port, for API/CLI/e2e tests.

`shared_server()` starts one server per pytest session (whichever test directory asks first) and
stops it at exit; tests that need their own settings (small queue, SIGTERM) start a `ServerProcess`.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

LISTENING = re.compile(r"listening on (https?://\S+)")
# Small enough for a shared 2-core machine, large enough for 32 concurrent short requests.
TEST_ENV = {
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "LLMOS_MEMORY__KV_CACHE_BYTES": str(256 << 20),
    "LLMOS_MEMORY__SWAP_BYTES": "0",
    "LLMOS_KERNEL__MAX_MODEL_LEN": "1024",
    # Serving tests run keyless on loopback; tests/security starts servers with auth keys.
    "LLMOS_SECURITY__AUTH": "none",
}


class ServerProcess:
    """`python -m llmos.cli.app serve --port 0 ...` with its own data dir; `.url` once started."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.home = tempfile.TemporaryDirectory(prefix="llmos-test-")
        self.env = {**os.environ, **TEST_ENV, "LLMOS_HOME": self.home.name, **(env or {})}
        self.env.pop("LLMOS_URL", None)
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stdout_lines: list[str] = []
        self.log_path = Path(self.home.name) / "server.log"

    def start(self, timeout_s: float = 180.0) -> ServerProcess:
        cmd = [sys.executable, "-m", "llmos.cli.app", "serve", "--port", "0", *self.args]
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env
        )
        found = threading.Event()
        threading.Thread(target=self._read_stdout, args=(found,), daemon=True).start()
        if not found.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"server did not start in {timeout_s}s:\n{self.log()}")
        return self

    def _read_stdout(self, found: threading.Event) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)
            match = LISTENING.search(line)
            if match and not found.is_set():
                self.url = match.group(1)
                found.set()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.home.cleanup()


_shared: ServerProcess | None = None
_shared_lock = threading.Lock()


def shared_server() -> ServerProcess:
    """The session's one default server (SmolLM2, default settings but a small KV pool)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ServerProcess().start()
            atexit.register(_shared.stop)
        return _shared


def wait_until(predicate: object, timeout_s: float = 30.0, interval_s: float = 0.05) -> bool:
    """Poll `predicate()` until true or the timeout passes (bounded; no bare sleeps in tests)."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


def idle(url: str) -> bool:
    """No live process and no KV block held by one."""
    stats = httpx.get(f"{url}/os/stats", timeout=10).json()
    return (
        stats["num_live"] == 0
        and stats["kv_blocks_used"] == 0
        and not httpx.get(f"{url}/os/processes", timeout=10).json()["data"]
    )


@contextlib.contextmanager
def live_stream_pid(url: str) -> Iterator[int]:
    """A running process (a long stream read in a background thread) for the block; yields its
    pid, then stops reading and waits until the server is idle again."""
    body = {
        "model": "smollm2",
        "max_tokens": 900,
        "ignore_eos": True,
        "stream": True,
        "messages": [{"role": "user", "content": "Count slowly."}],
    }
    stop = threading.Event()

    def consume() -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=300) as r:
            for _ in r.iter_lines():
                if stop.is_set():
                    return

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    procs: list[dict[str, int]] = []

    def running() -> bool:
        nonlocal procs
        procs = httpx.get(f"{url}/os/processes").json()["data"]
        return bool(procs)

    assert wait_until(running, 60)
    try:
        yield procs[0]["pid"]
    finally:
        stop.set()
        thread.join(60)
    assert wait_until(lambda: idle(url), 30)


class StreamResult:
    """What one SSE client saw: status, parsed data events, whether `[DONE]` arrived."""

    def __init__(self, status: int, headers: httpx.Headers) -> None:
        self.status = status
        self.headers = headers
        self.events: list[dict[str, object]] = []
        self.done = False
        self.body = b""

    @property
    def text(self) -> str:
        parts = []
        for event in self.events:
            for choice in event.get("choices", []) or []:  # type: ignore[attr-defined]
                delta = choice.get("delta") or {}
                parts.append(delta.get("content") or choice.get("text") or "")
        return "".join(parts)

    @property
    def errors(self) -> list[dict[str, object]]:
        return [e for e in self.events if "error" in e]

    @property
    def finish_reasons(self) -> list[str]:
        return [
            c["finish_reason"]
            for e in self.events
            for c in e.get("choices", []) or []  # type: ignore[attr-defined]
            if c.get("finish_reason")
        ]


async def stream_sse(
    client: httpx.AsyncClient, path: str, body: dict[str, object], *, max_events: int | None = None
) -> StreamResult:
    """POST `body` with stream=true and read the SSE events (closing early after `max_events`)."""
    import json

    async with client.stream("POST", path, json={**body, "stream": True}) as response:
        result = StreamResult(response.status_code, response.headers)
        if response.status_code != 200:
            result.body = await response.aread()
            return result
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                result.done = True
                break
            result.events.append(json.loads(data))
            if max_events is not None and len(result.events) >= max_events:
                break
    return result


class Scrape:
    """One `/metrics` scrape: `value(name, **labels)` sums the samples whose labels include
    `labels` (0 when none matches yet: a labelled counter appears on its first increment)."""

    def __init__(self, url: str) -> None:
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"{url}/metrics", timeout=10).text
        self.samples = [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(self, name: str, **labels: str) -> float:
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def names(self) -> set[str]:
        return {s.name for s in self.samples}
