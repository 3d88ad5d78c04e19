"""Acceptance 2: every bad-input row of RELIABILITY.md §4.3 that concerns this API gets its 4xx
with the OpenAI error shape, leaves no process behind, and the server still answers afterwards."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.serving import idle, wait_until

pytestmark = pytest.mark.slow

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "smollm2", "messages": USER, "max_tokens": 2, **fields}


def assert_openai_error(
    r: httpx.Response, status: int, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in error["message"] and "/work/" not in error["message"]
    if param is not None:  # the field, or a path inside it ("stop[0]", "messages[0].role")
        named = str(error["param"])
        assert named == param or named.startswith((f"{param}.", f"{param}[")), error
    if code is not None:
        assert error["code"] == code, error
    return error


RAW_BODIES = {
    "not json": b"hello",
    "truncated json": b'{"model": "smollm2", "messages": [',
    "json array": b'[{"model": "smollm2"}]',
    "json string": b'"hi"',
    "empty body": b"",
    "invalid utf-8": b'{"model": "smollm2", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    "lone surrogate": b'{"model": "smollm2", "messages": [{"role": "user", "content": "\\ud800"}]}',
    "NaN number": b'{"model": "smollm2", "messages": [{"role": "user", "content": "x"}], '
    b'"logit_bias": {"5": NaN}}',
}


@pytest.mark.parametrize("raw", RAW_BODIES.values(), ids=RAW_BODIES.keys())
def test_malformed_bodies(http: httpx.Client, raw: bytes) -> None:
    r = http.post(CHAT, content=raw, headers={"Content-Type": "application/json"})
    assert_openai_error(r, 400)
    assert r.json()["error"]["type"] == "invalid_request_error"


BAD_FIELDS: dict[str, tuple[dict[str, Any], str | None]] = {
    # wrong types
    "max_tokens string": ({"max_tokens": "10"}, "max_tokens"),
    "messages object": ({"messages": {}}, "messages"),
    "temperature string": ({"temperature": "hot"}, "temperature"),
    "stop number": ({"stop": 5}, "stop"),
    "stream string": ({"stream": "yes"}, "stream"),
    # missing / empty / unknown role / unsupported part
    "empty messages": ({"messages": []}, "messages"),
    "unknown role": ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    "image part": (
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}],
                }
            ]
        },
        "messages[0].content[0].type",
    ),
    # out of range
    "max_tokens zero": ({"max_tokens": 0}, "max_tokens"),
    "max_tokens negative": ({"max_tokens": -5}, "max_tokens"),
    "n huge": ({"n": 10**6}, "n"),
    "top_logprobs 100": ({"logprobs": True, "top_logprobs": 100}, "top_logprobs"),
    "temperature -1": ({"temperature": -1}, "temperature"),
    "temperature 3": ({"temperature": 3}, "temperature"),
    "top_p 1.5": ({"top_p": 1.5}, "top_p"),
    "presence_penalty 5": ({"presence_penalty": 5}, "presence_penalty"),
    "logit_bias word key": ({"logit_bias": {"hello": 1}}, "logit_bias"),
    "logit_bias out of vocab": ({"logit_bias": {"99999999": 1}}, "logit_bias"),
    "logit_bias too big": ({"logit_bias": {"5": 1000}}, "logit_bias"),
    "too many stops": ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
    "stop 2k chars": ({"stop": ["x" * 2000]}, "stop"),
    "empty stop": ({"stop": [""]}, "stop"),
    "priority unknown": ({"priority": "realtime"}, "priority"),
    "top_k -5": ({"top_k": -5}, "top_k"),
    # pairs that need each other (vLLM behaviour)
    "stream_options without stream": (
        {"stream_options": {"include_usage": True}},
        "stream_options",
    ),
    "top_logprobs without logprobs": ({"top_logprobs": 2}, "top_logprobs"),
    "tool_choice without tools": ({"tool_choice": "auto"}, "tool_choice"),
    "json_schema response_format": (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
        "response_format",
    ),
}


@pytest.mark.parametrize("fields,param", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_bad_chat_fields(http: httpx.Client, fields: dict[str, Any], param: str | None) -> None:
    assert_openai_error(http.post(CHAT, json=chat(**fields)), 400, param=param)


@pytest.mark.parametrize("missing", ["model", "messages"])
def test_missing_required_field(http: httpx.Client, missing: str) -> None:
    body = chat()
    del body[missing]
    assert_openai_error(http.post(CHAT, json=body), 400, param=missing)


HI = {"role": "user", "content": "Hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": "{}"}}
CALLED = {"role": "assistant", "content": None, "tool_calls": [CALL]}
# Each message list breaks one rule of OpenAI's message schema; `param` names the field.
BAD_MESSAGES: dict[str, tuple[list[Any], str]] = {
    "user without content": ([{"role": "user"}], "messages[0].content"),
    "user null content": ([{"role": "user", "content": None}], "messages[0].content"),
    "system without content": ([{"role": "system"}, HI], "messages[0].content"),
    "developer without content": ([{"role": "developer"}, HI], "messages[0].content"),
    "assistant without content or tool_calls": ([HI, {"role": "assistant"}], "messages[1].content"),
    "tool without content": (
        [HI, CALLED, {"role": "tool", "tool_call_id": "call_1"}],
        "messages[2].content",
    ),
    "tool without tool_call_id": (
        [HI, CALLED, {"role": "tool", "content": "2"}],
        "messages[2].tool_call_id",
    ),
    "empty tool_calls": ([HI, {"role": "assistant", "tool_calls": []}], "messages[1].tool_calls"),
    "malformed tool call": (
        [HI, {"role": "assistant", "tool_calls": [{"id": "c"}]}],
        "messages[1].tool_calls[0]",
    ),
    "empty content parts": ([{"role": "user", "content": []}], "messages[0].content"),
    "text part without text": (
        [{"role": "user", "content": [{"type": "text"}]}],
        "messages[0].content[0].text",
    ),
    "empty name": ([{**HI, "name": ""}], "messages[0].name"),
    "name with template markup": ([{**HI, "name": "<|im_end|>"}], "messages[0].name"),
    "name not a string": ([{**HI, "name": 5}], "messages[0].name"),
    "message not an object": (["Hi"], "messages[0]"),
    "message without role": ([{"content": "Hi"}], "messages[0].role"),
    "null role": ([{"role": None, "content": "Hi"}], "messages[0].role"),
    "system null content": ([{"role": "system", "content": None}, HI], "messages[0].content"),
}


@pytest.mark.parametrize("messages,param", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_bad_messages(http: httpx.Client, messages: list[Any], param: str) -> None:
    assert_openai_error(http.post(CHAT, json=chat(messages=messages)), 400, param=param)
    r = http.post("/tokenize", json={"messages": messages})
    assert_openai_error(r, 400, param=param)


def test_missing_content_is_named_exactly(http: httpx.Client) -> None:
    error = assert_openai_error(http.post(CHAT, json=chat(messages=[HI, {"role": "user"}])), 400)
    assert error["param"] == "messages[1].content", error
    assert "messages[1].content" in error["message"], error


GOOD_MESSAGES: dict[str, list[Any]] = {
    "assistant tool call without content, then its result": [
        HI,
        {"role": "assistant", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "2"},
    ],
    "assistant prefill": [HI, {"role": "assistant", "content": "Hello"}],
    "text parts and a name": [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "Hi", "name": "alice_1"},
    ],
    "empty user text": [{"role": "user", "content": ""}],
}


@pytest.mark.parametrize("messages", GOOD_MESSAGES.values(), ids=GOOD_MESSAGES.keys())
def test_good_messages(http: httpx.Client, messages: list[Any]) -> None:
    r = http.post(CHAT, json=chat(messages=messages))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")


BAD_COMPLETIONS: dict[str, tuple[dict[str, Any], str | None]] = {
    "prompt object": ({"prompt": {"a": 1}}, "prompt"),
    "prompt empty list": ({"prompt": []}, "prompt"),
    "prompt id out of vocab": ({"prompt": [1, 2, 10**9]}, "prompt"),
    "prompt negative id": ({"prompt": [-1]}, "prompt"),
    "logprobs 100": ({"prompt": "x", "logprobs": 100}, "logprobs"),
    "echo with logprobs": ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
}


@pytest.mark.parametrize("fields,param", BAD_COMPLETIONS.values(), ids=BAD_COMPLETIONS.keys())
def test_bad_completion_fields(
    http: httpx.Client, fields: dict[str, Any], param: str | None
) -> None:
    body = {"model": "smollm2", "max_tokens": 2, **fields}
    assert_openai_error(http.post(COMPLETIONS, json=body), 400, param=param)


def test_unknown_fields_ignored_on_v1(http: httpx.Client) -> None:
    r = http.post(
        CHAT,
        json=chat(
            foo=1, metadata={"a": "b"}, service_tier="auto", parallel_tool_calls=False, user="u1"
        ),
    )
    assert r.status_code == 200, r.text


def test_unknown_fields_rejected_on_os(http: httpx.Client) -> None:
    r = http.post("/os/processes/1/priority", json={"priority": "batch", "foo": 1})
    assert_openai_error(r, 400, param="foo")


def test_context_length_exceeded(http: httpx.Client) -> None:
    r = http.post(CHAT, json=chat(max_tokens=10**12))
    assert_openai_error(r, 400, code="context_length_exceeded")
    long_prompt = "word " * 3000  # ~3000 tokens > the test server's 1024-token context
    r = http.post(CHAT, json=chat(messages=[{"role": "user", "content": long_prompt}]))
    assert_openai_error(r, 400, code="context_length_exceeded")


def test_huge_prompt_refused_before_tokenizing(http: httpx.Client) -> None:
    r = http.post(COMPLETIONS, json={"model": "smollm2", "prompt": "a" * (7 << 20)})
    assert_openai_error(r, 400, code="context_length_exceeded")


def test_body_over_limit_is_413(http: httpx.Client) -> None:
    big = json.dumps(chat(messages=[{"role": "user", "content": "x" * (9 << 20)}]))
    assert_openai_error(http.post(CHAT, content=big), 413, code="request_too_large")


def test_chunked_body_over_limit_is_413(http: httpx.Client) -> None:
    def chunks() -> Any:
        yield b'{"model": "smollm2", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * (1 << 20)
        yield b'"}]}'

    assert_openai_error(http.post(CHAT, content=chunks()), 413, code="request_too_large")


def test_declared_100mb_body_refused_without_reading(server_url: str) -> None:
    parts = urlsplit(server_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(4096):  # the server answers and closes at once
            received += chunk
        head = received.decode()
    assert head.startswith("HTTP/1.1 413"), head
    assert '"request_too_large"' in head


NAMES = [
    "no-such-model",
    "../../etc/passwd",
    "a/../../b",
    "/abs/path",
    "..%2F..%2Fx",
    "C:\\x",
    "nul\x00byte",
    "m" * 10_000,
    "smоllm2",
]  # the last has a Cyrillic 'о'


@pytest.mark.parametrize("name", NAMES, ids=range(len(NAMES)))
def test_unknown_or_hostile_model_names(http: httpx.Client, name: str) -> None:
    r = http.post(CHAT, json=chat(model=name))
    error = assert_openai_error(r, 404, param="model", code="model_not_found")
    assert len(error["message"]) < 300
    r = http.post(COMPLETIONS, json={"model": name, "prompt": "x", "max_tokens": 1})
    assert_openai_error(r, 404, code="model_not_found")


def test_unknown_model_by_path(http: httpx.Client) -> None:
    assert_openai_error(http.get("/v1/models/..%2F..%2Fetc%2Fpasswd"), 404)
    assert_openai_error(http.get("/v1/models/nope"), 404, code="model_not_found")
    assert_openai_error(http.get("/no/such/route"), 404)


def test_wrong_method_is_openai_shaped(http: httpx.Client) -> None:
    assert_openai_error(http.get(CHAT), 405)


def test_admin_bad_inputs(http: httpx.Client) -> None:
    assert_openai_error(http.delete("/os/processes/999999"), 404, code="process_not_found")
    assert_openai_error(http.delete("/os/processes/abc"), 400, param="pid")
    r = http.post("/os/processes/999999/priority", json={"priority": "batch"})
    assert_openai_error(r, 404)
    r = http.post("/os/processes/1/priority", json={"priority": "godmode"})
    assert_openai_error(r, 400, param="priority")
    # Past what the database columns hold (they overflowed into a 500).
    r = http.post("/os/keys", json={"requests_per_minute": 2**70})
    assert_openai_error(r, 400, param="requests_per_minute")
    r = http.post("/os/users", json={"name": "big", "max_concurrent": 2**40})
    assert_openai_error(r, 400, param="max_concurrent")


def test_server_alive_and_clean_afterwards(http: httpx.Client, server_url: str) -> None:
    r = http.post(CHAT, json=chat(max_tokens=3, temperature=0))
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    assert http.get("/health").status_code == 200
    assert wait_until(lambda: idle(server_url), 30)
