"""The cases' own judgements, on made-up replies: when a reply means "not offered", what an API error must hold,
what a stream must be."""

from __future__ import annotations

from typing import Any

import pytest

from loadtests.conform.cases import CASES, Context, Fail, NotOffered, error_of, offered
from loadtests.conform.spec import load_spec
from loadtests.conform.wire import HttpReply, Target

SPEC = load_spec()


def reply(status: int, body: Any = None) -> HttpReply:
    return HttpReply(status, "application/json", "", body)


def err(message: str = "bad", code: str | None = "invalid_value", param: str | None = "temperature") -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": param}}


@pytest.mark.parametrize("status", [404, 405, 501])
def test_a_missing_route_means_not_offered(status: int) -> None:
    with pytest.raises(NotOffered, match=str(status)):
        offered(reply(status))


def test_a_400_calling_the_feature_unsupported_means_not_offered_any_other_does_not() -> None:
    with pytest.raises(NotOffered):
        offered(reply(400, err("Image input is not supported by this model")))
    with pytest.raises(NotOffered):
        offered(reply(400, err(code="unsupported_content")))
    offered(reply(400, err("Invalid value for temperature")))  # a plain bad request: the case judges it
    offered(reply(200, {}))


def test_an_api_error_needs_its_four_members_and_the_right_param_and_code() -> None:
    assert error_of(reply(400, err()), 400, param="temperature")["code"] == "invalid_value"
    with pytest.raises(Fail, match="expected HTTP 400"):
        error_of(reply(200, {"id": "resp"}), 400)
    with pytest.raises(Fail, match="lacks 'param'"):
        error_of(reply(400, {"error": {"message": "m", "type": "t", "code": None}}), 400)
    with pytest.raises(Fail, match=r"error\.param"):
        error_of(reply(400, err(param="input")), 400, param="temperature")
    with pytest.raises(Fail, match=r"error\.code"):
        error_of(reply(400, err()), 400, code="previous_response_not_found")


def ctx() -> Context:
    return Context(spec=SPEC, target=Target("https", "http://127.0.0.1:1/v1"))


def test_a_stream_must_start_with_created_number_its_events_and_end_a_response() -> None:
    c = ctx()
    with pytest.raises(Fail, match="no events"):
        c.stream_events([], "events")
    created = {"type": "response.created", "sequence_number": 0, "response": {}}
    done = {"type": "response.output_text.done", "sequence_number": 1}
    with pytest.raises(Fail, match=r"ended on .response\.output_text\.done."):
        c.stream_events([created, done], "events")
    with pytest.raises(Fail, match="does not increase"):
        c.stream_events([created, {**done, "sequence_number": 0}], "events")
    with pytest.raises(Fail, match="first event"):
        c.stream_events([{**done, "sequence_number": 0}, {**created, "sequence_number": 1}], "events")
    assert c.violations  # and every event was validated on the way: these are far from the schema
    assert c.checked == 6


def test_the_table_has_the_specs_cases_and_the_contracts() -> None:
    ids = {c.id for c in CASES}
    assert {"basic-response", "streaming-response", "tool-calling-streaming", "image-input", "compaction"} <= ids
    assert {"ws-continuation", "ws-previous-response-not-found", "ws-eviction", "ws-in-flight-limit"} <= ids
    assert {c.source for c in CASES} == {"spec", "contract"} and {c.transport for c in CASES} == {"https", "ws"}
    required = {c.id for c in CASES if c.required}
    assert "basic-response" in required and "compaction" not in required and "ws-basic" not in required
