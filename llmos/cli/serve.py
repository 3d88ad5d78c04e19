"""`llmos serve`: load a model and serve the OpenAI-compatible and OS admin APIs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from llmos.cli.common import console

if TYPE_CHECKING:
    from llmos.config import Settings

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
    auth: str | None = typer.Option(
        None, "--auth", help="keys (default: API keys) or none (only on a loopback address)."
    ),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate: serve HTTPS."),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key of --tls-cert."),
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
    settings = _with_security(settings, auth, tls_cert, tls_key)
    _check_fault_injection(settings)
    setup_logging(settings.monitor.log_level, json_lines=settings.monitor.log_json)
    if settings.security.redact:
        from llmos.security.redact import install_log_redaction

        install_log_redaction()
    key_path = _prepare_security(settings)
    console.print(f"loading {settings.api.model} ...", markup=False)
    name = settings.api.model
    scheme = "https" if settings.security.tls_cert_file else "http"

    def on_listening(host: str, port: int) -> None:
        _print_how_to_chat(f"{scheme}://{host}:{port}", name, key_path)

    run_server(settings, on_listening=on_listening)


def _with_security(
    settings: Settings, auth: str | None, tls_cert: Path | None, tls_key: Path | None
) -> Settings:
    overrides = {"auth": auth, "tls_cert_file": tls_cert, "tls_key_file": tls_key}
    sec = settings.security.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    sec = type(sec).model_validate(sec.model_dump())
    return settings.model_copy(update={"security": sec})


def _check_fault_injection(settings: Settings) -> None:
    """The test-only fault hook never reaches a production server."""
    import os

    from llmos.errors import InvalidRequest
    from llmos.security.transport import is_loopback_host

    if not settings.api.enable_fault_injection:
        return
    if os.environ.get("LLMOS_TESTING") != "1" or not is_loopback_host(settings.api.host):
        raise InvalidRequest(
            "api.enable_fault_injection is a test-only hook that lets a client break the "
            "engine; refusing to serve with it",
            code="fault_injection_refused",
            hint="unset LLMOS_API__ENABLE_FAULT_INJECTION (tests set LLMOS_TESTING=1 and bind "
            "127.0.0.1)",
        )


def _prepare_security(settings: Settings) -> Path | None:
    """Refuse an insecure bind before loading anything; write the bootstrap admin key."""
    from llmos.security.transport import check_bind

    check_bind(settings.api.host, settings.security)
    if settings.security.auth != "keys":
        return None
    from llmos.security.guard import SecurityPaths, open_audit
    from llmos.security.keys import bootstrap_admin_key
    from llmos.storage.db import Database

    path = SecurityPaths.of(settings).admin_key
    if not settings.security.bootstrap_admin_key:
        return path if path.exists() else None
    db = Database(settings.storage)
    try:
        made = bootstrap_admin_key(db, path)
        if made is not None and made[1]:
            open_audit(db, settings).append("admin", "key.bootstrap", client="serve")
    finally:
        db.dispose()
    if made is None:
        return None
    console.print(f"admin API key: {path} (mode 0600; llmos commands here use it)", markup=False)
    return path


def _print_how_to_chat(url: str, model: str, key_path: Path | None) -> None:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}]})
    auth = f' -H "Authorization: Bearer $(cat {key_path})"' if key_path else ""
    for line in (
        f"llmos is listening on {url}",
        f"  chat:  LLMOS_URL={url} llmos chat",
        f"  curl:  curl {url}/v1/chat/completions{auth} -H 'Content-Type: application/json' "
        f"-d '{body}'",
        "  stop:  Ctrl-C (drains in-flight requests first)",
    ):
        console.print(line, markup=False)
