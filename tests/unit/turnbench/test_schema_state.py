"""Schema validation errors, the error tree, the connection cache bounds, settings parsing."""

from __future__ import annotations

import msgspec
import pytest

from turnbench import errors
from turnbench.schema import (
    FunctionCallOutputItem,
    MessageItem,
    Response,
    ResponseCompleted,
    convert_item,
    decode_event,
    decode_request,
    encode,
)
from turnbench.settings import STATE_STRATEGIES, Settings, parse_stage_map
from turnbench.state import ConversationRecord, StateCache, StoreLimits
from turnbench.transports import STATES, TRANSPORTS


def test_request_accepts_sdk_fields_and_rejects_unknown_ones() -> None:
    req = decode_request(b'{"model":"m","input":"x","reasoning":{"effort":"low"},"stream":true,"user":"u"}')
    assert req.model == "m" and req.stream is True
    with pytest.raises(errors.InvalidRequestError) as info:
        decode_request(b'{"model":"m","input":"x","bogus":1}')
    assert info.value.code == "unknown_parameter" and info.value.param == "bogus"


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        (b'{"model": 1}', "model"),
        (b'{"input": "x"}', "model"),
        (b'{"model": "m", "store": "yes"}', "store"),
        (b'{"model": "m", "tools": [{"type": "function"}]}', "tools[0].name"),
        (b'{"model": "m", "metadata": {"k": 1}}', "metadata"),
    ],
)
def test_wrong_type_or_missing_field_names_the_param(payload: bytes, param: str) -> None:
    with pytest.raises(errors.InvalidRequestError) as info:
        decode_request(payload)
    assert info.value.type == "invalid_request_error"
    assert info.value.param is not None and info.value.param.startswith(param)


def test_malformed_json_is_invalid_json() -> None:
    with pytest.raises(errors.InvalidRequestError) as info:
        decode_request(b"{nope")
    assert info.value.code == "invalid_json" and info.value.http_status == 400


def test_items_convert_with_and_without_type() -> None:
    assert isinstance(convert_item({"role": "user", "content": "hi"}, 0), MessageItem)
    item = convert_item({"type": "function_call_output", "call_id": "c", "output": "o"}, 0)
    assert isinstance(item, FunctionCallOutputItem)
    with pytest.raises(errors.InvalidRequestError) as info:
        convert_item({"type": "image", "x": 1}, 3)
    assert info.value.param == "input[3].type"


def test_event_round_trip_and_response_shape() -> None:
    resp = Response(id="resp_1", created_at=1, status="completed", model="m")
    ev = ResponseCompleted(sequence_number=9, response=resp)
    data = encode(ev)
    assert decode_event(data) == ev
    body = msgspec.json.decode(data)
    for required in ("id", "created_at", "model", "object", "output", "parallel_tool_calls", "tool_choice", "tools"):
        assert required in body["response"]
    assert body["response"]["previous_response_id"] is None  # present, null, as the SDK expects
    assert "stream_id" not in body


def test_error_tree_carries_wire_meaning() -> None:
    e = errors.PayloadTooLargeError("too big")
    assert (e.http_status, e.ws_close, e.grpc_status) == (413, 1009, "RESOURCE_EXHAUSTED")
    assert e.to_body() == {
        "error": {"message": "too big", "type": "invalid_request_error", "param": None, "code": "payload_too_large"}
    }
    limit = errors.ConnectionLimitError(60)
    assert limit.code == "websocket_connection_limit_reached"
    assert limit.message.startswith("Responses websocket connection limit reached (60 minutes).")
    wrapped = errors.as_turnbench_error(RuntimeError("secret detail"))
    assert isinstance(wrapped, errors.ServerError) and "secret detail" not in wrapped.message


def _record(rid: str, lane: str | None, nbytes: int) -> ConversationRecord:
    resp = Response(id=rid, created_at=0, status="completed", model="m")
    return ConversationRecord(response=resp, items=[], tools=[], instructions=None, lane=lane, nbytes=nbytes)


def test_state_cache_keeps_latest_per_lane_and_respects_bounds() -> None:
    cache = StateCache(max_entries=3, max_bytes=1000)
    cache.put(_record("r1", None, 100))
    cache.put(_record("r2", None, 100))  # replaces r1 on the default lane
    assert cache.get("r1") is None and cache.get("r2") is not None
    cache.put(_record("a1", "a", 100))
    cache.put(_record("b1", "b", 100))
    cache.put(_record("c1", "c", 100))  # 4 lanes > 3 entries: least recently used goes
    assert len(cache) == 3 and cache.evictions == 1
    cache.put(_record("big", "d", 900))
    assert cache.bytes <= 1000
    with pytest.raises(errors.StateLimitError):
        cache.put(_record("huge", "e", 5000))
    assert cache.evict("big") and not cache.evict("big")


def test_settings_from_env_and_stage_maps() -> None:
    s = Settings.from_env(
        {"TURNBENCH_PROFILE": "frontier", "TURNBENCH_TLS": "off", "TURNBENCH_INJECT_MS": "safety=5,post=2"}, port=9
    )
    assert (s.profile, s.tls, s.port, dict(s.inject_ms)) == ("frontier", False, 9, {"safety": 5.0, "post": 2.0})
    assert Settings(api_key="k").as_dict()["api_key"] == "***"
    with pytest.raises(ValueError):
        parse_stage_map("nosuchstage=1")


def test_state_bounds_and_strategies_are_defined_once() -> None:
    """The store's and the connection cache's default bounds are the settings'; the transport table's state
    names are the settings' vocabulary."""
    d = Settings()
    lim = StoreLimits()
    assert (lim.max_entries, lim.max_bytes, lim.ttl_s) == (d.store_max_entries, d.store_max_bytes, d.store_ttl_s)
    cache = StateCache()
    assert (cache.max_entries, cache.max_bytes) == (d.cache_entries, d.cache_bytes)
    assert STATES is STATE_STRATEGIES and STATE_STRATEGIES == ("full", "store", "connection")
    assert all(t.states and set(t.states) <= set(STATE_STRATEGIES) for t in TRANSPORTS.values())
