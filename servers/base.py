"""What every transport server looks like from outside: one start signature, one handle, one registry.

A transport module defines ``async def start(settings, service, tls) -> RunningServer`` and registers it
with :func:`register_server`. Everything else — settings, TLS material, the shared service, graceful stop —
is the same for ``https``, ``ws`` and ``grpc``, so tests and the runner treat them alike::

    server = await start_server("ws", Settings(tls=True))
    print(server.url)          # wss://127.0.0.1:41234/v1
    ...
    await server.stop()        # stop accepting, let in-flight responses finish (grace_s), drain post
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.tls import TLSMaterial, generate_tls

TRANSPORTS = ("https", "ws", "grpc")
SERVER_MODULES = {"https": "servers.https_server", "ws": "servers.ws_server", "grpc": "servers.grpc_server"}


@dataclass(eq=False)
class RunningServer:
    """A started server. ``url`` is the client-facing base URL (``https://H:P/v1``, ``wss://H:P/v1``,
    ``H:P`` for gRPC); ``stop`` is idempotent and graceful."""

    transport: str
    host: str
    port: int
    url: str
    service: ResponsesService
    tls: TLSMaterial | None
    _stop: Callable[[], Awaitable[None]]
    extra: dict[str, Any] = field(default_factory=dict)
    _stopped: bool = False

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            await self._stop()
        finally:
            await self.service.drain()


ServerFactory = Callable[[Settings, ResponsesService, "TLSMaterial | None"], Awaitable[RunningServer]]
SERVERS: dict[str, ServerFactory] = {}


def register_server(transport: str) -> Callable[[ServerFactory], ServerFactory]:
    def deco(fn: ServerFactory) -> ServerFactory:
        SERVERS[transport] = fn
        return fn

    return deco


def load_servers() -> dict[str, ServerFactory]:
    """Import every transport server module that exists, filling :data:`SERVERS`."""
    for name in SERVER_MODULES.values():
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return SERVERS


async def start_server(
    transport: str,
    settings: Settings | None = None,
    *,
    service: ResponsesService | None = None,
    tls: TLSMaterial | None = None,
) -> RunningServer:
    """Start ``transport`` on ``settings.host:settings.port`` (port 0 picks a free one).

    TLS material is generated when ``settings.tls`` and none is given; with ``settings.ca_out`` the CA is
    written there as PEM for clients in other processes.
    """
    settings = settings or Settings()
    factories = load_servers()
    if transport not in factories:
        raise ValueError(f"unknown transport {transport!r}; available: {', '.join(sorted(factories))}")
    if settings.tls and tls is None:
        tls = generate_tls()
    if not settings.tls:
        tls = None
    if tls is not None and settings.ca_out:
        Path(settings.ca_out).write_bytes(tls.ca_pem_bytes)  # noqa: ASYNC240  # once, at start-up
    service = service or ResponsesService(settings)
    return await factories[transport](settings, service, tls)


def scheme(transport: str, tls: bool) -> str:
    return {"https": "https" if tls else "http", "ws": "wss" if tls else "ws", "grpc": ""}[transport]
