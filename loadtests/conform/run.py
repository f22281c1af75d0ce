"""Running the cases against targets: which cases run (``--only``/``--skip``), one outcome per case, a line per
case as it ends, the summary table, the JSON record and the exit status.

An outcome is ``pass``, ``fail`` (with the first schema violation's path, if a schema is why), ``not offered``
(an optional feature the endpoint says it lacks) or ``not run`` (no target for its transport, or a transport the
specification does not define: gRPC).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtests.conform.cases import CASES, Case, Context, Fail, NotOffered
from loadtests.conform.spec import Spec
from loadtests.conform.wire import Target, WsUnavailable, http_client
from loadtests.present.doc import format_number

__all__ = [
    "PASS",
    "Outcome",
    "exit_status",
    "render_line",
    "render_table",
    "report_json",
    "run_cases",
    "select",
]

PASS, FAIL, NOT_OFFERED, NOT_RUN = "pass", "fail", "not offered", "not run"
CASE_TIMEOUT_S = 120.0


@dataclass
class Outcome:
    """What one case came to."""

    case: Case
    status: str
    detail: str = ""
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checked: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.case.id,
            "transport": self.case.transport,
            "source": self.case.source,
            "required": self.case.required,
            "feature": self.case.feature,
            "status": self.status,
            "detail": self.detail,
            "violations": self.violations,
            "notes": self.notes,
            "validated": self.checked,
            "seconds": round(self.seconds, 4),
        }


def _ids(values: Iterable[str] | None) -> list[str]:
    return [v.strip() for item in values or () for v in item.split(",") if v.strip()]


def select(only: Iterable[str] | None = None, skip: Iterable[str] | None = None) -> list[Case]:
    """The cases to run, in table order: ``only`` (ids, comma lists allowed) if given, less ``skip``.
    Raises ValueError naming an id that is no case's."""
    wanted, dropped = _ids(only), _ids(skip)
    known = {c.id for c in CASES}
    unknown = sorted({*wanted, *dropped} - known)
    if unknown:
        raise ValueError(f"no such case: {', '.join(unknown)} (turnbench conform --list shows them)")
    return [c for c in CASES if (not wanted or c.id in wanted) and c.id not in dropped]


async def run_case(case: Case, spec: Spec, target: Target) -> Outcome:
    """One case against ``target``: every way it can end becomes an outcome, nothing propagates."""
    ctx = Context(spec=spec, target=target)
    t0 = time.monotonic()
    out = Outcome(case, PASS)
    try:
        if target.transport == "https":
            async with http_client(target) as ctx.http:
                await asyncio.wait_for(case.run(ctx), CASE_TIMEOUT_S)
        else:
            await asyncio.wait_for(case.run(ctx), CASE_TIMEOUT_S)
        if ctx.violations:
            out.status, out.detail = FAIL, "does not conform to the specification"
    except Fail as exc:
        out.status, out.detail = FAIL, str(exc)
        out.violations = [str(v) for v in exc.violations]
    except NotOffered as exc:
        _not_offered(out, str(exc))
    except WsUnavailable as exc:
        if exc.status is None:  # nothing answered at all: that is not "not offered"
            out.status, out.detail = FAIL, str(exc)
        else:
            _not_offered(out, str(exc))
    except TimeoutError:
        out.status, out.detail = FAIL, f"no answer within {format_number(target.timeout_s)} s"
    except Exception as exc:  # a broken endpoint can break a case any way: it is that case's failure
        out.status, out.detail = FAIL, f"{type(exc).__name__}: {exc}"
    if ctx.violations and out.status == FAIL:
        out.violations = [str(v) for v in ctx.violations] + out.violations
    out.seconds = time.monotonic() - t0
    out.notes, out.checked = ctx.notes, ctx.checked
    return out


def _not_offered(out: Outcome, why: str) -> None:
    if out.case.required:
        out.status, out.detail = FAIL, f"a required case answered as if not offered: {why}"
    else:
        out.status, out.detail = NOT_OFFERED, f"{out.case.feature}: {why}"


async def run_cases(
    cases: Sequence[Case],
    spec: Spec,
    targets: dict[str, Target],
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Every case, one after another (their order is the table's), against the target of its transport."""
    outcomes: list[Outcome] = []
    for case in cases:
        target = targets.get(case.transport)
        if target is None:
            outcome = Outcome(case, NOT_RUN, f"no {case.transport} target")
        else:
            outcome = await run_case(case, spec, target)
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    return outcomes


def _one_line(text: str) -> str:
    """Text for one line of a terminal or a table row: every run of whitespace (line breaks, separators) one
    space."""
    return " ".join(text.split())


def render_line(o: Outcome) -> str:
    """The line printed as a case ends: ``PASS``/``FAIL``/…, its id and transport, its time, and why."""
    mark = {PASS: "pass", FAIL: "FAIL", NOT_OFFERED: "not offered", NOT_RUN: "not run"}[o.status]
    why = o.detail
    if o.violations:
        more = f" (+{len(o.violations) - 1} more)" if len(o.violations) > 1 else ""
        why = f"{o.detail}; first schema error: {o.violations[0]}{more}"
    tail = f"  {_one_line(why)}" if why and o.status != PASS else ""
    note = f"  [note: {'; '.join(o.notes)}]" if o.notes else ""
    return f"{mark:<12} {o.case.id:<32} {o.case.transport:<6} {format_number(o.seconds)} s{tail}{note}"


def render_table(outcomes: Sequence[Outcome], spec: Spec) -> str:
    """The summary: one row per case, then the counts."""
    rows = [
        "| case | transport | from | required | result | validated | detail |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for o in outcomes:
        detail = f"{o.detail}; {o.violations[0]}" if o.violations else o.detail
        detail = _one_line(detail).replace("|", "\\|")[:160]
        required = "required" if o.case.required else f"optional ({o.case.feature})"
        rows.append(
            f"| {o.case.id} | {o.case.transport} | {o.case.source} | {required} | {o.status} | "
            f"{format_number(o.checked)} | {detail} |"
        )
    counts = summary(outcomes)
    head = f"{spec.title} {spec.version} (schemas: {spec.source}): " + ", ".join(
        f"{format_number(n)} {k}" for k, n in counts.items() if n
    )
    return "\n".join([head, "", *rows])


def summary(outcomes: Sequence[Outcome]) -> dict[str, int]:
    return {k: sum(o.status == k for o in outcomes) for k in (PASS, FAIL, NOT_OFFERED, NOT_RUN)}


def report_json(
    outcomes: Sequence[Outcome], spec: Spec, targets: dict[str, Target], notes: Sequence[str]
) -> dict[str, Any]:
    return {
        "spec": {"title": spec.title, "version": spec.version, "schemas": spec.source},
        "targets": {k: t.url for k, t in targets.items()},
        "notes": list(notes),
        "summary": summary(outcomes),
        "cases": [o.as_dict() for o in outcomes],
    }


def exit_status(outcomes: Sequence[Outcome]) -> int:
    """1 when any case failed (a required one, or an optional feature the endpoint offers but gets wrong); 0
    otherwise ("not offered" and "not run" are no failure)."""
    return int(any(o.status == FAIL for o in outcomes))
