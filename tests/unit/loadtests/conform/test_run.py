"""Running cases: which run, how each way a case ends becomes an outcome (an optional feature not offered is
not a failure; a required one answering so is), the line and table that show them, the exit status."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from loadtests.conform import run
from loadtests.conform.cases import CASES, Case, Context, Fail, NotOffered
from loadtests.conform.spec import Spec, Violation, load_spec
from loadtests.conform.wire import Target, WsUnavailable
from loadtests.present.doc import format_number

SPEC = load_spec()
WS = Target("ws", "ws://127.0.0.1:1/v1")


def case(body: Any, feature: str | None = None, transport: str = "ws") -> Case:
    async def go(ctx: Context) -> None:
        await body(ctx)

    return Case("x", transport, "contract", feature, "a test case", go)


async def outcome_of(body: Any, feature: str | None = None) -> run.Outcome:
    return await run.run_case(case(body, feature), SPEC, WS)


def test_select_takes_comma_lists_and_repeats_and_keeps_the_table_order() -> None:
    ids = [c.id for c in run.select(["ws-basic,basic-response", "compaction"])]
    assert ids == ["basic-response", "compaction", "ws-basic"]
    assert [c.id for c in run.select(None, ["ws-basic"])] == [c.id for c in CASES if c.id != "ws-basic"]
    assert run.select(["basic-response"], ["basic-response"]) == []
    with pytest.raises(ValueError, match="no such case: nope"):
        run.select(["nope"])


async def test_a_case_that_returns_passes() -> None:
    async def ok(ctx: Context) -> None:
        ctx.checked += 2

    o = await outcome_of(ok)
    assert (o.status, o.checked) == (run.PASS, 2)


async def test_a_schema_violation_fails_the_case_with_its_path_even_if_the_case_goes_on() -> None:
    async def sends_wrong(ctx: Context) -> None:
        ctx.conforms("ResponseResource", {"id": "r"}, "response")  # recorded, not raised

    o = await outcome_of(sends_wrong)
    assert o.status == run.FAIL and o.violations[0].startswith("response: ")
    assert "first schema error: response:" in run.render_line(o)


async def test_fail_keeps_its_message_and_the_violations_met_before_it() -> None:
    async def both(ctx: Context) -> None:
        ctx.conforms("Usage", {"input_tokens": 1}, "usage")
        raise Fail("expected an error event", [Violation("x", "y")])

    o = await outcome_of(both)
    assert o.detail == "expected an error event"
    assert o.violations[0].startswith("usage") and o.violations[-1] == "x: y"


@pytest.mark.parametrize(
    "exc", [NotOffered("HTTP 404"), WsUnavailable(404, "handshake refused: HTTP 404")], ids=["404", "handshake"]
)
async def test_not_offered_is_no_failure_for_an_optional_feature_but_fails_a_required_case(exc: Exception) -> None:
    async def lacks(ctx: Context) -> None:
        raise exc

    optional = await outcome_of(lacks, feature="compaction")
    assert optional.status == run.NOT_OFFERED and optional.detail.startswith("compaction: ")
    required = await outcome_of(lacks)
    assert required.status == run.FAIL and "required" in required.detail
    assert run.exit_status([optional]) == 0 and run.exit_status([optional, required]) == 1


async def test_nothing_listening_is_a_failure_even_for_an_optional_feature() -> None:
    async def unreachable(ctx: Context) -> None:
        raise WsUnavailable(None, "could not connect")

    assert (await outcome_of(unreachable, feature="WebSocket mode")).status == run.FAIL


async def test_any_other_exception_is_that_cases_failure_and_the_run_goes_on() -> None:
    async def broken(ctx: Context) -> None:
        raise KeyError("response")

    async def slow(ctx: Context) -> None:
        raise TimeoutError

    o = await outcome_of(broken)
    assert o.status == run.FAIL and o.detail.startswith("KeyError")
    assert (await outcome_of(slow)).detail.startswith("no answer within")


async def test_a_case_without_a_target_is_not_run() -> None:
    seen: list[run.Outcome] = []
    outcomes = await run.run_cases([case(None, transport="https")], SPEC, {"ws": WS}, seen.append)
    assert [o.status for o in outcomes] == [run.NOT_RUN] and seen == outcomes
    assert run.exit_status(outcomes) == 0


def test_the_json_record_has_every_case_and_the_counts() -> None:
    outs = [run.Outcome(CASES[0], run.PASS, checked=3), run.Outcome(CASES[1], run.FAIL, "no", ["a: b"])]
    rec = run.report_json(outs, SPEC, {"ws": WS}, ["a note"])
    assert rec["spec"] == {"title": "Open Responses", "version": "2026-04-24", "schemas": SPEC.source}
    assert rec["summary"] == {"pass": 1, "fail": 1, "not offered": 0, "not run": 0}
    assert [c["id"] for c in rec["cases"]] == [CASES[0].id, CASES[1].id]
    assert rec["cases"][1]["violations"] == ["a: b"] and rec["notes"] == ["a note"]


@given(
    seconds=st.floats(allow_nan=True, allow_infinity=True),
    checked=st.integers(min_value=0, max_value=10**12),
    status=st.sampled_from([run.PASS, run.FAIL, run.NOT_OFFERED, run.NOT_RUN]),
    detail=st.text(max_size=40),
)
def test_the_line_and_the_table_render_any_number(seconds: float, checked: int, status: str, detail: str) -> None:
    o = run.Outcome(CASES[0], status, detail, seconds=seconds, checked=checked)
    line = run.render_line(o)
    assert format_number(seconds) in line and CASES[0].id in line
    table = run.render_table([o, replace(o, case=CASES[-1])], SPEC)
    rows = table.splitlines()[4:]
    assert len(rows) == 2 and all(r.count(" | ") >= 6 for r in rows)
    assert format_number(checked) in rows[0]
    if not math.isfinite(seconds):
        assert "n/a" in line


def test_the_spec_fixture_is_the_derived_one() -> None:
    assert isinstance(SPEC, Spec) and SPEC.version == "2026-04-24" and SPEC.source.startswith("openresponses-types ")
