"""The HTTP/2 variant of the HTTPS transport: the same Starlette app (:func:`servers.https_server.build_app`)
served by hypercorn instead of uvicorn (``Settings.http2``; docs/design.md: a variant, not the default).

- TLS: the same ``TLSMaterial.server_ssl_context()`` as the uvicorn path, with ALPN ``h2`` then
  ``http/1.1`` (a client without ALPN, like the runner's health check, gets HTTP/1.1). No key file is
  written: hypercorn's config is asked for the context rather than for cert/key paths.
- Cleartext: h2c with prior knowledge (the HTTP/2 preface) or HTTP/1.1 on the same port.
- The socket is bound here (a bind error is an ``OSError`` for the caller) and handed to hypercorn as
  ``fd://N``; hypercorn's socket object owns the descriptor from then on.
- Ready: hypercorn awaits the shutdown trigger only once every listener accepts, so the trigger's first
  call is the "started" signal. ``stop()`` fires it; in-flight requests get ``grace_s`` to finish.
- WebSocket mode (``WS /v1/responses``) over HTTP/2 (RFC 8441) is not supported by the clients here and
  not tested; use the uvicorn path for it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette

from servers.base import RunningServer
from turnbench.connection import ConnectionSet
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tls import TLSMaterial
from turnbench.transports import HTTPS

ALPN = ["h2", "http/1.1"]


class _Config(Config):
    """hypercorn's config with a ready-made server ``SSLContext`` (None: cleartext)."""

    ssl_context: ssl.SSLContext | None = None

    @property
    def ssl_enabled(self) -> bool:
        return self.ssl_context is not None

    def create_ssl_context(self) -> ssl.SSLContext | None:
        return self.ssl_context


async def start_hypercorn(
    app: Starlette,
    settings: Settings,
    service: ResponsesService,
    tls: TLSMaterial | None,
    *,
    keep_alive_s: float,
    connections: ConnectionSet,
) -> RunningServer:
    """Serve ``app`` with hypercorn in the running loop; returns once it accepts (port 0: the bound port)."""
    config = _Config()
    if tls is not None:
        ctx = tls.server_ssl_context()
        ctx.set_alpn_protocols(ALPN)
        config.ssl_context = ctx
    config.alpn_protocols = ALPN
    config.keep_alive_timeout = keep_alive_s
    config.keep_alive_max_requests = 1 << 62  # hypercorn closes after 1000 requests by default; uvicorn never
    config.graceful_timeout = settings.grace_s
    config.accesslog = None
    config.errorlog = logging.getLogger("turnbench.https.hypercorn")  # no stderr handler of its own
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.create_server(
        (settings.host, settings.port), family=family, backlog=config.backlog, reuse_port=settings.reuse_port
    )
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    port = int(sock.getsockname()[1])
    config.bind = [f"fd://{sock.detach()}"]

    started, stopping = asyncio.Event(), asyncio.Event()

    async def trigger() -> None:
        started.set()
        await stopping.wait()

    main = serve(app, config, shutdown_trigger=trigger, mode="asgi")  # type: ignore[arg-type]  # ASGI typings differ
    task = asyncio.create_task(main, name="turnbench-https-h2")
    ready = asyncio.ensure_future(started.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not started.is_set():
        ready.cancel()
        exc = task.exception()
        raise OSError(f"https (hypercorn) server failed to start: {exc!r}") from exc

    async def stop() -> None:
        await connections.drain()
        stopping.set()
        await task

    return RunningServer(
        transport="https",
        host=settings.host,
        port=port,
        url=HTTPS.url(settings.host, port, tls is not None),
        service=service,
        tls=tls,
        _stop=stop,
        extra={"server": "hypercorn", "http": "2", "connections": connections},
    )
