"""turnbench.v1: the committed generated code is current, and proto ↔ core conversion is lossless.

Property tests build core structs with hypothesis for every event kind and every item kind, convert them to
protobuf (through the wire bytes) and back, and compare equal. JSON-valued fields (parameters, annotations,
logprobs, object tool_choice, list tool output) get arbitrary JSON.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from turnbench import schema as s
from turnbench.schema import convert_item, encode, to_builtins
from turnbench.v1 import codegen
from turnbench.v1 import responses_pb2 as pb
from turnbench.v1.convert import (
    EVENT_TYPES,
    ServerEventStruct,
    Unrepresentable,
    body_to_proto,
    event_from_proto,
    event_to_proto,
    event_type,
    request_from_proto,
    request_to_proto,
    response_from_proto,
    response_to_proto,
)

INT64 = st.integers(-(2**63), 2**63 - 1)
TEXT = st.text(max_size=12)
OPT_TEXT = st.none() | TEXT
JSON = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
JSON_OBJECT = st.dictionaries(TEXT, JSON, max_size=3)
FLOAT = st.floats(allow_nan=False)  # a double carries every float, infinities included

OUTPUT_TEXT = st.builds(
    s.OutputText, text=TEXT, annotations=st.lists(JSON, max_size=2), logprobs=st.lists(JSON, max_size=2)
)
TOOL = st.builds(
    s.FunctionTool,
    name=TEXT,
    description=OPT_TEXT,
    parameters=st.none() | JSON_OBJECT,
    strict=st.none() | st.booleans(),
)
TOOL_CHOICE = TEXT | JSON_OBJECT

URL = TEXT.map(lambda t: "https://example.com/" + t)
B64 = st.binary(min_size=1, max_size=12).map(lambda b: base64.b64encode(b).decode())
ID = TEXT.filter(bool)
DETAIL = st.sampled_from(["low", "high", "auto", "original"])
# a valid part has exactly one source (the server refuses the others: tests/e2e/test_content_parts.py)
IMAGE = st.builds(s.InputImage, detail=DETAIL, image_url=URL) | st.builds(s.InputImage, detail=DETAIL, file_id=ID)
FILE_DETAIL = st.none() | st.sampled_from(["auto", "low", "high"])
FILE = st.one_of(
    st.builds(s.InputFile, file_data=B64, filename=OPT_TEXT, detail=FILE_DETAIL),
    st.builds(s.InputFile, file_id=ID, filename=OPT_TEXT, detail=FILE_DETAIL),
    st.builds(s.InputFile, file_url=URL, filename=OPT_TEXT, detail=FILE_DETAIL),
)
INPUT_ITEMS: dict[type, st.SearchStrategy[Any]] = {
    s.MessageItem: st.builds(
        s.MessageItem,
        role=st.sampled_from(["user", "assistant", "system", "developer"]),
        content=TEXT | st.lists(st.builds(s.InputText, text=TEXT) | OUTPUT_TEXT | IMAGE | FILE, max_size=3),
        id=OPT_TEXT,
        status=OPT_TEXT,
    ),
    s.FunctionCallItem: st.builds(
        s.FunctionCallItem, call_id=TEXT, name=TEXT, arguments=TEXT, id=OPT_TEXT, status=OPT_TEXT
    ),
    s.FunctionCallOutputItem: st.builds(
        s.FunctionCallOutputItem,
        call_id=TEXT,
        output=TEXT | st.lists(JSON_OBJECT, max_size=2),
        id=OPT_TEXT,
        status=OPT_TEXT,
    ),
}
OUTPUT_ITEMS: dict[type, st.SearchStrategy[Any]] = {
    s.OutputMessage: st.builds(s.OutputMessage, id=TEXT, status=TEXT, content=st.lists(OUTPUT_TEXT, max_size=2)),
    s.OutputFunctionCall: st.builds(
        s.OutputFunctionCall, id=TEXT, call_id=TEXT, name=TEXT, arguments=TEXT, status=TEXT
    ),
}
OUTPUT_ITEM = st.one_of(*OUTPUT_ITEMS.values())

RESPONSE = st.builds(
    s.Response,
    id=TEXT,
    created_at=INT64,
    status=st.sampled_from(["in_progress", "completed", "failed", "incomplete", "queued"]),
    model=TEXT,
    output=st.lists(OUTPUT_ITEM, max_size=2),
    parallel_tool_calls=st.booleans(),
    tool_choice=TOOL_CHOICE,
    tools=st.lists(TOOL, max_size=2),
    previous_response_id=OPT_TEXT,
    store=st.booleans(),
    instructions=OPT_TEXT,
    metadata=st.dictionaries(TEXT, TEXT, max_size=3),
    max_output_tokens=st.none() | INT64,
    usage=st.none()
    | st.builds(
        s.Usage,
        input_tokens=INT64,
        output_tokens=INT64,
        total_tokens=INT64,
        input_tokens_details=st.builds(s.InputTokensDetails, cached_tokens=INT64, cache_write_tokens=INT64),
        output_tokens_details=st.builds(s.OutputTokensDetails, reasoning_tokens=INT64),
    ),
    error=st.none() | st.fixed_dictionaries({"code": TEXT, "message": TEXT}),
    incomplete_details=st.none() | st.fixed_dictionaries({"reason": TEXT}),
    background=st.booleans(),
    text=st.none() | JSON_OBJECT,
    completed_at=st.none() | INT64,
    temperature=FLOAT,
    top_p=FLOAT,
    presence_penalty=FLOAT,
    frequency_penalty=FLOAT,
    top_logprobs=INT64,
    max_tool_calls=st.none() | INT64,
    truncation=st.sampled_from(["auto", "disabled"]),
    reasoning=st.builds(s.ResponseReasoning, effort=OPT_TEXT, summary=OPT_TEXT),
    service_tier=TEXT,
    prompt_cache_key=OPT_TEXT,
    prompt_cache_retention=st.sampled_from([None, "in_memory", "24h"]),
    safety_identifier=OPT_TEXT,
    user=OPT_TEXT,
    turnbench=st.none()
    | st.builds(
        s.TurnbenchExt,
        state=TEXT,
        engine=TEXT,
        prefill_tokens=INT64,
        stages=st.dictionaries(
            TEXT,
            st.builds(s.StageStat, wall_ns=INT64, cpu_ns=INT64, items=INT64, tokens=INT64, chars=INT64),
            max_size=3,
        ),
    ),
)

HEAD: dict[str, Any] = {"sequence_number": INT64, "stream_id": OPT_TEXT}
PART_HEAD: dict[str, Any] = {**HEAD, "item_id": TEXT, "output_index": INT64, "content_index": INT64}
EVENTS: dict[type, st.SearchStrategy[Any]] = {
    **{
        cls: st.builds(cls, response=RESPONSE, **HEAD)
        for cls in (
            s.ResponseCreated,
            s.ResponseInProgress,
            s.ResponseCompleted,
            s.ResponseFailed,
            s.ResponseIncomplete,
            s.ResponseDone,
        )
    },
    **{
        cls: st.builds(cls, output_index=INT64, item=OUTPUT_ITEM, **HEAD)
        for cls in (s.OutputItemAdded, s.OutputItemDone)
    },
    **{cls: st.builds(cls, part=OUTPUT_TEXT, **PART_HEAD) for cls in (s.ContentPartAdded, s.ContentPartDone)},
    s.OutputTextDelta: st.builds(s.OutputTextDelta, delta=TEXT, logprobs=st.lists(JSON, max_size=2), **PART_HEAD),
    s.OutputTextDone: st.builds(s.OutputTextDone, text=TEXT, logprobs=st.lists(JSON, max_size=2), **PART_HEAD),
    s.FunctionCallArgumentsDelta: st.builds(
        s.FunctionCallArgumentsDelta, item_id=TEXT, output_index=INT64, delta=TEXT, **HEAD
    ),
    s.FunctionCallArgumentsDone: st.builds(
        s.FunctionCallArgumentsDone, item_id=TEXT, output_index=INT64, arguments=TEXT, **HEAD
    ),
    s.ErrorEvent: st.builds(s.ErrorEvent, code=OPT_TEXT, message=TEXT, param=OPT_TEXT, **HEAD),
    s.WsErrorEvent: st.builds(
        s.WsErrorEvent,
        status=st.integers(-(2**31), 2**31 - 1),
        stream_id=OPT_TEXT,
        sequence_number=st.none() | INT64,
        error=st.builds(s.WsErrorDetail, type=TEXT, code=OPT_TEXT, message=TEXT, param=OPT_TEXT),
    ),
}
# a steer's handed-back input: typed items, or anything a refused steer held (JSON text then)
STEER_INPUT = st.none() | TEXT | st.lists(st.one_of(*INPUT_ITEMS.values()).map(to_builtins) | JSON_OBJECT, max_size=3)
EVENTS[s.SteerAccepted] = st.builds(
    s.SteerAccepted, steer=st.builds(s.SteerRef, id=TEXT, previous_response_id=TEXT), **HEAD
)
EVENTS[s.SteerPending] = st.builds(
    s.SteerPending,
    steer=st.builds(s.SteerRef, id=TEXT, previous_response_id=TEXT),
    reason=TEXT,
    required_input=st.lists(
        st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": TEXT, "name": TEXT}), max_size=2
    ),
    **HEAD,
)
EVENTS[s.SteerFailed] = st.builds(
    s.SteerFailed,
    steer=st.builds(s.SteerRef, id=OPT_TEXT, previous_response_id=TEXT, input=STEER_INPUT),
    error=st.builds(s.SteerError, code=TEXT, message=TEXT, type=TEXT),
    **HEAD,
)

REQUEST = st.builds(
    s.ResponseCreate,
    model=TEXT,
    input=TEXT | st.lists(st.one_of(*INPUT_ITEMS.values()).map(to_builtins), max_size=3),
    instructions=OPT_TEXT,
    tools=st.lists(TOOL, max_size=2),
    tool_choice=TOOL_CHOICE,
    previous_response_id=OPT_TEXT,
    store=st.booleans(),
    stream=st.booleans(),
    metadata=st.dictionaries(TEXT, TEXT, max_size=3),
    max_output_tokens=st.none() | INT64,
    parallel_tool_calls=st.booleans(),
    stream_id=OPT_TEXT,
    generate=st.booleans(),
    type=st.none() | st.just("response.create"),
    temperature=st.none() | FLOAT,
    top_p=st.none() | FLOAT,
    presence_penalty=st.none() | FLOAT,
    frequency_penalty=st.none() | FLOAT,
    top_logprobs=st.none() | INT64,
    max_tool_calls=st.none() | INT64,
    truncation=st.sampled_from([None, "auto", "disabled"]),
    reasoning=st.none()
    | st.builds(
        s.Reasoning,
        effort=st.sampled_from([None, "none", "minimal", "low", "medium", "high", "xhigh", "max"]),
        summary=st.sampled_from([None, "auto", "concise", "detailed"]),
        generate_summary=st.sampled_from([None, "auto", "concise", "detailed"]),
        context=st.sampled_from([None, "auto", "current_turn", "all_turns"]),
        mode=OPT_TEXT,
    ),
    service_tier=st.sampled_from([None, "auto", "default", "flex", "scale", "priority", "fast", "ultrafast"]),
    prompt_cache_key=OPT_TEXT,
    prompt_cache_retention=st.sampled_from([None, "in_memory", "24h"]),
    safety_identifier=OPT_TEXT,
    user=OPT_TEXT,
    text=st.none() | JSON_OBJECT,
)


def wire(msg: Any) -> Any:
    """Through the bytes, as the transport carries it."""
    return type(msg).FromString(msg.SerializeToString())


# ---------------------------------------------------------------------------------------------- codegen


def test_committed_generated_code_matches_the_proto() -> None:
    assert codegen.check() == [], "run `make proto` and commit the result"


def test_check_notices_a_changed_proto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(codegen.PROTO_ROOT, tmp_path / "protos")
    proto = tmp_path / "protos" / codegen.PROTO
    proto.write_text(proto.read_text() + "\nmessage Added { string x = 1; }\n")
    monkeypatch.setattr(codegen, "PROTO_ROOT", tmp_path / "protos")
    problems = codegen.check()
    assert problems and any("responses_pb2.py" in p for p in problems)


# ---------------------------------------------------------------------------------------------- coverage


def test_every_event_and_item_kind_has_a_strategy_and_a_proto_field() -> None:
    assert set(EVENTS) == set(get_args(ServerEventStruct)) >= set(get_args(s.Event)) | {s.WsErrorEvent}
    assert set(INPUT_ITEMS) == set(get_args(s.InputItem))
    assert set(OUTPUT_ITEMS) == set(get_args(s.OutputItem))
    oneof = {f.name for f in pb.ServerEvent.DESCRIPTOR.oneofs_by_name["event"].fields}
    assert oneof == set(EVENT_TYPES) | {"json"}
    tags = {cls.__struct_config__.tag for cls in EVENTS}
    assert tags == set(EVENT_TYPES.values())


# ---------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", list(EVENTS), ids=lambda c: c.__name__)
@given(data=st.data())
def test_event_round_trip_is_lossless(cls: type, data: st.DataObject) -> None:
    ev = data.draw(EVENTS[cls])
    se = wire(event_to_proto(ev))
    assert event_type(se) == cls.__struct_config__.tag  # type: ignore[attr-defined]
    back = event_from_proto(se)
    assert type(back) is cls
    assert back == ev
    # the JSON the WebSocket server would send is the same too (key order aside: error is a typed message)
    assert msgspec.json.decode(encode(back)) == msgspec.json.decode(encode(ev))


@given(RESPONSE)
def test_response_round_trip_is_lossless(resp: s.Response) -> None:
    assert response_from_proto(wire(response_to_proto(resp))) == resp


@pytest.mark.parametrize("cls", list(INPUT_ITEMS), ids=lambda c: c.__name__)
@given(data=st.data(), drop_type=st.booleans())
def test_input_item_round_trip_is_lossless(cls: type, data: st.DataObject, drop_type: bool) -> None:
    item = data.draw(INPUT_ITEMS[cls])
    raw = to_builtins(item)
    if drop_type and cls is s.MessageItem:
        del raw["type"]  # EasyInputMessage: the SDKs may omit it
    req = wire(body_to_proto({"model": "m", "input": [raw]}))
    (back,) = request_from_proto(req)["input"]
    assert convert_item(back, 0) == item


@given(REQUEST)
def test_request_round_trip_is_lossless(req: s.ResponseCreate) -> None:
    obj = request_from_proto(wire(request_to_proto(req)))
    back = msgspec.convert(obj, s.ResponseCreate, strict=True)
    if isinstance(req.input, list):
        assert isinstance(back.input, list)
        assert [convert_item(i, n) for n, i in enumerate(back.input)] == [
            convert_item(i, n) for n, i in enumerate(req.input)
        ]
        back = msgspec.structs.replace(back, input=req.input)
    assert back == msgspec.structs.replace(req, type=None)  # the envelope tag is implied by the message


@given(encrypted=TEXT, item_id=OPT_TEXT, created_by=OPT_TEXT)
def test_a_compaction_item_round_trips(encrypted: str, item_id: str | None, created_by: str | None) -> None:
    raw: dict[str, Any] = {"type": "compaction", "encrypted_content": encrypted}
    if item_id is not None:
        raw["id"] = item_id
    if created_by is not None:
        raw["created_by"] = created_by
    (back,) = request_from_proto(wire(body_to_proto({"model": "m", "input": [raw]})))["input"]
    assert back == raw


def test_unset_fields_are_left_to_the_core_defaults() -> None:
    obj = request_from_proto(wire(body_to_proto({"model": "m"})))
    assert obj == {"model": "m"}
    req = msgspec.convert(obj, s.ResponseCreate)
    assert (req.store, req.parallel_tool_calls, req.generate, req.tool_choice) == (True, True, True, "auto")
    obj = request_from_proto(wire(body_to_proto({"model": "m", "store": False, "input": []})))
    assert obj == {"model": "m", "store": False, "input": []}


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "bogus": 1},  # unknown parameter
        {"model": "m", "include": ["reasoning.encrypted_content"]},  # accepted-and-ignored: no typed field
        {"model": "m", "temperature": "hot"},  # a typed parameter of the wrong type
        {"model": "m", "temperature": 2**60},  # no double holds it exactly
        {"model": "m", "reasoning": "low"},  # reasoning is an object
        {"model": "m", "reasoning": {"effort": "low", "budget": 3}},  # a member the Reasoning message lacks
        {"model": 5},  # wrong type
        {"model": "m", "store": 1},  # int is not a bool
        {"model": "m", "max_output_tokens": True},  # bool is not an int
        {"model": "m", "max_output_tokens": 2**64},  # out of int64
        {"model": "m", "metadata": {"k": 1}},  # metadata values are strings
        {"model": "m", "input": 3},
        {"model": "m", "input": [{"type": "reasoning", "summary": []}]},  # an item kind the proto lacks
        {"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]},  # missing output
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "image_url": 5}]}]},
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image", "detail": ""}]}]},
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "prompt_cache_breakpoint": {}}]}]},
        {"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio", "data": "x"}]}]},
        {"model": "m", "input": [{"type": "compaction"}]},  # missing encrypted_content
        {"model": "m", "input": [{"type": "compaction", "encrypted_content": "x", "status": "completed"}]},
        {"model": "m", "tools": [{"type": "web_search"}]},
        {"model": "m", "tool_choice": None},
        {"input": "hi"},  # missing model
    ],
)
def test_bodies_the_typed_schema_cannot_carry_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(Unrepresentable):
        body_to_proto(body)


def test_ignored_parameters_left_null_and_the_ws_tag_are_dropped() -> None:
    body = {"model": "m", "type": "response.create", "temperature": None, "input": "hi"}
    assert request_from_proto(wire(body_to_proto(body))) == {"model": "m", "input": "hi"}


def test_json_variant_is_not_a_typed_event() -> None:
    se = pb.ServerEvent(json='{"type":"response.created"}')
    assert event_type(se) is None
    with pytest.raises(ValueError):
        event_from_proto(se)
