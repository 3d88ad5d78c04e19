"""Where `llmos run` and `llmos chat` get their answers: a server over HTTP, or an engine loaded
into this process when no server is reachable (and none was asked for)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol

from llmos.cli.common import err_console, resolve_url
from llmos.client import Client
from llmos.errors import process_error

Messages = list[dict[str, Any]]


# field -> (value, "model" | "llmos"), as `llmos.kernel.params.defaults_in_use` gives them
Defaults = dict[str, tuple[Any, str]]


class Backend(Protocol):
    model: str

    def stream_chat(self, messages: Messages, params: dict[str, Any]) -> Generator[str, None, None]:
        """Text deltas of the answer; closing the iterator cancels the generation."""
        ...

    def defaults(self) -> tuple[Defaults, str | None]:
        """The sampling defaults a request that sets nothing gets, and the system prompt."""
        ...


class RemoteBackend:
    def __init__(self, client: Client, model: str | None) -> None:
        self.client = client
        self.model = model or client.default_model()

    def stream_chat(self, messages: Messages, params: dict[str, Any]) -> Generator[str, None, None]:
        yield from self.client.chat_text(messages, self.model, **params)

    def defaults(self) -> tuple[Defaults, str | None]:
        card = self.client.model(self.model)
        values, sources = card.get("defaults") or {}, card.get("defaults_source") or {}
        found = {name: (value, str(sources.get(name, "?"))) for name, value in values.items()}
        return found, card.get("system_prompt")


class LocalBackend:
    """An engine in this process: the model is loaded once and driven tick by tick."""

    def __init__(self, model: str | None) -> None:
        from llmos.config import Settings
        from llmos.system import load_engine

        settings = Settings()
        self.engine = load_engine(model or settings.api.model, settings)
        self.model = self.engine.model_name

    def defaults(self) -> tuple[Defaults, str | None]:
        from llmos.kernel.params import defaults_in_use

        return defaults_in_use(self.engine.profile), self.engine.profile.get("system")

    def stream_chat(self, messages: Messages, params: dict[str, Any]) -> Generator[str, None, None]:
        from llmos.api.prompts import encode_chat, with_profile_system
        from llmos.kernel.params import SamplingParams, with_defaults

        # The server's precedence: an option given > the model's profile > llmos's defaults.
        sampling = SamplingParams(
            **({"max_tokens": None} | with_defaults(params, self.engine.profile)),
            seed=params.get("seed"),
        )
        messages = with_profile_system(messages, self.engine.profile)
        pid = self.engine.submit(encode_chat(self.engine, messages), sampling)
        finished = False
        try:
            while not finished:
                for out in self.engine.step():
                    if out.pid != pid:
                        continue
                    finished = out.finished
                    if out.new_text:
                        yield out.new_text
                    failure = process_error(out.finish_reason, out.error)
                    if failure is not None:
                        raise failure
        finally:
            if not finished:
                self.engine.kill(pid)
                while self.engine.has_work():
                    self.engine.step()


def open_backend(model: str | None, url: str | None) -> Backend:
    """The server at --url/$LLMOS_URL (which must answer), else the default server if one
    answers, else an in-process engine."""
    resolved, chosen = resolve_url(url)
    from llmos.cli.credentials import resolve_api_key

    client = Client(resolved, api_key=resolve_api_key(resolved))
    if chosen or client.is_reachable(timeout_s=0.5):
        return RemoteBackend(client, model)
    client.close()
    err_console.print(
        f"no server at {resolved}; loading the model in-process ...", markup=False, style="dim"
    )
    return LocalBackend(model)
