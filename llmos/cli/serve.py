"""`llmos serve`: load a model and serve the OpenAI-compatible and OS admin APIs."""

from __future__ import annotations

import json

import typer

from llmos.cli.common import console

app = typer.Typer()


@app.command()
def serve(
    host: str | None = typer.Option(None, help="Address to bind (default 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port to bind (default 8000; 0 = any free)."),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model to serve: registry name, path, or smollm2."
    ),
    max_queue: int | None = typer.Option(None, help="Most waiting processes before 503."),
    drain_timeout: float | None = typer.Option(
        None, help="Seconds in-flight work may take to finish on SIGTERM."
    ),
) -> None:
    """Serve a model over HTTP until SIGTERM or Ctrl-C (which drain in-flight work first)."""
    from llmos.api.server import serve as run_server
    from llmos.config import Settings
    from llmos.log import setup_logging

    settings = Settings()
    overrides = {
        "host": host,
        "port": port,
        "model": model,
        "max_queue": max_queue,
        "drain_timeout_s": drain_timeout,
    }
    api = settings.api.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    settings = settings.model_copy(update={"api": type(api).model_validate(api.model_dump())})
    setup_logging(settings.monitor.log_level, json_lines=settings.monitor.log_json)
    console.print(f"loading {settings.api.model} ...", markup=False)
    name = settings.api.model

    def on_listening(host: str, port: int) -> None:
        _print_how_to_chat(host, port, name)

    run_server(settings, on_listening=on_listening)


def _print_how_to_chat(host: str, port: int, model: str) -> None:
    url = f"http://{host}:{port}"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    for line in (
        f"llmos is listening on {url}",
        f"  chat:  LLMOS_URL={url} llmos chat",
        f"  curl:  curl {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'",
        "  stop:  Ctrl-C (drains in-flight requests first)",
    ):
        console.print(line, markup=False)
