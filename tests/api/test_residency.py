"""Residency on a real `llmos serve` (issue 13, preloading and pinning): `GET /os/residency` and
`llmos models ps` say why each model is resident; `llmos models pin|unpin` over HTTP; a pinned
model is never unloaded, even when that leaves no room for a request; pins that cannot all fit
are refused with the numbers; pins survive a restart and the pinned model is loaded at start.

Three registry models that share SmolLM2's blobs (`tag`), with kernel.max_resident_models = 2.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.serving import ServerProcess, wait_until

pytestmark = pytest.mark.slow
HI = [{"role": "user", "content": "Say hi."}]
ENV = {"LLMOS_KERNEL__MAX_RESIDENT_MODELS": "2", "LLMOS_KERNEL__PRELOAD_INTERVAL_S": "0.5"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(env=ENV).start()
    try:
        for name in ("extra", "third"):
            r = httpx.post(f"{srv.url}/os/models/smollm2/tag", json={"name": name}, timeout=60)
            assert r.status_code == 201, r.text
        yield srv
    finally:
        srv.stop()


def residency(url: str) -> dict[str, dict[str, object]]:
    report = httpx.get(f"{url}/os/residency", timeout=30).json()
    return {m["model"]: m for m in report["data"]}


def chat(url: str, model: str) -> httpx.Response:
    body = {"model": model, "messages": HI, "max_tokens": 2, "temperature": 0}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=300)


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LLMOS_URL": url}
    cmd = [sys.executable, "-m", "llmos.cli.app", "models", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_residency_says_why_each_model_is_resident(server: ServerProcess) -> None:
    url = server.url
    report = httpx.get(f"{url}/os/residency", timeout=30).json()
    assert report["max_resident_models"] == 2 and report["memory_budget_bytes"] > 0
    (start,) = report["data"]
    assert start["model"] == "smollm2" and start["state"] == "resident"
    assert start["num_bytes"] > 100 << 20 and report["used_bytes"] == start["num_bytes"]
    assert chat(url, "smollm2").status_code == 200
    start = residency(url)["smollm2"]
    assert "recently_used" in start["reasons"] and "used " in str(start["why"])
    assert start["idle_s"] is not None and start["is_pinned"] is False

    pinned = cli(url, "pin", "extra")
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.strip() == "pinned extra (resident)"
    extra = residency(url)["extra"]
    assert extra["state"] == "resident" and extra["reasons"][0] == "pinned"
    assert extra["num_bytes"] > 100 << 20

    shown = cli(url, "ps")
    assert shown.returncode == 0, shown.stderr
    assert "2 of at most 2 models resident" in shown.stdout
    row = next(line for line in shown.stdout.splitlines() if line.split()[:1] == ["extra"])
    assert row.split()[1:3] == ["resident", "pinned"] or "pinned" in row, shown.stdout
    assert " MB " in row, shown.stdout
    missing = cli(url, "pin", "no-such-model")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ")
    assert len(missing.stderr.strip().splitlines()) == 1 and "no-such-model" in missing.stderr


def test_a_pinned_model_is_never_unloaded(server: ServerProcess) -> None:
    url = server.url
    assert chat(url, "third").status_code == 200  # room for third: smollm2 goes, not extra
    assert set(residency(url)) == {"extra", "third"}
    events = httpx.get(f"{url}/os/events", params={"kind": "model_evicted"}, timeout=30).json()
    (gone,) = [e for e in events["data"] if e["model"] == "smollm2"]
    assert (
        gone["details"]["reason"] in ("lru", "demand") and gone["details"]["for_model"] == "third"
    )
    assert "predicted" in gone["message"]
    r = httpx.post(f"{url}/os/models/third/pin", timeout=300)
    assert r.status_code == 200 and r.json()["state"] == "resident"
    busy = chat(url, "smollm2")  # both slots pinned: refused rather than unpin anything
    assert busy.status_code == 503 and busy.json()["error"]["code"] == "models_busy"
    assert "pinned: extra, third" in busy.json()["error"]["message"]
    refused = httpx.post(f"{url}/os/models/smollm2/pin", timeout=60)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert "3 pinned models (extra, smollm2, third)" in error["message"]
    assert "kernel.max_resident_models (2)" in error["message"]
    removed = httpx.delete(f"{url}/os/models/extra", timeout=60)
    assert removed.status_code == 409 and "pinned" in removed.json()["error"]["message"]
    unpinned = cli(url, "unpin", "third")
    assert unpinned.returncode == 0 and unpinned.stdout.strip() == "unpinned third"
    again = httpx.delete(f"{url}/os/models/third/pin", timeout=60)
    assert again.status_code == 404 and again.json()["error"]["code"] == "model_not_pinned"
    assert chat(url, "smollm2").status_code == 200  # third, unpinned, made room
    assert set(residency(url)) == {"extra", "smollm2"}


def test_pins_survive_a_restart(server: ServerProcess) -> None:
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)  # stop, keeping the data dir
    assert server.proc.wait(60) == 0
    again = ServerProcess(env={**ENV, "LLMOS_HOME": server.home.name}).start()
    try:
        url = again.url
        assert wait_until(lambda: residency(url).get("extra", {}).get("state") == "resident", 120)
        extra = residency(url)["extra"]
        assert extra["is_pinned"] and extra["reasons"][0] == "pinned"
        events = httpx.get(f"{url}/os/events", params={"model": "extra"}, timeout=30).json()
        assert any(e["kind"] == "model_pinned" for e in events["data"])
        # The first run's demand was saved and read back: smollm2 was asked for.
        assert residency(url)["smollm2"]["predicted_requests"] > 0
    finally:
        again.stop()
