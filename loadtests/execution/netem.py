"""A network between the load generator and a server on loopback: a TCP proxy that delays every byte by half
the round-trip time in each direction and, optionally, serializes it at a link's bandwidth.

Loopback hides what a WAN adds: each HTTPS request pays its round trip, a new connection pays the TCP and TLS
handshakes, and bytes on the wire cost time at a link's rate. ``turnbench run --rtt-ms 20`` puts this proxy in
front of every server it starts (one proxy process per server, so its CPU is neither the client's nor the
server's); TLS passes through untouched, end to end.

The model, per direction: a chunk read at time t starts to leave when the link is free
(``max(t, previous end)``), takes ``len / bandwidth`` to serialize, and arrives ``rtt / 2`` after that; order is
kept. A half-close travels like data (it arrives after what preceded it). What it does not model: loss,
jitter, the kernel's congestion window (so a large transfer's first round trips are faster than on a real
WAN).

  python -m loadtests.execution.netem --upstream 127.0.0.1:8443 --rtt-ms 20            # prints PORT=N
  python -m loadtests.execution.netem --upstream 127.0.0.1:8443 --rtt-ms 80 --bandwidth-mbps 50 --port 9443
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
from collections.abc import Sequence

__all__ = ["Link", "Proxy", "main", "serve"]

CHUNK = 65536


class Link:
    """One direction of the emulated network: delay (s) and bandwidth (bytes/s, None: unlimited)."""

    def __init__(self, delay_s: float, rate_bytes_s: float | None) -> None:
        self.delay_s, self.rate = delay_s, rate_bytes_s
        self.free_at = 0.0

    def arrival(self, now: float, nbytes: int) -> float:
        """When ``nbytes`` read at ``now`` arrive at the other end."""
        if self.rate:
            start = max(now, self.free_at)
            self.free_at = start + nbytes / self.rate
            return self.free_at + self.delay_s
        return now + self.delay_s


async def _carry(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: Link) -> None:
    """Copy ``reader`` to ``writer`` through ``link``; end with a half-close (or a close) of ``writer``."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                else:
                    writer.close()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(CHUNK)
            queue.put_nowait((link.arrival(loop.time(), len(data)), data))
            if not data:
                break
        await sender
    except (ConnectionError, OSError):
        sender.cancel()
    finally:
        if not sender.done():
            sender.cancel()


async def _connection(
    down_r: asyncio.StreamReader,
    down_w: asyncio.StreamWriter,
    upstream: tuple[str, int],
    rtt_s: float,
    rate: float | None,
) -> None:
    try:
        up_r, up_w = await asyncio.open_connection(*upstream)
    except OSError:
        down_w.close()
        return
    try:
        for w in (up_w, down_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(
            _carry(down_r, up_w, Link(rtt_s / 2, rate)),
            _carry(up_r, down_w, Link(rtt_s / 2, rate)),
            return_exceptions=True,
        )
    finally:
        for w in (up_w, down_w):
            w.close()
        for w in (up_w, down_w):
            with contextlib.suppress(Exception):
                await w.wait_closed()


class Proxy:
    """A running emulator: ``port``, and ``aclose()`` that ends its connections too."""

    def __init__(self, upstream: tuple[str, int], rtt_s: float, rate: float | None) -> None:
        self.upstream, self.rtt_s, self.rate = upstream, rtt_s, rate
        self.tasks: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await _connection(r, w, self.upstream, self.rtt_s, self.rate)
        finally:
            self.tasks.discard(task)

    async def aclose(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self.tasks):
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


async def serve(
    upstream: tuple[str, int],
    *,
    rtt_ms: float,
    bandwidth_mbps: float | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> Proxy:
    """Start the proxy on ``host:port`` (0 picks one) in front of ``upstream``."""
    proxy = Proxy(upstream, rtt_ms / 1000.0, bandwidth_mbps * 1e6 / 8 if bandwidth_mbps else None)
    proxy.server = await asyncio.start_server(proxy._accept, host, port, reuse_address=True)
    return proxy


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.execution.netem",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the server to put the network before")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="round-trip time added (half each way)")
    p.add_argument("--bandwidth-mbps", type=float, default=None, help="link rate each way (default unlimited)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    if not host or not port.isdigit():
        p.error(f"--upstream {args.upstream!r}: expected HOST:PORT")
    if args.rtt_ms < 0 or (args.bandwidth_mbps is not None and args.bandwidth_mbps <= 0):
        p.error("--rtt-ms must be >= 0 and --bandwidth-mbps > 0")

    async def run() -> None:
        server = await serve(
            (host.strip("[]"), int(port)), rtt_ms=args.rtt_ms, bandwidth_mbps=args.bandwidth_mbps, host=args.host,
            port=args.port,
        )  # fmt: skip
        print(f"PORT={server.port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await server.aclose()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
