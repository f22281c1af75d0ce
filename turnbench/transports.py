"""The transport table: every transport's identity is one row, and everything that names transports reads it.

The CLI (``serve`` choices, ``run --transports``), the runner (which server a client talks to, which states a
cell grid crosses, which server settings a cell needs), bench, gate, migration (the client file), the Locust
users and the contract tests all read :data:`TRANSPORTS`. Adding a transport is one row here plus its client
module (and, for a new wire protocol, its server module and one :class:`ServerProtocol`).

Two kinds of thing are named:

* a :class:`ServerProtocol` is what listens on a port (``https``, ``ws``, ``grpc``): the module whose
  ``start(settings, service, tls)`` serves it, its URL scheme and whether it answers ``GET /healthz``;
* a :class:`Transport` is what a client speaks: a client class, the server protocol it talks to, the server
  settings that protocol needs for it (``https-h2``: ``http2=true``), its default state strategies.

This module is pure data: it imports no adapter (the core never does); modules are named as strings and
imported by whoever starts a server or makes a client. The state strategies' names are
:data:`turnbench.settings.STATE_STRATEGIES` (here :data:`STATES`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from turnbench.settings import STATE_STRATEGIES, StateStrategy

__all__ = [
    "DEFAULT_TRANSPORTS",
    "GRPC",
    "HTTPS",
    "SERVER_PROTOCOLS",
    "STATES",
    "TRANSPORTS",
    "WS",
    "ServerProtocol",
    "Transport",
    "get_transport",
]

STATES: tuple[StateStrategy, ...] = STATE_STRATEGIES
"""State strategies: resend everything, chain through the ResponseStore, chain through the connection cache
(:data:`turnbench.settings.STATE_STRATEGIES`, the one definition)."""


def _frozen(mapping: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class ServerProtocol:
    """One kind of server: what listens on a port.

    ``schemes``: the URL scheme without and with TLS (empty for gRPC, whose target is ``host:port``).
    """

    name: str
    module: str
    schemes: tuple[str, str]
    http_health: bool

    def url(self, host: str, port: int, tls: bool) -> str:
        """The client-facing base URL: ``https://H:P/v1``, ``wss://H:P/v1`` or ``H:P`` (gRPC)."""
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        scheme = self.schemes[int(tls)]
        return f"{scheme}://{shown}:{port}/v1" if scheme else f"{shown}:{port}"


HTTPS = ServerProtocol("https", "servers.https_server", ("http", "https"), http_health=True)
WS = ServerProtocol("ws", "servers.ws_server", ("ws", "wss"), http_health=True)
GRPC = ServerProtocol("grpc", "servers.grpc_server", ("", ""), http_health=False)
SERVER_PROTOCOLS: Mapping[str, ServerProtocol] = MappingProxyType({p.name: p for p in (HTTPS, WS, GRPC)})


@dataclass(frozen=True)
class Transport:
    """One row of the table.

    ``server``: the protocol its client talks to; ``None`` for ``inproc`` (the service called in-process).
    ``client``: ``"module:Class"``. ``states``: the state strategies a run crosses it with by default.
    ``server_settings``: Settings fields a server needs to serve it (added to every cell's settings).
    ``raw``: its client can send malformed bytes (``create_raw``), so it joins the bad-input contract.
    ``default``: part of ``turnbench run``'s default set.
    """

    name: str
    server: ServerProtocol | None
    client: str
    states: tuple[StateStrategy, ...]
    summary: str
    server_settings: Mapping[str, Any] = field(default_factory=_frozen)
    raw: bool = True
    default: bool = False

    @property
    def server_name(self) -> str:
        """The server protocol's name, ``inproc`` for the in-process reference."""
        return self.server.name if self.server is not None else "inproc"

    @property
    def supports_connection_state(self) -> bool:
        return "connection" in self.states

    @property
    def client_module(self) -> str:
        return self.client.partition(":")[0]

    @property
    def client_class(self) -> str:
        return self.client.partition(":")[2]

    @property
    def client_file(self) -> str:
        """The client module's path relative to the repository root (migration cost reads it)."""
        return self.client_module.replace(".", "/") + ".py"


_CONNECTION: tuple[StateStrategy, ...] = ("connection", "store", "full")
_STATELESS: tuple[StateStrategy, ...] = ("full", "store")

TRANSPORTS: Mapping[str, Transport] = MappingProxyType(
    {
        t.name: t
        for t in (
            Transport(
                "https",
                HTTPS,
                "clients.https_client:HttpsClient",
                _STATELESS,
                default=True,
                summary="HTTPS+SSE with httpx (HTTP/1.1 keep-alive), as most Responses clients are built",
            ),
            Transport(
                "https-raw",
                HTTPS,
                "clients.raw_http_client:RawHttpClient",
                _STATELESS,
                summary="HTTPS+SSE with a minimal HTTP/1.1 client: what HTTPS costs without a client library",
            ),
            Transport(
                "https-h2",
                HTTPS,
                "clients.https_client:HttpsH2Client",
                _STATELESS,
                server_settings=_frozen({"http2": True}),
                summary="HTTPS+SSE over HTTP/2 (httpx + h2) against the same app served by hypercorn",
            ),
            Transport(
                "ws",
                WS,
                "clients.ws_client:WsClient",
                _CONNECTION,
                default=True,
                summary="WebSocket mode (websockets), one persistent connection, connection-local cache",
            ),
            Transport(
                "ws-long",
                WS,
                "clients.ws_long_client:WsLongClient",
                ("connection",),
                raw=False,
                summary="option A over WebSocket mode: the whole rollout one long response, paused at each tool "
                "call (response.done) and resumed by response.append; the design OpenAI's write-up says was not "
                "shipped",
            ),
            Transport(
                "grpc",
                GRPC,
                "clients.grpc_client:GrpcClient",
                _CONNECTION,
                default=True,
                summary="gRPC bidi Connect stream (grpc.aio), typed protobuf messages",
            ),
            Transport(
                "grpc-json",
                GRPC,
                "clients.grpc_client:GrpcJsonClient",
                _CONNECTION,
                summary="gRPC Connect stream carrying the WebSocket JSON objects (serialization vs transport)",
            ),
            Transport(
                "grpc-create",
                GRPC,
                "clients.grpc_client:GrpcCreateClient",
                _STATELESS,
                summary="one gRPC Create call per request (stateless, like HTTPS)",
            ),
            Transport(
                "sdk-https",
                HTTPS,
                "clients.sdk_client:SdkHttpsClient",
                _STATELESS,
                raw=False,
                summary="the official openai SDK: client.responses.create(stream=True)",
            ),
            Transport(
                "sdk-ws",
                WS,
                "clients.sdk_client:SdkWsClient",
                ("connection", "store"),
                raw=False,
                summary="the official openai SDK: client.responses.connect() (WebSocket mode)",
            ),
            Transport(
                "inproc",
                None,
                "clients.inproc_client:InProcClient",
                _CONNECTION,
                summary="the service called in-process, JSON-encoded but no socket: the zero-transport reference",
            ),
        )
    }
)
"""Every transport, by name (the one vocabulary of CLI flags, report columns and Locust request types)."""

DEFAULT_TRANSPORTS: tuple[str, ...] = tuple(t.name for t in TRANSPORTS.values() if t.default)


def get_transport(name: str) -> Transport:
    """The row named ``name``. Raises: ``ValueError`` naming the known transports."""
    try:
        return TRANSPORTS[name]
    except KeyError:
        raise ValueError(f"unknown transport {name!r}; known: {', '.join(TRANSPORTS)}") from None
