"""WebSocket mode end to end, the connection's life: size and lifetime limits, drops, graceful stop, and the
same protocol on the HTTPS server's own ``/v1/responses`` upgrade route. No wall-clock assertions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidStatus

from tests.e2e.test_ws_server import HI, create, raw, read_turn, turn

pytestmark = pytest.mark.timeout(60)


async def test_oversized_frame_closes_1009_with_a_reason(serve, connect):
    server = await serve("ws", max_message_bytes=64 * 1024)
    async with raw(server) as ws:
        await ws.send(create(input="x" * (100 * 1024)))
        with pytest.raises(ConnectionClosedError) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    assert "exceeds" in info.value.rcvd.reason
    client = await connect("ws", server)
    result, _ = await turn(client, {"model": "m", "input": "x" * (100 * 1024), "store": False})
    assert result.error_code == "payload_too_large"
    result, _ = await turn(client, {"model": "m", **HI, "store": False})  # the client reconnects
    assert result.success, result.error


async def test_lifetime_limit_sends_the_error_then_closes(serve, connect):
    server = await serve("ws", connection_lifetime_s=0.3)
    async with raw(server) as ws:
        (err,) = await read_turn(ws)
        assert err["error"]["code"] == "websocket_connection_limit_reached" and err["status"] == 400
        assert "connection limit reached" in err["error"]["message"]
        with pytest.raises(ConnectionClosedOK) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1000
    client = await connect("ws", server)
    await asyncio.wait_for(_closed(client), 10)
    result, _ = await turn(client, {"model": "m", **HI})
    assert result.error_code == "websocket_connection_limit_reached", result.error
    await client.reconnect()
    result, _ = await turn(client, {"model": "m", **HI})
    assert result.success, result.error


async def _closed(client: Any) -> None:
    await client._ws.wait_closed()


async def test_dropped_connection_stops_decoding_and_frees_its_state(serve):
    server = await serve("ws", profile="frontier")  # ~65 tok/s: 500 tokens would take ~8 s
    engine: Any = server.service.engine
    connections = server.extra["connections"]
    async with raw(server) as ws:
        await ws.send(create(input="long", metadata={"tool_calls": "0", "answer_tokens": "500"}))
        deltas = 0
        while deltas < 3:
            deltas += orjson.loads(await ws.recv())["type"] == "response.output_text.delta"
        (conn,) = connections
        ws.transport.abort()  # no close frame: a dropped peer
    await asyncio.wait_for(conn.closed.wait(), 10)
    assert not conn.tasks and len(conn.session.cache) == 0
    decoded = engine.stats.decoded_tokens
    await asyncio.sleep(0.2)  # ~13 token times at 65 tok/s
    assert engine.stats.decoded_tokens == decoded < 500
    async with raw(server) as ws:  # and it keeps serving others
        await ws.send(create(input="hi", metadata={"tool_calls": "0", "answer_tokens": "2"}))
        assert (await read_turn(ws))[-1]["type"] == "response.completed"


async def test_graceful_stop_lets_the_response_in_flight_finish(serve):
    server = await serve("ws", profile="fast", grace_s=10.0)
    async with raw(server) as ws:
        await ws.send(create(input="x", metadata={"tool_calls": "0", "answer_tokens": "60"}))
        assert orjson.loads(await ws.recv())["type"] == "response.created"
        stopping = asyncio.create_task(server.stop())
        events = await read_turn(ws)
        assert events[-1]["type"] == "response.completed"
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        await stopping
    assert server.service.usage.count() == 1


async def test_https_server_upgrade_route_speaks_the_same_protocol(serve, connect):
    server = await serve("https", api_key="sk-right", max_message_bytes=64 * 1024, profile="fast")
    key = {"Authorization": "Bearer sk-right"}
    with pytest.raises(InvalidStatus) as info:
        async with raw(server, additional_headers={"Authorization": "Bearer sk-wrong"}):
            pass
    assert info.value.response.status_code == 401
    async with raw(server, additional_headers=key) as ws:  # queued, in order; then a bad frame; still serving
        await ws.send(create(input="one", metadata={"tool_calls": "0", "answer_tokens": "30"}))
        await ws.send(create(input="two", metadata={"tool_calls": "0", "answer_tokens": "3"}))
        await ws.send('{"type": "response.create", "model": 5}')
        first, second, (err,) = await read_turn(ws), await read_turn(ws), await read_turn(ws)
        assert first[-1]["response"]["usage"]["output_tokens"] > second[-1]["response"]["usage"]["output_tokens"]
        assert err["error"]["param"] == "model"
        await ws.send(
            create(
                previous_response_id=second[-1]["response"]["id"],
                input="more",
                **{"metadata": {"tool_calls": "0", "answer_tokens": "2"}},
            )
        )
        last = await read_turn(ws)
        assert last[-1]["response"]["turnbench"]["state"] == "connection"
        await ws.send(create(input="x" * (100 * 1024)))
        with pytest.raises(ConnectionClosedError) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    client = await connect("ws", server)  # the ws client takes the https:// base URL as the SDK does
    result, _ = await turn(client, {"model": "m", **HI})
    assert result.success, result.error
