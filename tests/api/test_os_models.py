"""The registry over HTTP: list, show, verify, and refusing to remove the resident model."""

from __future__ import annotations

import httpx


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
