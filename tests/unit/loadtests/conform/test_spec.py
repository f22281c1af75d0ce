"""The specification's schemas (derived from the ``openresponses-types`` package, or a document the user gives)
and validation against them: a conforming object passes, a broken one is caught with the path of what broke; the
SSE ``error`` event of the real API's flat shape passes with a note."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import openresponses_types
import pytest

from loadtests.conform.spec import FLAT_SSE_ERROR_NOTE, PACKAGE, Spec, derived_document, load_spec


@pytest.fixture(scope="module")
def spec() -> Spec:
    return load_spec()


def response(**over: Any) -> dict[str, Any]:
    """A complete response object as the specification's example has it."""
    r: dict[str, Any] = {
        "id": "resp_1",
        "object": "response",
        "created_at": 1,
        "completed_at": 2,
        "status": "completed",
        "incomplete_details": None,
        "model": "m",
        "previous_response_id": None,
        "instructions": None,
        "output": [
            {
                "type": "message",
                "id": "msg_1",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "hi", "annotations": []}],
            }
        ],
        "error": None,
        "tools": [],
        "tool_choice": "auto",
        "truncation": "disabled",
        "parallel_tool_calls": True,
        "text": {"format": {"type": "text"}},
        "top_p": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "top_logprobs": 0,
        "temperature": 1.0,
        "reasoning": None,
        "usage": {
            "input_tokens": 3,
            "output_tokens": 1,
            "total_tokens": 4,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
        "max_output_tokens": None,
        "max_tool_calls": None,
        "store": True,
        "background": False,
        "service_tier": "default",
        "metadata": {},
        "safety_identifier": None,
        "prompt_cache_key": None,
    }
    r.update(over)
    return r


def test_the_schemas_are_derived_from_the_package_and_carry_its_spec_version(spec: Spec) -> None:
    assert spec.source == PACKAGE == f"openresponses-types {openresponses_types.__version__}"
    assert (spec.title, spec.version) == ("Open Responses", openresponses_types.__spec_version__)
    for name in ("ResponseResource", "CompactResource", "ErrorStreamingEvent", "WebSocketErrorEvent"):
        assert spec.schemas[name]["type"] == "object", name
    refs = json.dumps(spec.schemas).count('"$ref": "#/components/schemas/')
    assert refs > 100  # the models refer to one another, each by its component's name


def test_a_supplied_document_is_used_as_it_is(spec: Spec, tmp_path: Path) -> None:
    """``--spec PATH``: its components, not the package's; here the derived document with one field tightened
    (the output text delta's ``logprobs`` may not be null), which the derived schemas allow."""
    doc = copy.deepcopy(derived_document())
    doc["info"]["version"] = "2099-01-01"
    delta_schema = doc["components"]["schemas"]["ResponseOutputTextDeltaStreamingEvent"]
    delta_schema["properties"]["logprobs"] = {"type": "array"}
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    supplied = load_spec(path)
    assert (supplied.source, supplied.version) == (str(path), "2099-01-01")
    assert supplied.event_schemas == spec.event_schemas
    delta = {
        "type": "response.output_text.delta",
        "sequence_number": 1,
        "item_id": "m",
        "output_index": 0,
        "content_index": 0,
        "delta": "hi",
        "logprobs": None,
    }
    assert spec.check_event(delta, transport="https") == ([], [])
    violations, _ = supplied.check_event(delta, transport="https", prefix="e")
    assert [v.path for v in violations] == ["e.logprobs"]


def test_a_file_that_is_not_an_openapi_document_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text('{"openapi": "3.1.0"}', encoding="utf-8")
    (tmp_path / "b.json").write_text("not json", encoding="utf-8")
    with pytest.raises(ValueError, match="no components/schemas"):
        load_spec(tmp_path / "a.json")
    with pytest.raises(ValueError, match="cannot read"):
        load_spec(tmp_path / "b.json")
    with pytest.raises(ValueError, match="cannot read"):
        load_spec(tmp_path / "missing.json")


def test_the_derived_unions_are_any_of_and_still_tell_the_output_items_apart(spec: Spec) -> None:
    """pydantic writes a union as ``anyOf`` (the specification has ``oneOf`` + ``discriminator``): the output
    items still differ by their ``type`` constant, so a message with a function call's ``type`` is refused."""
    assert "oneOf" not in json.dumps(spec.schemas)
    r = response()
    r["output"][0]["type"] = "function_call"
    assert spec.check("ResponseResource", r)


def test_every_streaming_event_type_has_its_schema(spec: Spec) -> None:
    events = spec.event_schemas
    assert events["response.created"] == "ResponseCreatedStreamingEvent"
    assert events["response.function_call_arguments.done"] == "ResponseFunctionCallArgumentsDoneStreamingEvent"
    assert len(events) == 24  # every event of the text/event-stream oneOf


def test_a_complete_response_conforms(spec: Spec) -> None:
    assert spec.check("ResponseResource", response()) == []


def test_a_missing_field_is_caught_with_its_parent_path(spec: Spec) -> None:
    r = response()
    del r["usage"]
    (v,) = spec.check("ResponseResource", r, "response")
    assert v.path == "response" and "'usage' is a required property" in v.message


def test_a_wrong_nested_value_is_caught_at_its_path(spec: Spec) -> None:
    r = response()
    r["output"][0]["status"] = None
    violations = spec.check("ResponseResource", r, "response")
    assert violations and violations[0].path.startswith("response.output[0]")
    assert str(violations[0]).startswith("response.output[0]")


def test_text_null_is_a_violation(spec: Spec) -> None:
    (v,) = spec.check("ResponseResource", response(text=None))
    assert v.path == "text"


def test_an_event_is_checked_against_the_schema_of_its_type(spec: Spec) -> None:
    ok = {"type": "response.completed", "sequence_number": 9, "response": response()}
    assert spec.check_event(ok, transport="https") == ([], [])
    bad = copy.deepcopy(ok)
    del bad["response"]["completed_at"]
    violations, _ = spec.check_event(bad, transport="ws", prefix="events[3]")
    assert violations[0].path == "events[3].response" and "completed_at" in violations[0].message
    delta = {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "m", "output_index": 0}
    violations, _ = spec.check_event(delta, transport="https")
    assert any("'content_index' is a required property" in v.message for v in violations)


def test_an_unknown_event_type_is_a_violation(spec: Spec) -> None:
    violations, _ = spec.check_event({"type": "response.bogus", "sequence_number": 0}, transport="https", prefix="e")
    assert [v.path for v in violations] == ["e.type"]
    violations, _ = spec.check_event(["not", "an", "object"], transport="https")
    assert violations and "JSON object" in violations[0].message


def test_the_sse_error_event_may_be_the_real_apis_flat_shape_and_is_noted(spec: Spec) -> None:
    nested = {
        "type": "error",
        "sequence_number": 4,
        "error": {"type": "server_error", "code": None, "message": "boom", "param": None},
    }
    flat = {"type": "error", "sequence_number": 4, "code": "server_error", "message": "boom", "param": None}
    assert spec.check_event(nested, transport="https") == ([], [])
    assert spec.check_event(flat, transport="https") == ([], [FLAT_SSE_ERROR_NOTE])
    neither = {"type": "error", "sequence_number": 4}
    violations, notes = spec.check_event(neither, transport="https")
    assert violations and notes == []


def test_a_websocket_error_is_the_websocket_error_event(spec: Spec) -> None:
    ws_error = {
        "type": "error",
        "status": 400,
        "error": {"type": "invalid_request_error", "code": "previous_response_not_found", "message": "gone"},
    }
    assert spec.check_event(ws_error, transport="ws") == ([], [])
    flat = {"type": "error", "code": "previous_response_not_found", "message": "gone"}
    violations, _ = spec.check_event(flat, transport="ws")
    assert violations  # no status, no nested error: the flat SSE shape is not accepted over WebSocket mode


def test_an_unknown_schema_name_is_refused(spec: Spec) -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        spec.check("NoSuchSchema", {})
