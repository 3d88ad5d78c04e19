"""`llmos.Client`: a small synchronous Python client for a running `llmos serve`.

It speaks the same HTTP API as every other client (`/v1` plus the `/os` admin API) and raises the
same `LlmosError` classes the server raised, so callers (the CLI first) handle one error tree.

    >>> client = llmos.Client("http://127.0.0.1:8000")
    >>> for text in client.chat_text([{"role": "user", "content": "Hi"}], max_tokens=16):
    ...     print(text, end="")
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from llmos.errors import (
    ContextTooLong,
    InvalidRequest,
    KernelDead,
    LlmosError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    QuotaExceeded,
    RateLimited,
    Unauthenticated,
)

DEFAULT_URL = "http://127.0.0.1:8000"

_BY_STATUS: dict[int, type[LlmosError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    413: PayloadTooLarge,
    429: RateLimited,
    503: Overloaded,
}


class ServerUnreachable(LlmosError):
    """No llmos server answered at the URL."""

    status_code = 503
    code = "server_unreachable"
    error_type = "connection_error"


class Client:
    """A connection to one llmos server. Use as a context manager or call `close()`."""

    def __init__(
        self, url: str = DEFAULT_URL, api_key: str | None = None, *, timeout_s: float = 600.0
    ) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout_s, connect=5.0)
        )
        self._default_model: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- probes and the OS admin API --------------------------------------------------------

    def is_reachable(self, timeout_s: float = 1.0) -> bool:
        """True if an llmos server answers `/health` at the URL (dead or alive)."""
        try:
            self._http.get("/health", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return True

    def health(self) -> dict[str, Any]:
        return dict(self._get("/health", ok_statuses=(200, 503)))

    def ready(self) -> dict[str, Any]:
        return dict(self._get("/ready", ok_statuses=(200, 503)))

    def models(self) -> list[dict[str, Any]]:
        return list(self._get("/v1/models")["data"])

    def processes(self) -> list[dict[str, Any]]:
        return list(self._get("/os/processes")["data"])

    def kill(self, pid: int) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/os/processes/{pid}"))

    def renice(self, pid: int, priority: str | int) -> dict[str, Any]:
        return dict(
            self._request("POST", f"/os/processes/{pid}/priority", json={"priority": priority})
        )

    def stats(self) -> dict[str, Any]:
        return dict(self._get("/os/stats"))

    def residency(self) -> dict[str, Any]:
        """Why each model is resident (`data`), with the memory figures."""
        return dict(self._get("/os/residency"))

    def pin(self, model: str) -> dict[str, Any]:
        """Pin a model resident (waits for its load); `note` says why if it is not loaded."""
        return dict(self._request("POST", f"/os/models/{quote(model, safe='')}/pin"))

    def unpin(self, model: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/os/models/{quote(model, safe='')}/pin"))

    def events(
        self,
        *,
        since: int | str | None = None,
        kind: str | None = None,
        model: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """The event log (`data`, oldest first, and `last_seq` to pass as `since` next time);
        `since` is a seq or an ISO 8601 time (admins only)."""
        params = {"since": since, "kind": kind, "model": model, "limit": limit}
        query = {k: v for k, v in params.items() if v is not None}
        return dict(self._request("GET", "/os/events", params=query))

    def metrics(self) -> str:
        response = self._send("GET", "/metrics")
        return response.text

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        body = {"prompt": text, "add_special_tokens": add_special_tokens}
        return list(self._request("POST", "/tokenize", json=body)["tokens"])

    def detokenize(self, tokens: list[int]) -> str:
        return str(self._request("POST", "/detokenize", json={"tokens": tokens})["prompt"])

    # ---- generation -------------------------------------------------------------------------

    def model(self, model_id: str) -> dict[str, Any]:
        """One model's card: its context length, sampling defaults and their sources."""
        from urllib.parse import quote

        return dict(self._get(f"/v1/models/{quote(model_id, safe=':')}"))

    def default_model(self) -> str:
        if self._default_model is None:
            self._default_model = str(self.models()[0]["id"])
        return self._default_model

    def chat(
        self, messages: list[dict[str, Any]], model: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """A non-streaming chat completion (OpenAI's response shape)."""
        body = {"model": model or self.default_model(), "messages": messages, **params}
        return dict(self._request("POST", "/v1/chat/completions", json=body))

    def chat_stream(
        self, messages: list[dict[str, Any]], model: str | None = None, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """Chat completion chunks as they arrive; closing the iterator cancels the request."""
        body = {
            "model": model or self.default_model(),
            "messages": messages,
            **params,
            "stream": True,
        }
        yield from self._stream("/v1/chat/completions", body)

    def chat_text(
        self, messages: list[dict[str, Any]], model: str | None = None, **params: Any
    ) -> Iterator[str]:
        """Only the text deltas of the first choice."""
        for chunk in self.chat_stream(messages, model, **params):
            for choice in chunk.get("choices", []):
                if choice.get("index", 0) == 0 and choice["delta"].get("content"):
                    yield choice["delta"]["content"]

    def complete(
        self, prompt: str | list[int], model: str | None = None, **params: Any
    ) -> dict[str, Any]:
        """A non-streaming legacy completion."""
        body = {"model": model or self.default_model(), "prompt": prompt, **params}
        return dict(self._request("POST", "/v1/completions", json=body))

    def complete_stream(
        self, prompt: str | list[int], model: str | None = None, **params: Any
    ) -> Iterator[dict[str, Any]]:
        body = {"model": model or self.default_model(), "prompt": prompt, **params, "stream": True}
        yield from self._stream("/v1/completions", body)

    # ---- plumbing ---------------------------------------------------------------------------

    def _get(self, path: str, *, ok_statuses: tuple[int, ...] = (200,)) -> Any:
        return self._request("GET", path, ok_statuses=ok_statuses)

    def _request(
        self, method: str, path: str, *, ok_statuses: tuple[int, ...] = (200,), **kwargs: Any
    ) -> Any:
        response = self._send(method, path, **kwargs)
        if response.status_code not in ok_statuses:
            raise error_from_response(response.status_code, _json_or_none(response))
        return response.json()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def _stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        try:
            with self._http.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    response.read()
                    raise error_from_response(response.status_code, _json_or_none(response))
                for line in response.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    event = json.loads(data)
                    if "error" in event:
                        raise error_from_response(500, event)
                    yield event
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: Exception) -> ServerUnreachable:
        return ServerUnreachable(
            f"No llmos server answered at {self.url} ({type(exc).__name__}).",
            hint="start one with `llmos serve`, or pass --url / set LLMOS_URL",
        )


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def error_from_response(status: int, body: Any) -> LlmosError:
    """The LlmosError a server's OpenAI-style error JSON stands for."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return LlmosError(f"The server answered HTTP {status}.", code="http_error")
    message = str(error.get("message") or f"HTTP {status}")
    code = error.get("code")
    code = str(code) if code is not None else None
    cls = _BY_STATUS.get(status, LlmosError)
    if code == "context_length_exceeded":
        cls = ContextTooLong
    elif code == "kernel_dead":
        cls = KernelDead
    elif code == "insufficient_quota":
        cls = QuotaExceeded
    exc = cls(message, code=code, param=error.get("param"))
    if cls is LlmosError:
        exc.status_code = status
        exc.error_type = str(error.get("type") or "server_error")
    return exc
