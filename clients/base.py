"""The client interface every transport implements, and the table lookup that makes a client by name.

A client frames and decodes one transport; what its events mean, and the record a turn leaves, belong to
:mod:`clients.record` (re-exported here: ``TurnRecorder``, ``TurnResult``, ``RolloutResult``). Which class
serves which transport is one row of :data:`turnbench.transports.TRANSPORTS`.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar

from clients.record import RolloutResult, TurnRecorder, TurnResult
from turnbench.transports import get_transport

__all__ = [
    "ClientConfig",
    "ResponsesClient",
    "RolloutResult",
    "TurnRecorder",
    "TurnResult",
    "client_class",
    "make_client",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClientConfig:
    """How to reach a server; the same for every transport.

    ``url`` is the server's base URL as :class:`servers.base.RunningServer` prints it: ``https://H:P/v1``,
    ``wss://H:P/v1`` (clients append ``/responses``, as the official SDK does) or ``H:P`` for gRPC.
    ``options`` carries transport-specific knobs (``new_connection``, ``codec``, ``method`` …), each
    documented on its client class.
    """

    url: str
    api_key: str | None = None
    ssl_context: ssl.SSLContext | None = None  # None: plaintext
    ca_pem: bytes | None = None  # the CA as PEM, for clients that take bytes (grpc)
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


class ResponsesClient(abc.ABC):
    """The interface every transport client implements; usable as an async context manager.

    Constructed as ``cls(config)``. ``create_raw`` sends a payload byte-for-byte (malformed input tests).

    ``create`` must not raise for transport or protocol errors: it fills ``recorder.fail`` and returns
    ``{}``. :meth:`safe_create` enforces that for callers that must never see an exception.

    ``serves_compact``: whether :meth:`compact` works on this client's own connection (``POST
    /v1/responses/compact`` is an HTTPS route: the HTTPS clients and ``inproc`` have it; a WebSocket or gRPC
    client compacts through an HTTPS client of the same deployment).
    """

    transport: ClassVar[str]
    serves_compact: ClassVar[bool] = False

    def __init__(self, config: ClientConfig) -> None:
        self.config = config

    async def create_raw(self, payload: bytes, *, recorder: TurnRecorder) -> dict[str, Any]:
        """Send ``payload`` unmodified as one request (JSON transports); for malformed-input tests."""
        raise NotImplementedError(f"{self.transport} client has no raw mode")

    @abc.abstractmethod
    async def connect(self) -> float | None:
        """Open the connection. Returns: TCP+TLS+handshake time in ms, or None if connectionless/lazy."""

    @abc.abstractmethod
    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """Send one ``response.create`` and hand each event it gets back to ``recorder`` (which interprets
        it: :meth:`TurnRecorder.interpret`) until the turn ends.

        Returns: the Response object dict from the terminal event, or ``{}`` after a failure.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the connection; idempotent."""

    async def compact(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """``POST /v1/responses/compact`` with ``body``, recorded on ``recorder`` like a turn (the reply is one
        JSON object, recorded as the terminal event). Never raises for transport or protocol errors.

        Returns: the compacted response (``output``: the user messages, then one compaction item), or ``{}``
        after a failure. Raises: ``NotImplementedError`` where :attr:`serves_compact` is false.
        """
        raise NotImplementedError(
            f"{self.transport}: POST /v1/responses/compact is an HTTPS route; compact through an HTTPS client of "
            "the same deployment"
        )

    async def reconnect(self) -> float | None:
        """Close, then connect: a fresh connection (a connection-local cache starts empty), as the agent
        loop asks for after a lost connection. Returns: the connect time in ms (None if connectionless).
        Raises: what :meth:`connect` raises when no connection can be opened.
        """
        await self.close()
        return await self.connect()

    async def connect_for(self, recorder: TurnRecorder) -> bool:
        """Connect lazily for a turn: the handshake time goes on the turn's ``connect_ms`` (apart from
        its latency); a failure is recorded as ``connection_error``. Returns: whether the client is connected.
        """
        try:
            ms = await self.connect()
        except Exception as exc:
            recorder.fail(f"could not connect to {self.config.url}: {type(exc).__name__}: {exc}", "connection_error")
            return False
        if recorder.connect_ms is None:
            recorder.connect_ms = ms
        return True

    async def safe_create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        """``create``, with any exception a client let escape recorded as a failure (cancellation passes)."""
        try:
            return await self.create(body, recorder=recorder)
        except Exception as exc:
            recorder.fail(f"{type(exc).__name__}: {exc}", "client_exception")
            return {}

    async def __aenter__(self) -> ResponsesClient:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def as_create_event(body: bytes) -> bytes:
    """A raw ``response.create`` body as a connection's client event (WebSocket frame, gRPC ``Connect`` json):
    ``"type":"response.create"`` put in front, the rest byte for byte (a ``type`` inside still wins: the last
    key counts), so the same malformed HTTP bodies test every transport. Not a JSON object: unchanged."""
    if not body.lstrip().startswith(b"{"):
        return body
    rest = body.lstrip()[1:]
    return b'{"type":"response.create"' + (b"" if rest.lstrip().startswith(b"}") else b",") + rest


def client_class(transport: str) -> type[ResponsesClient]:
    """The client class of ``transport``, imported from the module its row of the transport table names.

    Raises: ``ValueError`` for a name that is not in the table.
    """
    row = get_transport(transport)
    cls: type[ResponsesClient] = getattr(importlib.import_module(row.client_module), row.client_class)
    return cls


def make_client(transport: str, config: ClientConfig) -> ResponsesClient:
    """A new, unconnected client of ``transport`` for ``config``."""
    return client_class(transport)(config)
