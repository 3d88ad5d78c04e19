"""The registry over HTTP: list, show, verify, import, tag, export, and refusing to remove the
server's default model; bad inputs are 4xx in OpenAI's error shape, never 500."""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import httpx
import pytest

from llmos.storage.formats import gguf


def test_registry_routes_against_a_live_server(http: httpx.Client) -> None:
    listed = http.get("/os/models").json()["data"]
    resident = [m for m in listed if m["resident"]]
    assert len(resident) == 1 and resident[0]["name"] == "smollm2"
    assert resident[0]["format"] == "gguf" and resident[0]["parameters"] > 100_000_000
    shown = http.get("/os/models/smollm2").json()
    assert shown["id"] == "smollm2:latest" and shown["files"]
    verified = http.post("/os/models/smollm2/verify").json()
    assert verified == {"id": "smollm2:latest", "ok": True, "bad_files": []}
    refused = http.delete("/os/models/smollm2")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "conflict"
    missing = http.get("/os/models/no-such-model")
    assert missing.status_code == 404 and "error" in missing.json()
    bad = http.get("/os/models/..%2F..%2Fetc")
    assert bad.status_code in (400, 404) and "error" in bad.json()


def _post(http: httpx.Client, path: str, body: object) -> httpx.Response:
    return http.post(path, json=body)


def _assert_4xx(r: httpx.Response, status: int | tuple[int, ...], *words: str) -> None:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], (word, error)


def test_import_refuses_bad_sources_with_4xx(http: httpx.Client, tmp_path: Path) -> None:
    pickle = tmp_path / "model.bin"
    pickle.write_bytes(b"\x80\x04not really a pickle")
    huge = tmp_path / "huge.gguf"  # a GGUF header claiming 2**62 tensors
    huge.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 1 << 62, 0))
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    cases: list[tuple[dict[str, object], int | tuple[int, ...], tuple[str, ...]]] = [
        ({"source": str(pickle)}, 400, ("pickle",)),
        ({"source": str(huge)}, 400, ("huge.gguf",)),
        ({"source": str(garbage)}, 400, ("garbage.gguf",)),
        ({"source": str(empty_dir)}, 400, ()),
        ({"source": "/etc/passwd"}, 400, ("passwd",)),
        ({"source": "relative/model.gguf"}, 400, ("absolute",)),
        ({"source": str(tmp_path / "missing.gguf")}, 404, ()),
        ({"source": "pkg:../../etc"}, 400, ()),
        ({"source": "pkg:no-such-package-xyz"}, 404, ()),
        ({"source": str(garbage), "name": "../evil"}, 400, ()),
        ({"source": str(garbage), "name": "a/b"}, 400, ()),
        ({"source": str(garbage), "bogus": 1}, 400, ()),
        ({"source": 42}, 400, ()),
    ]
    for body, status, words in cases:
        _assert_4xx(_post(http, "/os/models", body), status, *words)
    assert [m["name"] for m in http.get("/os/models").json()["data"]] == ["smollm2"]


def test_tag_export_and_reimport_over_http(http: httpx.Client, tmp_path: Path) -> None:
    r = _post(http, "/os/models/smollm2/tag", {"name": "smollm2-copy:v1"})
    assert r.status_code == 201 and r.json()["id"] == "smollm2-copy:v1"
    assert r.json()["resident"] is False and r.json()["model"] == "smollm2-copy:v1"
    _assert_4xx(_post(http, "/os/models/smollm2/tag", {"name": "smollm2-copy:v1"}), 409)
    _assert_4xx(_post(http, "/os/models/smollm2/tag", {"name": "../x"}), 400)
    _assert_4xx(_post(http, "/os/models/no-such/tag", {"name": "x"}), 404)
    out = tmp_path / "out.gguf"
    r = _post(http, "/os/models/smollm2-copy:v1/export", {"path": str(out)})
    assert r.status_code == 200 and r.json()["path"] == str(out)
    # the export carries smollm2's profile in its GGUF metadata; the tensors are the same bytes
    header = gguf.read_header(out)
    assert header.metadata["general.sampling.temp"] == pytest.approx(0.2)
    digest = http.get("/os/models/smollm2").json()["files"][0]["digest"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() != digest
    _assert_4xx(_post(http, "/os/models/smollm2/export", {"path": str(out)}), 409, "exists")
    _assert_4xx(_post(http, "/os/models/smollm2/export", {"path": "out.gguf"}), 400, "absolute")
    missing_dir = tmp_path / "no" / "such" / "dir.gguf"
    _assert_4xx(_post(http, "/os/models/smollm2/export", {"path": str(missing_dir)}), 400)
    r = _post(http, "/os/models", {"source": str(out), "name": "smollm2-back"})
    assert r.status_code == 201 and r.json()["id"] == "smollm2-back:latest"
    back = http.get("/os/models/smollm2-back").json()
    assert back["profile"] == {"temperature": pytest.approx(0.2), "top_p": pytest.approx(0.9)}
    _assert_4xx(_post(http, "/os/models", {"source": str(out), "name": "smollm2"}), 409)
    for name in ("smollm2-copy:v1", "smollm2-back"):
        r = http.delete(f"/os/models/{name}")
        assert r.json() == {"id": r.json()["id"], "deleted": True, "unloaded": False}
    assert [m["name"] for m in http.get("/os/models").json()["data"]] == ["smollm2"]
