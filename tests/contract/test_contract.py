"""One contract, run unchanged over every transport of the table on real loopback sockets (TLS on, port 0).

The cases are read from ``turnbench.transports.TRANSPORTS``: a new row joins this suite by itself. The
in-process reference (``inproc``: the service called directly) fixes what every transport must produce for the
same seed. The connection behaviour WebSocket mode and gRPC ``Connect`` share is in ``test_connection.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

from clients.agent import Toolbox, run_rollout
from clients.base import ClientConfig, RolloutResult, TurnRecorder, make_client
from servers.base import start_server
from tests.conftest import client_config
from tests.helpers import usage_rows
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.transports import SERVER_PROTOCOLS, TRANSPORTS, get_transport

pytestmark = pytest.mark.timeout(120)

# every row of the transport table with a server: (client transport, the server it starts, its states). The
# server is started by the transport's name, so one that needs its own settings (https-h2) gets them.
CASES: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = [
    (name, name, row.states, {}) for name, row in TRANSPORTS.items() if row.server is not None
]
ROLLOUT_CASES = [pytest.param(c, s, st, o, id=f"{c}-{st}") for c, s, sts, o in CASES for st in sts]
# the official SDK cannot send malformed bytes: it joins the rollout contract only
TRANSPORT_CASES = [pytest.param(c, s, o, id=c) for c, s, _, o in CASES if TRANSPORTS[c].raw]
META = {"tool_calls": "20", "seed": "7"}


class EventLog(TurnRecorder):
    """A recorder that also keeps the event types in arrival order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.types: list[str] = []

    def on_event(self, event_type: str, nbytes: int = 0, *, t_ns: int | None = None) -> None:
        self.types.append(event_type)
        super().on_event(event_type, nbytes, t_ns=t_ns)


@pytest.fixture(scope="module")
def reference() -> RolloutResult:
    """The rollout as the service produces it with no transport at all."""
    import asyncio

    async def run() -> RolloutResult:
        service = ResponsesService(Settings(profile="instant", usage_db=":memory:"))
        client = make_client("inproc", ClientConfig(url="", options={"service": service}))
        await client.connect()
        result = await run_rollout(client, state="connection", toolbox=Toolbox(), metadata=META)
        await client.close()
        await service.drain()
        service.close()
        return result

    return asyncio.run(run())


@pytest.mark.parametrize(("client_t", "server_t", "state", "options"), ROLLOUT_CASES)
async def test_rollout_matches_reference(serve, connect, reference, client_t, server_t, state, options):
    server = await serve(server_t)
    client = await connect(client_t, server, **options)
    result = await run_rollout(client, state=state, toolbox=Toolbox(), metadata=META)
    assert result.success, result.error
    assert len(result.turns) == 21
    assert result.tool_calls == reference.tool_calls
    assert result.final_output == reference.final_output
    assert all(t.ttft_ms is not None and t.ttft_ms > 0 for t in result.turns)
    # a continuation resolves from the connection cache when the transport has one (even with store=true:
    # the cache answers first, the store is the fallback), else from the store
    expected = {
        "full": "full",
        "connection": "connection",
        "store": "connection" if get_transport(client_t).supports_connection_state else "store",
    }[state]
    states = [row["state"] for row in await usage_rows(server)]
    if client_t == "ws-long":  # option A: the whole rollout was one response, started with the full context
        assert states == ["full"] and len({t.response_id for t in result.turns}) == 1
        return
    assert set(states) == ({"full"} | {expected})
    assert states[-1] == expected


async def _one_turn(client, body, log_cls=EventLog) -> tuple[EventLog, dict[str, Any]]:
    rec = log_cls(client.transport, "full")
    rec.scheduled()
    response = await client.safe_create(body, recorder=rec)
    return rec, response


TOOLS = Toolbox().definitions()


@pytest.mark.parametrize(("client_t", "server_t", "options"), TRANSPORT_CASES)
async def test_event_order(serve, connect, client_t, server_t, options):
    server = await serve(server_t)
    client = await connect(client_t, server, **options)
    rec, resp = await _one_turn(
        client, {"model": "m", "input": "go", "tools": TOOLS, "store": False, "metadata": {"tool_calls": "1"}}
    )
    t = rec.types
    assert t[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert t[3:-3] and set(t[3:-3]) == {"response.function_call_arguments.delta"}
    assert t[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert resp["output"][0]["type"] == "function_call"
    rec, resp = await _one_turn(
        client, {"model": "m", "input": "go", "store": False, "metadata": {"tool_calls": "0", "answer_tokens": "12"}}
    )
    t = rec.types
    assert t[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert set(t[4:-4]) == {"response.output_text.delta"}
    assert t[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    result = rec.result()
    assert result.chunks == len(t) - 8
    assert result.output_tokens == result.chunks  # one token per delta by default
    assert set(result.server_stages) >= {"parse", "validate", "resolve", "safety", "render", "prefill"}


BAD_INPUTS = [
    pytest.param(b"{not json", "invalid_json", id="malformed-json"),
    pytest.param(b'{"model": 5, "input": "x"}', "invalid_request_error", id="wrong-type"),
    pytest.param(b'{"input": "x"}', "invalid_request_error", id="missing-model"),
    pytest.param(b'{"model": "m", "input": "x", "frobnicate": 1}', "unknown_parameter", id="unknown-field"),
    pytest.param(
        b'{"model": "m", "input": [{"type": "function_call_output", "call_id": 3, "output": "x"}]}',
        "invalid_request_error",
        id="bad-item",
    ),
    pytest.param(
        b'{"model": "m", "input": "x", "previous_response_id": "resp_nope", "store": false}',
        "previous_response_not_found",
        id="unknown-previous",
    ),
]


@pytest.mark.parametrize(("client_t", "server_t", "options"), TRANSPORT_CASES)
@pytest.mark.parametrize(("payload", "code"), BAD_INPUTS)
async def test_bad_input_gets_typed_error_and_server_keeps_serving(
    serve, connect, client_t, server_t, options, payload, code
):
    server = await serve(server_t)
    client = await connect(client_t, server, **options)
    rec = EventLog(client.transport, "full")
    rec.scheduled()
    await client.create_raw(payload, recorder=rec)
    result = rec.result()
    assert not result.success
    assert result.error_code == code, result.error
    assert result.error
    # the same client (same connection where there is one) keeps working
    rec2, resp = await _one_turn(client, {"model": "m", "input": "hi", "store": False, "metadata": {"tool_calls": "0"}})
    assert rec2.result().success, rec2.result().error
    assert resp["status"] == "completed"


@pytest.mark.parametrize(("client_t", "server_t", "options"), TRANSPORT_CASES)
async def test_oversized_request_is_refused_and_server_keeps_serving(serve, connect, client_t, server_t, options):
    server = await serve(server_t, max_body_bytes=256 * 1024, max_message_bytes=256 * 1024)
    client = await connect(client_t, server, **options)
    rec, _ = await _one_turn(client, {"model": "m", "input": "x" * (600 * 1024), "store": False})
    assert rec.result().error_code == "payload_too_large", rec.result().error
    fresh = await connect(client_t, server, **options)
    rec2, _ = await _one_turn(fresh, {"model": "m", "input": "hi", "store": False, "metadata": {"tool_calls": "0"}})
    assert rec2.result().success, rec2.result().error


@pytest.mark.parametrize(("client_t", "server_t", "options"), TRANSPORT_CASES)
async def test_wrong_api_key_is_rejected(serve, connect, client_t, server_t, options):
    server = await serve(server_t, api_key="sk-right")
    client = make_client(client_t, client_config(server, api_key="sk-wrong", **options))
    try:
        refused_at_handshake = False
        try:
            await client.connect()
        except Exception as exc:  # a connection transport may refuse at the handshake
            assert "401" in str(exc) or "UNAUTHENTICATED" in str(exc) or "invalid_api_key" in str(exc)
            refused_at_handshake = True
        if not refused_at_handshake:
            rec, _ = await _one_turn(client, {"model": "m", "input": "hi"})
            assert rec.result().error_code == "invalid_api_key", rec.result().error
    finally:
        await client.close()
    good = await connect(client_t, server, api_key="sk-right", **options)
    rec, _ = await _one_turn(good, {"model": "m", "input": "hi", "metadata": {"tool_calls": "0"}})
    assert rec.result().success, rec.result().error


@pytest.mark.parametrize("name", list(SERVER_PROTOCOLS))
async def test_a_server_closes_the_service_it_made_and_only_that(name, tls):
    own = await start_server(name, Settings(profile="instant", usage_db=":memory:"), tls=tls)
    shared = ResponsesService(Settings(profile="instant", usage_db=":memory:"))
    lent = await start_server(name, shared.settings, service=shared, tls=tls)
    await own.stop()
    await lent.stop()
    assert own.service.closed and not shared.closed
    shared.close()


class DeltaLog(EventLog):
    """An event log that also keeps the text deltas."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deltas: list[str] = []

    def interpret(self, event: Any, nbytes: int = 0, *, t_ns: int | None = None) -> Any:
        if isinstance(event, dict) and event.get("type") == "response.output_text.delta":
            self.deltas.append(event["delta"])
        return super().interpret(event, nbytes, t_ns=t_ns)


@pytest.mark.parametrize(("client_t", "server_t", "options"), TRANSPORT_CASES)
async def test_coalesced_deltas_carry_every_token_in_order(serve, connect, client_t, server_t, options):
    """Adaptive coalescing at no model time (every token ready at once): each delta event carries up to 16
    tokens, they concatenate to the final text, and usage still counts tokens, not events."""
    server = await serve(server_t, coalesce_tokens=16)
    client = await connect(client_t, server, **options)
    if hasattr(client, "record_events"):
        client.record_events = True  # the gRPC clients hand typed deltas to the recorder only when asked
    rec, resp = await _one_turn(
        client,
        {"model": "m", "input": "go", "store": False, "metadata": {"tool_calls": "0", "answer_tokens": "300"}},
        DeltaLog,
    )
    result = rec.result()
    text = resp["output"][0]["content"][0]["text"]
    assert "".join(rec.deltas) == text and len(rec.deltas) == result.chunks
    assert result.output_tokens >= 300 and result.chunks == -(-result.output_tokens // 16)  # full chunks of 16
