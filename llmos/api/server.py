"""Running the app under uvicorn with llmos's shutdown: SIGTERM drains instead of dropping work.

First SIGTERM/SIGINT: stop admitting (new requests 503 `shutting_down`, `/ready` 503), let live
processes finish for up to `api.drain_timeout_s`, then kill the rest (their clients get an error
event and `[DONE]`), flush the responses, and exit 0. A second signal exits at once.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import uvicorn

from llmos.api.deps import ServerContext
from llmos.config import Settings

logger = logging.getLogger(__name__)

KILL_FLUSH_S = 2.0  # after killing at the drain deadline, time for error events to reach clients
CONNECTION_CLOSE_S = 5.0  # uvicorn's wait for open connections once we decide to exit

OnListening = Callable[[str, int], None]


class LlmosServer(uvicorn.Server):
    """uvicorn.Server whose exit signals start a drain of the engine loop."""

    def __init__(
        self, config: uvicorn.Config, ctx: ServerContext, *, on_listening: OnListening | None = None
    ) -> None:
        super().__init__(config)
        self.ctx = ctx
        self.on_listening = on_listening
        self.drain_timeout_s = ctx.settings.api.drain_timeout_s
        self._drain_requested = False
        self._drain_deadline_s: float | None = None
        self._killed_at_s: float | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown, and a
        # drained server must exit with status 0.
        if self._drain_requested:
            logger.warning("second signal %d: exiting now", sig)
            self.should_exit = True
            self.force_exit = True
        else:
            self._drain_requested = True

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self.on_listening is not None:
            host, port = self.servers[0].sockets[0].getsockname()[:2]
            self.on_listening(str(host), int(port))

    async def on_tick(self, counter: int) -> bool:
        if self._drain_requested and not self.should_exit:
            self._drain_step(time.monotonic())
        return await super().on_tick(counter)

    def _drain_step(self, now_s: float) -> None:
        loop = self.ctx.loop
        if self._drain_deadline_s is None:
            self._drain_deadline_s = now_s + self.drain_timeout_s
            loop.begin_drain()
            logger.info(
                "shutting down: draining %d processes for up to %.0f s",
                loop.num_live,
                self.drain_timeout_s,
            )
        if loop.num_live == 0:
            logger.info("drained; exiting")
            self.should_exit = True
        elif now_s >= self._drain_deadline_s and self._killed_at_s is None:
            logger.warning("drain timeout: killing %d live processes", loop.num_live)
            loop.kill_all()
            self._killed_at_s = now_s
        elif self._killed_at_s is not None and now_s >= self._killed_at_s + KILL_FLUSH_S:
            self.should_exit = True


def build_server(
    engine: Any,
    settings: Settings,
    *,
    aliases: tuple[str, ...] = (),
    on_listening: OnListening | None = None,
    pids: Iterator[int] | None = None,
) -> LlmosServer:
    """A ready-to-run server for `engine` bound to `settings.api.host:port` (HTTPS when
    `security.tls_cert_file` is set). Refuses `auth none` on a non-loopback address."""
    from llmos.api.app import create_app
    from llmos.security.transport import check_bind

    check_bind(settings.api.host, settings.security)
    app = create_app(engine, settings, aliases=aliases, pids=pids)
    tls = settings.security
    config = uvicorn.Config(
        app,
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # uvicorn would take X-Forwarded-For from 127.0.0.1 on its own; llmos reads it only from
        # security.trusted_proxies (llmos.api.forwarded).
        proxy_headers=False,
        timeout_graceful_shutdown=int(CONNECTION_CLOSE_S),
        ssl_certfile=str(tls.tls_cert_file) if tls.tls_cert_file else None,
        ssl_keyfile=str(tls.tls_key_file) if tls.tls_key_file else None,
    )
    return LlmosServer(config, app.state.llmos, on_listening=on_listening)


def serve(settings: Settings, *, on_listening: OnListening | None = None) -> None:
    """Load `settings.api.model`, then serve it (and any registry model, loaded on demand)
    until a signal drains and stops the server."""
    from llmos.system import load_engine, served_name

    ref = settings.api.model
    pids = itertools.count(1)  # shared by every engine of this server
    engine = load_engine(ref, settings, pids=pids, name=served_name(ref))
    logger.info("model %s resident; starting the server", engine.model_name)
    build_server(engine, settings, aliases=(ref,), on_listening=on_listening, pids=pids).run()
