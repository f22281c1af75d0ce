"""The probe's judgment from recorded answers: what turnbench's servers and tests/foreign.py answered to
``turnbench probe`` (``probe_answers/*.json``, recorded and trimmed of text deltas), and made-up answers for
the cases neither server gives (serial lanes, a refused steer, a limit that closes the connection)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests.execution.probe import (
    CAPABILITIES,
    Finding,
    ProbeResult,
    abridge,
    classify,
    format_table,
    parse_targets,
    supported_states,
)

ANSWERS = Path(__file__).parent / "probe_answers"


def recorded(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ANSWERS / f"{name}.json").read_text())["observations"]
    return data


def offered(observations: dict[str, Any]) -> dict[str, str]:
    return {k: f.offered for k, f in classify(observations).items()}


def test_turnbench_offers_everything_it_implements() -> None:
    found = offered(recorded("turnbench"))
    assert set(found) == set(CAPABILITIES)
    assert {k for k, v in found.items() if v != "yes"} == set(), found  # vLLM's /health too, beside /healthz


def test_turnbench_s_evidence_names_what_was_seen() -> None:
    f = classify(recorded("turnbench"))
    assert "previous_response_not_found" in f["https_continuation"].evidence
    assert "too_many_queued_requests" in f["inflight"].evidence
    assert f["inflight"].detail["completed"] + f["inflight"].detail["errors"] == f["inflight"].detail["sent"]
    assert f["lanes_concurrent"].detail["switches"] >= 2
    assert "response.steer.accepted" in f["steer"].evidence


def test_the_foreign_server_offers_what_it_does() -> None:
    """tests/foreign.py streams over HTTPS and WebSocket mode, keeps nothing, tags nothing, reports no usage."""
    found = offered(recorded("foreign"))
    yes = {k for k, v in found.items() if v == "yes"}
    assert yes == {"https_stream", "ws", "inflight"}
    assert found["lanes_concurrent"] == "untested"  # no lanes to run concurrently
    f = classify(recorded("foreign"))
    assert "ignored" in f["https_continuation"].evidence and "ignored" in f["ws_continuation"].evidence
    assert "SSE" in f["https_json"].evidence  # stream: false answered with a stream
    assert "new request" in f["steer"].evidence
    assert "no limit" in f["inflight"].evidence


def test_states_follow_the_findings() -> None:
    tb = ProbeResult(targets={}, findings=classify(recorded("turnbench")))
    fo = ProbeResult(targets={}, findings=classify(recorded("foreign")))
    assert supported_states(tb) == {"https": ("full", "store"), "ws": ("full", "connection", "store")}
    assert supported_states(fo) == {"https": ("full",), "ws": ("full",)}
    assert fo.why_not("lanes").startswith("no lanes (")
    assert ProbeResult.from_json(json.loads(json.dumps(tb.to_json()))).findings == tb.findings


def ev(kind: str, lane: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": kind, **({"stream_id": lane} if lane else {}), **extra}


def done(lane: str | None = None, rid: str = "r", output: int = 1) -> dict[str, Any]:
    return ev("response.completed", lane, response={"id": rid, "status": "completed", "output": output})


def test_lanes_that_run_one_after_the_other_are_not_concurrent() -> None:
    serial = [ev("response.created", "a"), ev("x", "a"), done("a"), ev("response.created", "b"), done("b")]
    f = classify({"lanes": {"lanes": ["a", "b"], "events": serial}})
    assert f["lanes"].offered == "yes" and f["lanes_concurrent"].offered == "no"
    mixed = [ev("response.created", "a"), ev("response.created", "b"), ev("x", "a"), done("b"), done("a")]
    assert classify({"lanes": {"lanes": ["a", "b"], "events": mixed}})["lanes_concurrent"].offered == "yes"


def test_one_health_route_of_two_is_partial() -> None:
    f = classify({"health": {"routes": {"/health": 404, "/healthz": 200}}})["health"]
    assert f.offered == "partial" and "/health: 404" in f.evidence


def test_lanes_refused_by_the_server() -> None:
    refused = [ev("error", "a", code="unknown_parameter"), ev("error", "b", code="unknown_parameter")]
    f = classify({"lanes": {"lanes": ["a", "b"], "events": refused}})
    assert f["lanes"].offered == "no" and "unknown_parameter" in f["lanes"].evidence


@pytest.mark.parametrize(
    ("after", "want", "word"),
    [
        ([ev("response.steer.pending")], "yes", "pending"),
        ([ev("response.steer.failed")], "partial", "failed"),
        ([ev("error", code="unknown_event_type")], "no", "unknown_event_type"),
        ([done(rid="s"), ev("response.created", response={"id": "other"})], "no", "new request"),
        ([], "no", "no answer"),
    ],
)
def test_steer_answers(after: list[dict[str, Any]], want: str, word: str) -> None:
    f = classify({"steer": {"steered_id": "s", "after_steer": after, "waited_s": 5}})["steer"]
    assert f.offered == want and word in f.evidence


def test_continuation_needs_a_made_up_parent_refused() -> None:
    ok = {"child": {"status": "completed"}, "bogus": {"status": 400, "code": "previous_response_not_found"}}
    ignored = {"child": {"status": "completed"}, "bogus": {"status": "completed"}}
    refused = {"child": {"status": 400, "code": "previous_response_not_found"}, "bogus": {"code": "x"}}
    assert classify({"ws_continuation": ok})["ws_continuation"].offered == "yes"
    assert classify({"ws_continuation": ignored})["ws_continuation"].offered == "no"
    assert classify({"ws_continuation": refused})["ws_continuation"].offered == "no"


def test_an_inflight_limit_that_closes_the_connection() -> None:
    events = [done()] * 64 + [ev("error", code="websocket_stream_limit_reached")]
    f = classify({"inflight": {"sent": 128, "closed": "close 1008 too many", "events": events}})["inflight"]
    assert f.offered == "yes" and "64 of 128" in f.evidence and "close 1008" in f.evidence


def test_generate_false_ignored_or_honoured() -> None:
    assert classify({"generate_false": {"events": [done(output=0)]}})["generate_false"].offered == "yes"
    assert classify({"generate_false": {"events": [done(output=2)]}})["generate_false"].offered == "no"


def test_a_failed_attempt_is_evidence_not_a_crash() -> None:
    f = classify({"https_stream": {"exception": "ConnectError: refused"}, "ws": {"exception": "OSError: x"}})
    assert f["https_stream"].offered == "no" and "refused" in f["https_stream"].evidence
    assert f["stage_timings"].offered == "untested"


def test_abridge_keeps_what_the_classifiers_read() -> None:
    raw = {
        "type": "response.completed",
        "stream_id": "a",
        "response": {
            "id": "r",
            "status": "completed",
            "output": [{"type": "message"}],
            "turnbench": {"stages": {"x": 1}},
        },
    }
    a = abridge(raw)
    assert a["stream_id"] == "a" and a["response"]["stages"] and a["response"]["output"] == 1


def test_parse_targets() -> None:
    assert parse_targets(["https=http://h:1/v1", "ws=ws://h:1/v1"]) == {"https": "http://h:1/v1", "ws": "ws://h:1/v1"}
    with pytest.raises(ValueError, match="TRANSPORT=URL"):
        parse_targets(["https"])
    with pytest.raises(ValueError, match="https and ws"):
        parse_targets(["grpc=h:1"])


@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(CAPABILITIES)),
            st.sampled_from(["yes", "no", "partial", "untested"]),
            st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
            st.text(max_size=30),
        ),
        max_size=8,
    )
)
def test_the_table_renders_any_finding(rows: list[tuple[str, Any, float | int, str]]) -> None:
    findings = {c: Finding(c, o, f"{t} {n!r}") for c, o, n, t in rows}
    result = ProbeResult(targets={"https": "http://h/v1"}, findings=findings)
    text, md = format_table(result), format_table(result, markdown=True)
    for c in findings:
        assert CAPABILITIES[c] in text and CAPABILITIES[c] in md
    assert md.count("\n") == len(findings) + 1
