"""The network emulator: what it carries arrives whole and in order, no earlier than the round trip and the
link's rate allow (lower bounds only: a busy machine may add time, never remove it)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from loadtests.execution.netem import Link, serve


def test_link_serializes_at_its_rate_then_adds_the_delay() -> None:
    link = Link(delay_s=0.01, rate_bytes_s=1000.0)
    assert link.arrival(0.0, 500) == pytest.approx(0.51)  # 0.5 s on the wire, then 10 ms
    assert link.arrival(0.1, 500) == pytest.approx(1.01)  # waits for the first to leave
    assert Link(0.02, None).arrival(5.0, 10**9) == pytest.approx(5.02)


async def echo_server() -> asyncio.Server:
    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_round_trips_take_at_least_the_rtt_and_bytes_arrive_intact() -> None:
    upstream = await echo_server()
    proxy = await serve(("127.0.0.1", upstream.sockets[0].getsockname()[1]), rtt_ms=40)
    r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
    rtts = []
    for _ in range(3):
        t0 = time.perf_counter()
        w.write(b"ping")
        assert await r.readexactly(4) == b"ping"
        rtts.append(time.perf_counter() - t0)
    assert min(rtts) >= 0.039
    blob = os.urandom(3 * 65536 + 17)
    w.write(blob)
    assert await r.readexactly(len(blob)) == blob
    w.write_eof()
    assert await r.read() == b""  # the half-close went through and the server's close came back
    w.close()
    await w.wait_closed()
    await proxy.aclose()
    upstream.close()
    await upstream.wait_closed()


async def test_bandwidth_paces_a_large_transfer() -> None:
    upstream = await echo_server()
    proxy = await serve(("127.0.0.1", upstream.sockets[0].getsockname()[1]), rtt_ms=0, bandwidth_mbps=8)
    r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
    blob = os.urandom(200_000)  # 0.2 s each way at 1 MB/s
    t0 = time.perf_counter()
    w.write(blob)
    assert await r.readexactly(len(blob)) == blob
    assert time.perf_counter() - t0 >= 0.2
    w.close()
    await w.wait_closed()
    await proxy.aclose()
    upstream.close()
    await upstream.wait_closed()
