"""An httpcore network backend on plain asyncio streams, for the httpx client (``network_backend="asyncio"``).

httpx's stock backend is anyio's. This one is the same httpx, httpcore and h11 over
``asyncio.open_connection`` (asyncio and uvloop loops), without anyio's cancel scopes and extra loop
passes, and with the request head and body written in one ``send``: about 20% less client CPU per request
(see ``scripts/probes/https_overhead.py``), so the benchmark does not blame HTTPS for a client library's cost
(docs/design.md). httpx takes no backend argument: :class:`clients.https_client.HttpsClient` puts it into the
pool of the transport it builds.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore

__all__ = ["StreamsBackend"]


class _Stream(httpcore.AsyncNetworkStream):
    """An httpcore stream on asyncio streams. Writes are held until the next read (HTTP/1.1 always reads
    after writing a request), so a request head and its body leave in one ``send``. With ``hold=False``
    (HTTP/2: streams share the connection and one task may sit in ``read`` while another writes) they
    leave on the next event-loop pass, still coalesced within one."""

    __slots__ = ("_hold", "_out", "_r", "_soon", "_w")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hold: bool = True) -> None:
        self._r, self._w = reader, writer
        self._out: list[bytes] = []
        self._hold = hold
        self._soon = False

    def _flush(self) -> None:
        out = self._out
        self._w.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _flush_soon(self) -> None:
        self._soon = False
        if self._out and not self._w.is_closing():
            self._flush()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        try:
            if self._out:
                self._flush()
            if timeout is None:
                return await self._r.read(max_bytes)
            async with asyncio.timeout(timeout):
                return await self._r.read(max_bytes)
        except TimeoutError as exc:
            raise httpcore.ReadTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if buffer:
            self._out.append(buffer)
            if len(self._out) > 64:  # a streamed upload: do not hold it all
                self._flush()
                try:
                    async with asyncio.timeout(timeout):
                        await self._w.drain()
                except TimeoutError as exc:
                    raise httpcore.WriteTimeout(str(exc)) from exc
                except OSError as exc:
                    raise httpcore.WriteError(str(exc)) from exc
            elif not self._hold and not self._soon:
                self._soon = True
                asyncio.get_running_loop().call_soon(self._flush_soon)

    async def aclose(self) -> None:
        if not self._hold:
            self._flush_soon()  # HTTP/2's GOAWAY
        self._w.close()

    async def start_tls(  # httpcore's interface passes timeouts as arguments
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._w.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:  # ssl.SSLError included
            raise httpcore.ConnectError(str(exc)) from exc
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":  # an idle keep-alive connection the server closed
            return self._r.at_eof()
        name = {"client_addr": "sockname", "server_addr": "peername"}.get(info, info)
        return self._w.get_extra_info(name)


class StreamsBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend on ``asyncio.open_connection`` (asyncio and uvloop loops). ``hold_writes``:
    see :class:`_Stream` (False for HTTP/2)."""

    def __init__(self, hold_writes: bool = True) -> None:
        self.hold_writes = hold_writes

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        sock: socket.socket | None = writer.get_extra_info("socket")
        for option in socket_options or ():
            if sock is not None:
                sock.setsockopt(*option)
        return _Stream(reader, writer, self.hold_writes)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
