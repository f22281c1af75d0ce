"""What every transport server looks like from outside: one start signature, one handle.

A server module (named by its :class:`~turnbench.transports.ServerProtocol` in the transport table) defines
``async def start(settings, service, tls) -> RunningServer``. Everything else — settings, TLS material, the
shared service, graceful stop — is the same for ``https``, ``ws`` and ``grpc``, so tests and the runner
treat them alike::

    server = await start_server("ws", Settings(tls=True))
    print(server.url)          # wss://127.0.0.1:41234/v1
    ...
    await server.stop()        # stop accepting, let in-flight responses finish (grace_s), drain post

``start_server`` also takes a transport name of the table (``https-h2``): its server settings are applied.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tls import TLSMaterial, generate_tls, tls_at
from turnbench.transports import SERVER_PROTOCOLS, TRANSPORTS, ServerProtocol

__all__ = ["RunningServer", "ServerFactory", "resolve_server", "start_server"]


@dataclass(eq=False)
class RunningServer:
    """A started server. ``url`` is the client-facing base URL (``https://H:P/v1``, ``wss://H:P/v1``,
    ``H:P`` for gRPC); ``stop`` is idempotent and graceful, and closes the service when the server owns it
    (``start_server`` made it)."""

    transport: str
    host: str
    port: int
    url: str
    service: ResponsesService
    tls: TLSMaterial | None
    _stop: Callable[[], Awaitable[None]]
    extra: dict[str, Any] = field(default_factory=dict)
    owns_service: bool = False
    _stopped: bool = False

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            await self._stop()
        finally:
            await self.service.drain()
            if self.owns_service:
                self.service.close()


ServerFactory = Callable[[Settings, ResponsesService, "TLSMaterial | None"], Awaitable[RunningServer]]


def resolve_server(name: str) -> tuple[ServerProtocol, dict[str, Any]]:
    """A server protocol name (``ws``) or a transport name (``https-h2``) → (protocol, the server settings
    that transport needs). Raises ``ValueError`` for a name in neither table."""
    if name in SERVER_PROTOCOLS:
        return SERVER_PROTOCOLS[name], {}
    row = TRANSPORTS.get(name)
    if row is None or row.server is None:
        known = sorted({*SERVER_PROTOCOLS, *(t.name for t in TRANSPORTS.values() if t.server is not None)})
        raise ValueError(f"unknown server {name!r}; known: {', '.join(known)}")
    return row.server, dict(row.server_settings)


async def start_server(
    transport: str,
    settings: Settings | None = None,
    *,
    service: ResponsesService | None = None,
    tls: TLSMaterial | None = None,
) -> RunningServer:
    """Start ``transport``'s server on ``settings.host:settings.port`` (port 0 picks a free one).

    TLS material is generated when ``settings.tls`` and none is given; with ``settings.ca_out`` the CA is
    read from there if one is (``turnbench.tls.tls_at``: servers started with the same path share one CA),
    else made and written there for clients in other processes. A service made here is closed by ``stop()``.
    """
    protocol, needed = resolve_server(transport)
    settings = settings or Settings()
    if needed:
        settings = settings.replace(**needed)
    if not settings.tls:
        tls = None
    elif tls is None:
        tls = tls_at(settings.ca_out) if settings.ca_out else generate_tls()
    elif settings.ca_out:
        Path(settings.ca_out).write_bytes(tls.ca_pem_bytes)  # noqa: ASYNC240  # once, at start-up
    owns = service is None
    service = service or ResponsesService(settings)
    start: ServerFactory = importlib.import_module(protocol.module).start
    try:
        server = await start(settings, service, tls)
    except BaseException:
        if owns:
            service.close()
        raise
    server.owns_service = owns
    return server
