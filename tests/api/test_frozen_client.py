"""A client that stops reading its stream (issue 11, item 4): after `api.send_timeout_s` with its
socket full, its process is killed and its KV blocks are freed; the server keeps serving.

The client is a raw socket with a tiny receive buffer and small segments that sends a streaming
request and then reads nothing; `top_logprobs` makes each event ~1 KB so the server's buffers
fill quickly."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.serving import ServerProcess, wait_until

pytestmark = pytest.mark.slow
MAX_TOKENS = 900  # the test servers allow 1024 tokens of context


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    srv = ServerProcess(env={"LLMOS_API__SEND_TIMEOUT_S": "2"}).start()
    try:
        yield srv
    finally:
        srv.stop()


def killed_total(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(
        r'^llmos:process_finished_total{finish_reason="killed",model_name="smollm2"} (\S+)$',
        text,
        re.M,
    )
    return float(found.group(1)) if found else 0.0


def frozen_request(url: str) -> socket.socket:
    parts = urlsplit(url)
    body = json.dumps(
        {
            "model": "smollm2",
            "messages": [{"role": "user", "content": "Write a very long story."}],
            "max_tokens": MAX_TOKENS,
            "ignore_eos": True,
            "stream": True,
            "logprobs": True,
            "top_logprobs": 20,
        }
    ).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # Small segments: on loopback (64 KiB MSS) the server's send buffer would start at megabytes.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.connect((parts.hostname, parts.port))
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return sock  # and never read from it


def test_a_client_that_stops_reading_is_cut_off(server: ServerProcess) -> None:
    url = server.url
    killed = killed_total(url)
    sock = frozen_request(url)
    try:
        assert wait_until(lambda: httpx.get(f"{url}/os/stats").json()["num_live"] == 1, 60)
        # Killed once the send has been blocked for 2 s, long before 900 tokens.
        assert wait_until(lambda: killed_total(url) == killed + 1, timeout_s=300, interval_s=0.5)
        stats = httpx.get(f"{url}/os/stats").json()
        assert stats["num_live"] == 0 and stats["kv_blocks_used"] == 0
        assert stats["num_generated_tokens"] < MAX_TOKENS
        assert "stopped reading" in server.log()
    finally:
        sock.close()
    # The server keeps serving others.
    r = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
        timeout=60,
    )
    assert r.status_code == 200
