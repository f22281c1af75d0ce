"""The HTTPS transport's HTTP/2 variant (``http2=True``: the same app on hypercorn) over real loopback
sockets, port 0: rollouts agree with HTTP/1.1, errors and limits keep the connection, h2c, graceful stop.

"The same connection" is checked with HTTP/2 stream ids: httpcore reports each response's id, and a
connection numbers its client streams 1, 3, 5 …; a new connection would start again at 1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from clients.agent import Toolbox, run_rollout
from clients.base import TurnRecorder, make_client
from clients.https_client import HttpsClient
from servers.base import RunningServer
from tests.conftest import TIMEOUT_FACTOR, client_config
from tests.helpers import usage_rows

pytestmark = pytest.mark.timeout(120 * TIMEOUT_FACTOR)

META = {"tool_calls": "5", "seed": "3"}


def _http(server: RunningServer) -> httpx.AsyncClient:
    """Plain httpx speaking HTTP/2 only (ALPN h2 over TLS, prior knowledge over cleartext)."""
    verify: Any = server.tls.client_ssl_context() if server.tls else False
    return httpx.AsyncClient(verify=verify, http1=False, http2=True, trust_env=False)


async def _post(http: httpx.AsyncClient, server: RunningServer, content: Any) -> tuple[httpx.Response, int]:
    """POST and read the reply. Returns: the response and its HTTP/2 stream id."""
    r = await http.post(server.url + "/responses", content=content, headers={"content-type": "application/json"})
    assert r.http_version == "HTTP/2"
    return r, int(r.extensions["stream_id"])


@pytest.mark.parametrize("state", ["full", "store"])
async def test_rollout_over_http2_matches_http1(serve, connect, state):
    h1_server = await serve("https")
    h2_server = await serve("https", http2=True)
    assert h2_server.extra["server"] == "hypercorn" and h2_server.extra["http"] == "2"
    h1 = await connect("https", h1_server)
    h2 = await connect("https-h2", h2_server)
    assert isinstance(h1, HttpsClient) and isinstance(h2, HttpsClient)
    assert (h1.http_version, h2.http_version) == ("HTTP/1.1", "HTTP/2")
    one = await run_rollout(h1, state=state, toolbox=Toolbox(), metadata=META)
    two = await run_rollout(h2, state=state, toolbox=Toolbox(), metadata=META)
    assert one.success and two.success, (one.error, two.error)
    assert len(two.turns) == 6 and len(two.tool_calls) == 5
    assert two.tool_calls == one.tool_calls and two.final_output == one.final_output
    assert h2.http_version == "HTTP/2" and h1.http_version == "HTTP/1.1"  # every turn, not just connect
    assert all(t.ttft_ms is not None and t.chunks > 0 and t.bytes_down > 0 for t in two.turns)
    states = {row["state"] for row in await usage_rows(h2_server)}
    assert states == ({"full"} if state == "full" else {"full", "store"})


async def test_bad_json_is_400_and_the_connection_keeps_serving(serve, connect):
    server = await serve("https", http2=True)
    async with _http(server) as http:
        good = orjson.dumps({"model": "m", "input": "hi", "store": False})
        r, first = await _post(http, server, good)
        assert r.status_code == 200
        r, second = await _post(http, server, b'{"model": "m", "input": ')
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
        assert r.headers["content-type"] == "application/json"
        r, third = await _post(http, server, good)
        assert r.status_code == 200 and r.json()["status"] == "completed"
    assert (first, second, third) == (1, 3, 5)  # one connection throughout
    client = await connect("https-h2", server)  # turnbench's client records it and keeps going
    rec = TurnRecorder("https-h2", "full")
    assert await client.create_raw(b"{nope", recorder=rec) == {}
    assert rec.result().error_code == "invalid_json"
    ok = TurnRecorder("https-h2", "full")
    await client.create({"model": "m", "input": "x", "store": False}, recorder=ok)
    assert ok.result().success


async def test_oversized_body_is_413_and_the_connection_keeps_serving(serve):
    server = await serve("https", http2=True, max_body_bytes=2048)

    async def chunked() -> AsyncIterator[bytes]:  # no content-length: counted while reading
        for _ in range(8):
            yield b" " * 1024

    async with _http(server) as http:
        r, first = await _post(http, server, orjson.dumps({"model": "m", "input": "x" * 4096}))
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        assert "2048" in r.json()["error"]["message"] and "connection" not in r.headers  # HTTP/2 forbids it
        r, second = await _post(http, server, chunked())
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
        r, third = await _post(http, server, orjson.dumps({"model": "m", "input": "small", "store": False}))
        assert r.status_code == 200
    assert (first, second, third) == (1, 3, 5)


async def test_cleartext_h2c(serve, connect):
    server = await serve("https", http2=True, tls=False)
    assert server.url.startswith("http://")
    client = await connect("https-h2", server)
    assert isinstance(client, HttpsClient) and client.http_version == "HTTP/2"
    result = await run_rollout(client, state="store", toolbox=Toolbox(), metadata=META)
    assert result.success and len(result.tool_calls) == 5, result.error
    assert client.http_version == "HTTP/2"
    async with _http(server) as http:  # plain httpx, prior knowledge
        r, _ = await _post(http, server, b"{")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    h1 = await connect("https", server)  # the same port still answers HTTP/1.1
    assert isinstance(h1, HttpsClient) and h1.http_version == "HTTP/1.1"


async def test_concurrent_streams_share_one_connection(serve, connect):
    server = await serve("https", http2=True)
    client = await connect("https-h2", server)
    body = {"model": "m", "input": "x", "store": False, "metadata": {"tool_calls": "0", "answer_tokens": "16"}}
    recs = [TurnRecorder("https-h2", "full") for _ in range(12)]
    await asyncio.gather(*(client.create(body, recorder=r) for r in recs))
    results = [r.result() for r in recs]
    assert all(r.success for r in results), [r.error for r in results]
    assert len({r.chunks for r in results}) == 1 and results[0].chunks > 0
    async with _http(server) as http:  # and they really multiplex: one connection, twelve streams
        replies = await asyncio.gather(*(_post(http, server, orjson.dumps(body)) for _ in range(12)))
    assert sorted(sid for _, sid in replies) == list(range(1, 25, 2))


async def test_client_disconnect_stops_generation(serve, connect):
    server = await serve("https", http2=True, profile="frontier")  # ~65 tok/s: 500 tokens take ~8 s
    stats = server.service.engine.stats
    warm = await connect("https-h2", server)
    rec = TurnRecorder("https-h2", "full")
    await warm.create(
        {"model": "m", "input": "warm", "metadata": {"answer_tokens": "2", "tool_calls": "0"}}, recorder=rec
    )
    assert rec.result().success
    before = stats.decoded_tokens
    body = {"model": "m", "input": "long", "stream": True, "metadata": {"answer_tokens": "500", "tool_calls": "0"}}
    async with _http(server) as http, http.stream("POST", server.url + "/responses", json=body) as r:
        assert r.http_version == "HTTP/2"
        async for chunk in r.aiter_raw():
            if b"output_text.delta" in chunk:
                break  # leaving both blocks closes the stream and the connection
    deadline = asyncio.get_running_loop().time() + 10 * TIMEOUT_FACTOR
    while True:  # generation stops: the decode counter stands still
        decoded = stats.decoded_tokens
        await asyncio.sleep(0.3)  # ~20 token steps at 65 tok/s
        if stats.decoded_tokens == decoded:
            break
        assert asyncio.get_running_loop().time() < deadline, "generation kept running after the disconnect"
    assert decoded - before < 60  # ~1 s of decoding; the whole answer is ~600 tokens
    rec = TurnRecorder("https-h2", "full")  # and the server keeps serving
    await warm.create(
        {"model": "m", "input": "again", "metadata": {"answer_tokens": "2", "tool_calls": "0"}}, recorder=rec
    )
    assert rec.result().success


async def test_stop_lets_the_stream_in_flight_finish(serve, connect):
    server = await serve("https", http2=True, profile="frontier", grace_s=10.0)
    client = await connect("https-h2", server)
    rec = TurnRecorder("https-h2", "full")
    body = {"model": "m", "input": "x", "store": False, "metadata": {"tool_calls": "0", "answer_tokens": "24"}}
    turn = asyncio.create_task(client.create(body, recorder=rec))
    while rec.chunks == 0:  # streaming has begun
        assert not turn.done(), rec.result().error
        await asyncio.sleep(0.01)
    await server.stop()
    response = await turn
    assert rec.result().success and response["status"] == "completed"
    with pytest.raises(httpx.ConnectError):  # and nothing listens any more
        async with _http(server) as http:
            await http.get(server.url.removesuffix("/v1") + "/healthz")


async def test_https_h2_against_an_http1_server(serve, caplog):
    server = await serve("https")  # uvicorn: ALPN picks http/1.1
    strict = make_client("https-h2", client_config(server, require_http2=True))
    try:
        with pytest.raises(ConnectionError, match=r"HTTP/1\.1, not HTTP/2"):
            await strict.connect()
    finally:
        await strict.close()
    lenient = make_client("https-h2", client_config(server))
    try:
        with caplog.at_level(logging.WARNING, logger="turnbench.https.client"):
            await lenient.connect()
        assert "not HTTP/2" in caplog.text
        rec = TurnRecorder("https-h2", "full")
        await lenient.create({"model": "m", "input": "x", "store": False}, recorder=rec)
        assert rec.result().success
    finally:
        await lenient.close()


async def test_new_connection_per_request_over_http2(serve):
    server = await serve("https", http2=True)
    client = make_client("https-h2", client_config(server, new_connection=True))
    try:
        assert await client.connect() is not None
        for _ in range(3):
            rec = TurnRecorder("https-h2", "full")
            await client.create({"model": "m", "input": "x", "store": False}, recorder=rec)
            result = rec.result()
            assert result.success and result.connect_ms is not None and result.connect_ms > 0
            assert isinstance(client, HttpsClient) and client.http_version == "HTTP/2"
    finally:
        await client.close()
