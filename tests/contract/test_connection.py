"""The connection protocol, one contract over WebSocket mode and gRPC ``Connect`` (``turnbench/connection.py``).

Each case drives a raw connection — JSON client events in, JSON server events out — through a driver per
transport (the gRPC one uses the json codec, so the same events travel), and asserts the same outcome on
both: the request timeout is request-scoped, the lifetime limit, an unknown event type, bad auth, a bad
``stream_id``, FIFO per lane, the in-flight limit and the drain on shutdown. Real TLS sockets on 127.0.0.1,
port 0. Order of events is asserted, never how long anything took.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc
import msgspec
import orjson
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from servers.base import RunningServer
from servers.grpc_server import ERROR_CODE_KEY
from tests.conftest import TIMEOUT_FACTOR
from tests.helpers import usage_rows
from turnbench.schema import TERMINAL_TYPES
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert import event_from_proto
from turnbench.v1.convert_request import bytes_field

pytestmark = pytest.mark.timeout(90 * TIMEOUT_FACTOR)
WAIT_S = 30 * TIMEOUT_FACTOR  # the most any single read may wait: a hang fails, a slow machine does not


def tokens(n: int) -> dict[str, str]:
    return {"tool_calls": "0", "answer_tokens": str(n)}


def create(stream_id: str | None = None, answer_tokens: int = 2, **body: Any) -> dict[str, Any]:
    event = {
        "type": "response.create",
        "model": "m",
        "input": "hi",
        "store": False,
        "metadata": tokens(answer_tokens),
        **body,
    }
    if stream_id is not None:
        event["stream_id"] = stream_id
    return event


class Driver:
    """One raw connection: ``send`` a client event, ``recv`` the next server event (None once it ended);
    ``ended`` then says how: ``"close 1000"``, ``"status OK"``, or the refused call's error code."""

    ended: str | None = None

    async def send(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    async def recv(self) -> dict[str, Any] | None:
        raise NotImplementedError

    async def response(self) -> list[dict[str, Any]]:
        """Every event up to a terminal one (the connection must not end first)."""
        events: list[dict[str, Any]] = []
        while not events or events[-1]["type"] not in TERMINAL_TYPES:
            event = await self.recv()
            assert event is not None, (events, self.ended)
            events.append(event)
        return events

    async def rest(self) -> list[dict[str, Any]]:
        """Every event until the connection ends."""
        events = []
        while (event := await self.recv()) is not None:
            events.append(event)
        return events


class WsDriver(Driver):
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(event).decode())

    async def recv(self) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(WAIT_S):
                return dict(orjson.loads(await self.ws.recv(decode=False)))
        except ConnectionClosed as exc:
            self.ended = f"close {exc.rcvd.code}" if exc.rcvd is not None else "dropped"
            return None


class GrpcDriver(Driver):
    def __init__(self, call: Any) -> None:
        self.call = call

    def _ended_by(self, exc: grpc.aio.AioRpcError) -> None:
        trailer = dict(exc.trailing_metadata() or ())
        self.ended = str(trailer.get(ERROR_CODE_KEY, f"status {exc.code().name}"))

    async def send(self, event: dict[str, Any]) -> None:
        try:
            await self.call.write(bytes_field(2, orjson.dumps(event)))  # ClientEvent.json (field 2)
        except grpc.aio.AioRpcError as exc:  # the call had ended: recv() says how
            self._ended_by(exc)

    async def recv(self) -> dict[str, Any] | None:
        try:
            async with asyncio.timeout(WAIT_S):
                message = await self.call.read()
        except grpc.aio.AioRpcError as exc:
            self._ended_by(exc)
            return None
        if message is grpc.aio.EOF:
            self.ended = f"status {(await self.call.code()).name}"
            return None
        return self.decode(pb.ServerEvent.FromString(message))

    def decode(self, event: pb.ServerEvent) -> dict[str, Any]:
        """A server event as the JSON object it stands for (the json codec's, or a typed event's)."""
        if event.WhichOneof("event") == "json":
            return dict(orjson.loads(event.json))
        return dict(msgspec.to_builtins(event_from_proto(event)))


@asynccontextmanager
async def open_ws(server: RunningServer, api_key: str | None) -> AsyncIterator[Driver]:
    assert server.tls is not None
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with ws_connect(
            server.url + "/responses",
            ssl=server.tls.client_ssl_context(),
            compression=None,
            max_size=None,
            additional_headers=headers,
        ) as ws:
            yield WsDriver(ws)
    except InvalidStatus as exc:  # refused before the upgrade: the Responses error body says why
        refused = Driver()
        refused.ended = orjson.loads(exc.response.body or b"{}")["error"]["code"]
        yield refused


@asynccontextmanager
async def open_grpc(server: RunningServer, api_key: str | None) -> AsyncIterator[Driver]:
    assert server.tls is not None
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    async with grpc.aio.secure_channel(server.url, grpc.ssl_channel_credentials(server.tls.ca_pem_bytes)) as ch:
        call = ch.stream_stream("/turnbench.v1.Responses/Connect")(metadata=metadata)
        try:
            yield GrpcDriver(call)
        finally:
            call.cancel()


Opener = Callable[[RunningServer, str | None], AbstractAsyncContextManager[Driver]]
TRANSPORTS = [pytest.param(("ws", open_ws), id="ws"), pytest.param(("grpc", open_grpc), id="grpc")]


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> tuple[str, Opener]:
    value: tuple[str, Opener] = request.param
    return value


async def test_request_timeout_is_request_scoped_and_the_connection_goes_on(serve, transport):
    name, open_conn = transport
    server = await serve(name, profile="frontier", request_timeout_s=0.3)  # ~65 tok/s: 300 tokens take ~5 s
    async with open_conn(server, None) as conn:
        await conn.send(create("a", answer_tokens=300))
        events = await conn.response()
        assert events[0]["type"] == "response.created"
        assert any(e["type"] == "response.output_text.delta" for e in events)  # it was streaming
        last = events[-1]
        assert last["type"] == "response.failed" and last["stream_id"] == "a"
        assert last["response"]["error"]["code"] == "request_timeout"
        await conn.send(create("a"))  # the same lane, the same connection
        assert (await conn.response())[-1]["type"] == "response.completed"
        await conn.send(create(answer_tokens=1, input=[], previous_response_id=last["response"]["id"]))
        (err,) = await conn.response()  # the failed response was never cached
        assert err["error"]["code"] == "previous_response_not_found"


async def test_lifetime_limit_refuses_new_requests_finishes_those_in_flight_then_ends(serve, transport):
    name, open_conn = transport
    server = await serve(name, profile="frontier", connection_lifetime_s=0.5, grace_s=30.0)
    async with open_conn(server, None) as conn:
        await conn.send(create("long", answer_tokens=200))  # ~3 s at 65 tok/s: in flight at the limit
        refused: dict[str, Any] | None = None
        events: list[dict[str, Any]] = []
        for i in range(300):  # probe lane "p" until the limit refuses a request
            await conn.send(create("p", answer_tokens=1, input=f"probe {i}"))
            while refused is None:
                event = await conn.recv()
                assert event is not None, conn.ended
                events.append(event)
                if event.get("stream_id") == "p" and event["type"] in TERMINAL_TYPES:
                    if event["type"] == "error":
                        refused = event
                    break
            if refused is not None:
                break
            await asyncio.sleep(0.05)
        assert refused is not None and refused["error"]["code"] == "websocket_connection_limit_reached"
        assert refused["status"] == 400 and "connection limit reached" in refused["error"]["message"]
        events += await conn.rest()
        long = [e for e in events if e.get("stream_id") == "long"]
        assert long[0]["type"] == "response.created" and long[-1]["type"] == "response.completed"
        final = events[-1]  # the connection-level error is the last word: no lane
        assert final["type"] == "error" and "stream_id" not in final
        assert final["error"]["code"] == "websocket_connection_limit_reached"
        assert conn.ended == {"ws": "close 1000", "grpc": "status OK"}[name]


async def test_lifetime_limit_ends_an_idle_connection_too(serve, transport):
    name, open_conn = transport
    server = await serve(name, connection_lifetime_s=1.0)
    async with open_conn(server, None) as conn:
        await conn.send(create())  # served, then the connection sits idle until its lifetime is over
        assert (await conn.response())[-1]["type"] == "response.completed"
        (final,) = await conn.rest()
        assert final["error"]["code"] == "websocket_connection_limit_reached" and "stream_id" not in final
        assert conn.ended == {"ws": "close 1000", "grpc": "status OK"}[name]


async def test_unknown_event_type_is_refused_on_its_lane_and_the_connection_goes_on(serve, transport):
    name, open_conn = transport
    server = await serve(name)
    async with open_conn(server, None) as conn:
        # response.inject is the beta multi-agent event: not served here
        await conn.send({"type": "response.inject", "stream_id": "x", "response_id": "resp_1", "input": []})
        (err,) = await conn.response()
        assert err["error"]["code"] == "unknown_event_type" and err["error"]["param"] == "type"
        assert err["stream_id"] == "x" and err["status"] == 400
        await conn.send({"model": "m", "input": "no type"})
        (err,) = await conn.response()
        assert err["error"]["param"] == "type" and "stream_id" not in err
        await conn.send(create("x"))
        assert (await conn.response())[-1]["type"] == "response.completed"


@pytest.mark.parametrize("key", [None, "sk-wrong", "bearer sk-wrong"])
async def test_bad_auth_is_refused_before_any_request(serve, transport, key):
    name, open_conn = transport
    server = await serve(name, api_key="sk-right")
    async with open_conn(server, key) as conn:
        if conn.ended is None:  # gRPC: the call is refused once it is read
            await conn.send(create())
            assert await conn.recv() is None
        assert conn.ended == "invalid_api_key"
    async with open_conn(server, "sk-right") as conn:
        await conn.send(create())
        assert (await conn.response())[-1]["type"] == "response.completed"


@pytest.mark.parametrize("stream_id", ["bad lane!", "", "x" * 257])
async def test_bad_stream_id_is_refused_and_the_connection_goes_on(serve, transport, stream_id):
    name, open_conn = transport
    server = await serve(name)
    async with open_conn(server, None) as conn:
        await conn.send(create(stream_id))
        (err,) = await conn.response()
        assert err["error"]["code"] == "invalid_stream_id" and err["error"]["param"] == "stream_id"
        assert "stream_id" not in err  # answered on the default lane: the id it named is no lane
        await conn.send(create("good.lane-1"))
        events = await conn.response()
        assert events[-1]["type"] == "response.completed"
        assert {e["stream_id"] for e in events} == {"good.lane-1"}


async def test_a_lane_is_fifo_and_lanes_run_concurrently(serve, transport):
    name, open_conn = transport
    server = await serve(name, profile="frontier")
    async with open_conn(server, None) as conn:
        for i, n in enumerate((40, 2, 20)):  # the first is the slowest: a lane still answers in order
            await conn.send(create("a", answer_tokens=n, input=f"a{i}"))
        await conn.send(create("b", answer_tokens=1))  # sent last, its own lane: it does not wait for "a"
        events: list[dict[str, Any]] = []
        while sum(e["type"] in TERMINAL_TYPES for e in events) < 4:
            event = await conn.recv()
            assert event is not None, conn.ended
            events.append(event)
    lane_a = [e for e in events if e["stream_id"] == "a"]
    created = [e["response"]["id"] for e in lane_a if e["type"] == "response.created"]
    finished = [e["response"] for e in lane_a if e["type"] in TERMINAL_TYPES]
    assert [r["id"] for r in finished] == created  # answered in the order asked
    long, short, middle = (r["usage"]["output_tokens"] for r in finished)
    assert long > middle > short  # the 40-, 2- and 20-token answers, in that order
    runs: list[list[int]] = []  # sequence numbers restart at 0 per response: an interleaving would break a run
    for e in lane_a:
        if e["sequence_number"] == 0:
            runs.append([])
        runs[-1].append(e["sequence_number"])
    assert len(runs) == 3 and all(run == list(range(len(run))) for run in runs)
    terminals = [e["stream_id"] for e in events if e["type"] in TERMINAL_TYPES]
    assert terminals.index("b") < terminals.index("a")  # lane b overtook lane a's first, slow response


async def test_in_flight_limit_queues_requests_and_never_refuses_them(serve, transport):
    name, open_conn = transport
    server = await serve(name, profile="frontier", max_inflight_per_connection=2)
    async with open_conn(server, None) as conn:
        for lane in "abcde":
            await conn.send(create(lane, answer_tokens=12))
        open_now: set[str] = set()
        peak, done = 0, 0
        while done < 5:
            event = await conn.recv()
            assert event is not None, conn.ended
            assert event["type"] != "error", event
            if event["type"] == "response.created":
                open_now.add(event["stream_id"])
                peak = max(peak, len(open_now))
            elif event["type"] in TERMINAL_TYPES:
                open_now.discard(event["stream_id"])
                done += 1
                assert event["type"] == "response.completed"
    assert peak == 2


async def test_drain_on_shutdown_finishes_what_runs_refuses_new_requests_and_ends(serve, transport):
    name, open_conn = transport
    server = await serve(name, profile="frontier", grace_s=30.0)
    connections = server.extra["connections"] if name == "ws" else server.extra["servicer"].connections
    async with open_conn(server, None) as conn:
        await conn.send(create("a", answer_tokens=60))  # ~1 s at 65 tok/s
        events = [await conn.recv()]
        assert events[0] is not None and events[0]["type"] == "response.created"
        (open_conn_state,) = connections
        stopping = asyncio.create_task(server.stop())
        async with asyncio.timeout(WAIT_S):
            while not open_conn_state.draining:  # noqa: ASYNC110 -- the server's own flag, read from outside
                await asyncio.sleep(0.005)
        await conn.send(create("b"))
        events += await conn.rest()
        await stopping
    by_lane = {lane: [e for e in events if e and e.get("stream_id") == lane] for lane in ("a", "b")}
    assert by_lane["a"][-1]["type"] == "response.completed"
    assert [e["error"]["code"] for e in by_lane["b"]] == ["server_shutting_down"]
    assert conn.ended == {"ws": "close 1001", "grpc": "server_shutting_down"}[name]
    assert [row["status"] for row in await usage_rows(server)] == ["completed"]  # nothing accepted was lost


async def test_forks_of_one_parent_run_on_their_own_lanes_and_each_continues_it(serve, transport):
    """A fork: a completed response's id as previous_response_id on new lanes. The forks run side by side
    (a short one overtakes a long one), each continues the shared parent (its history is in their input), and
    the parent stays available to a later fork."""
    name, open_conn = transport
    server = await serve(name, profile="frontier")
    async with open_conn(server, None) as conn:
        await conn.send(create("main", answer_tokens=3, input="plan the work"))
        parent = await _until_terminal(conn)
        pid = parent["response"]["id"]
        for lane, n in (("sub0", 30), ("sub1", 2), ("sub2", 10)):
            await conn.send(create(lane, answer_tokens=n, input=f"sub-task {lane}", previous_response_id=pid))
        forks: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        while len(forks) < 3:
            event = await asyncio.wait_for(conn.recv(), WAIT_S)
            assert event is not None, conn.ended
            if event["type"] in TERMINAL_TYPES:
                forks[event["stream_id"]] = event
                order.append(event["stream_id"])
        assert order.index("sub1") < order.index("sub0")  # side by side: the 2-token fork finished first
        parent_tokens = parent["response"]["usage"]["input_tokens"] + parent["response"]["usage"]["output_tokens"]
        for ev in forks.values():
            assert ev["type"] == "response.completed" and ev["response"]["previous_response_id"] == pid
            assert ev["response"]["usage"]["input_tokens"] > parent_tokens  # the parent's history came along
        await conn.send(create("sub3", input="one more", previous_response_id=pid))  # the parent is still there
        last = await _until_terminal(conn)
        assert last["type"] == "response.completed" and last["stream_id"] == "sub3"


async def _until_terminal(conn: Any) -> dict[str, Any]:
    while True:
        event = await asyncio.wait_for(conn.recv(), WAIT_S)
        assert event is not None, conn.ended
        if event["type"] in TERMINAL_TYPES:
            return event


def steer(pid: str, text: Any = "Stop: answer in one word instead.", **extra: Any) -> dict[str, Any]:
    return {"type": "response.steer", "previous_response_id": pid, "input": text, **extra}


async def test_a_steered_answer_ends_incomplete_and_its_successor_starts_by_itself(serve, transport):
    """Steering mid-answer: accepted at once, the answer stops at the next token (incomplete, reason
    "steered", with the text sent so far), and a successor continues from it with the steering input, on the
    same lane, with the same settings."""
    name, open_conn = transport
    server = await serve(name, profile="frontier")  # ~65 tok/s: a 300-token answer runs for seconds
    async with open_conn(server, None) as conn:
        await conn.send(create("work", answer_tokens=300, input="write the long report"))
        events: list[dict[str, Any]] = []
        rid = None
        while not any(e["type"] == "response.output_text.delta" for e in events):
            events.append(await asyncio.wait_for(conn.recv(), WAIT_S))
            if events[-1]["type"] == "response.created":
                rid = events[-1]["response"]["id"]
        assert rid is not None
        await conn.send(steer(rid))
        seen: list[dict[str, Any]] = []
        while sum(e["type"] in TERMINAL_TYPES for e in seen) < 2:
            event = await asyncio.wait_for(conn.recv(), WAIT_S)
            assert event is not None, conn.ended
            seen.append(event)
    kinds = [e["type"] for e in seen]
    accepted = next(e for e in seen if e["type"] == "response.steer.accepted")
    assert accepted["steer"]["previous_response_id"] == rid and accepted["steer"]["id"].startswith("steer_")
    assert accepted["stream_id"] == "work"
    steered = next(e for e in seen if e["type"] == "response.incomplete")
    assert steered["response"]["id"] == rid and steered["response"]["incomplete_details"]["reason"] == "steered"
    assert steered["response"]["usage"]["output_tokens"] < 300  # it stopped early
    successor_created = [e for e in seen if e["type"] == "response.created"]
    assert len(successor_created) == 1 and kinds.index("response.created") > kinds.index("response.incomplete")
    successor = successor_created[0]["response"]
    assert successor["previous_response_id"] == rid and successor_created[0]["stream_id"] == "work"
    done = seen[-1]
    assert done["type"] == "response.completed" and done["response"]["id"] == successor["id"]


async def test_steer_errors_are_typed_and_the_connection_goes_on(serve, transport):
    name, open_conn = transport
    server = await serve(name)
    async with open_conn(server, None) as conn:
        await conn.send(steer("resp_nope"))
        failed = await asyncio.wait_for(conn.recv(), WAIT_S)
        assert failed["type"] == "response.steer.failed" and failed["error"]["code"] == "response_not_found"
        assert failed["steer"]["input"] == "Stop: answer in one word instead."  # the input is handed back
        await conn.send(create(None, answer_tokens=2))
        done = await _until_terminal(conn)
        rid = done["response"]["id"]
        await conn.send(steer(rid))
        late = await asyncio.wait_for(conn.recv(), WAIT_S)
        assert late["type"] == "response.steer.failed" and late["error"]["code"] == "response_already_completed"
        for bad in (
            steer(rid, stream_id="x"),  # no stream_id: the target decides the lane
            steer(rid, [{"role": "assistant", "content": "no"}]),
            steer(rid, []),
            {"type": "response.steer", "input": "no target"},
        ):
            await conn.send(bad)
            ev = await asyncio.wait_for(conn.recv(), WAIT_S)
            assert ev["type"] == "response.steer.failed" and ev["error"]["code"] == "invalid_input", ev
        await conn.send(create(None, answer_tokens=2))  # still serving
        assert (await _until_terminal(conn))["type"] == "response.completed"


async def test_steering_a_tool_call_waits_for_its_output_then_joins_the_continuation(serve, transport):
    """A response that stops for the client's tool keeps the steering input: response.steer.pending after
    response.completed names the call to answer, and the client's continuation gets the input prepended."""
    name, open_conn = transport
    server = await serve(name, profile="frontier")
    tools = [
        {
            "type": "function",
            "name": "read_file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        }
    ]
    async with open_conn(server, None) as conn:
        meta = {"tool_calls": "1", "answer_tokens": "4"}
        await conn.send(create("agent", input="read it", tools=tools, metadata=meta))
        first = await asyncio.wait_for(conn.recv(), WAIT_S)
        assert first["type"] == "response.created"
        rid = first["response"]["id"]
        await conn.send(steer(rid, "Also check the tests."))
        seen = []
        while not any(e["type"] == "response.steer.pending" for e in seen):
            seen.append(await asyncio.wait_for(conn.recv(), WAIT_S))
        kinds = [e["type"] for e in seen]
        assert "response.steer.accepted" in kinds and kinds.index("response.completed") < kinds.index(
            "response.steer.pending"
        )
        done = next(e for e in seen if e["type"] == "response.completed")["response"]
        call = done["output"][0]
        pending = seen[-1]
        assert pending["reason"] == "waiting_for_required_input" and pending["stream_id"] == "agent"
        assert pending["required_input"] == [
            {"type": "function_call_output", "call_id": call["call_id"], "name": call["name"]}
        ]
        out = {"type": "function_call_output", "call_id": call["call_id"], "output": "file text"}
        await conn.send(create("agent", input=[out], tools=tools, metadata=meta, previous_response_id=rid))
        cont = await _until_terminal(conn)
        assert cont["type"] == "response.completed" and cont["response"]["previous_response_id"] == rid
        # the steering message went in ahead of the tool output: the continuation's context holds both
        assert cont["response"]["usage"]["input_tokens"] > done["usage"]["input_tokens"] + 5
