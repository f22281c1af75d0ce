"""Does turnbench's answer transfer to a production gateway? The same agent workload over a real gateway
(vLLM's Agentic API, from PyPI) with turnbench's engine role as its upstream, and over turnbench's own
servers, interleaved, at the same simulated profile: a section of ``turnbench bench``; ``scripts/gateway.py``
runs it alone. See docs/guides/gateway.md.

Per profile (``fast`` and ``instant`` by default), four server processes, all plain TCP on loopback:
turnbench's own HTTPS and WebSocket servers (the API role: checks, render, state), and the gateway in front of
one more turnbench HTTPS server in the engine role (``--role engine``: tokenize, prefix-cache lookup, prefill
of the uncached tail, decode). Each round runs one rollout of every cell (implementation × transport ×
state: https/full, https/store, ws/store, ws/connection), in an order that rotates from round to round, one
rollout at a time (concurrency 1), so drift hits every cell alike and the upstream's log lines up with the
gateway's turns by order. Kept per rollout: its time, each turn's time, TTFT, bytes up and down, input and
cached tokens; for the gateway's turns also the upstream's own time for the request it forwarded, so the
gateway's per-turn cost is the client's turn time minus the upstream's.

Plus fan-out: an orchestrator's response, then N forks of it on N lanes of one WebSocket connection against
over N connections, on both implementations.
"""

from __future__ import annotations

import asyncio
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from clients.record import RolloutResult
from loadtests.analysis.estimators import bootstrap_ci, ratio_ci
from loadtests.analysis.verdict import interval_text
from loadtests.execution.gateways import GATEWAYS, gateway_missing, start_gateway
from loadtests.execution.plan import Cell
from loadtests.execution.procs import Endpoint, start_server_process, stop_endpoints
from loadtests.extras.common import as_float, ci_range, ci_text, median_of, ms_text, profile_text
from loadtests.extras.fanout import fork_out
from loadtests.extras.registry import OWN_SERVERS, Extra, ExtraResult, Unavailable
from loadtests.present.doc import Doc, format_number, round_frame
from loadtests.present.plots import headline_ratios
from loadtests.runs.runner import one_rollout
from loadtests.workload.scenarios import State, load_scenario
from turnbench.state import UsageLog

GATEWAY = "agentic-api"
IMPLS = ("turnbench", GATEWAY)
WAYS: tuple[tuple[str, State], ...] = (("https", "full"), ("https", "store"), ("ws", "store"), ("ws", "connection"))
BASELINE = "https/full"
HEADLINE = "ws/connection"
ENGINE_SETTINGS: dict[str, Any] = {"role": "engine"}
"""How the gateway's upstream is started: turnbench's HTTPS server as an inference engine."""

SIZES: dict[str, dict[str, Any]] = {
    "study": {"profiles": ["fast", "instant"], "scenario": "agent-20", "rounds": 6, "subagents": 8, "fan_rounds": 4},
    "full": {"profiles": ["fast", "instant"], "scenario": "agent-5", "rounds": 4, "subagents": 8, "fan_rounds": 2},
    "quick": {"profiles": ["fast"], "scenario": "agent-5", "rounds": 2, "subagents": 4, "fan_rounds": 1},
}
""":func:`measure`'s arguments: ``study`` for ``scripts/gateway.py`` (the 20-tool-call rollout the headline is
about), ``full`` and ``quick`` for ``turnbench bench`` and ``bench --quick`` (a 5-call rollout, to fit the
bench's time budget)."""


def way_name(transport: str, state: str) -> str:
    return f"{transport}/{state}"


def _cells(scenario: str, profile: str) -> list[tuple[str, Cell]]:
    sc = load_scenario(scenario)
    out: list[tuple[str, Cell]] = []
    for impl in IMPLS:
        for transport, state in WAYS:
            cell = Cell(
                cell=f"{impl}:{transport}:{state}:{profile}",
                scenario=sc,
                transport=transport,
                state=state,
                profile=profile,
                concurrency=1,
                arrival_rate_rps=None,
                variant=impl,
                tls=False,
                number=len(out),
            )
            out.append((impl, cell))
    return out


def _upstream_rows(log: UsageLog, seen: int) -> list[dict[str, Any]]:
    """The upstream's usage rows after the first ``seen``, in arrival order."""
    return log.rows()[seen:]


def _upstream_ms(row: Mapping[str, Any]) -> float | None:
    """The upstream's own time for one request (ms), from its usage row; None when it has none."""
    v = row.get("elapsed_ms")
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def _rollout_row(impl: str, cell: Cell, rnd: int, res: RolloutResult, upstream: list[dict[str, Any]]) -> dict[str, Any]:
    turns = [t for t in res.turns if t.success]
    up_ms = [_upstream_ms(r) for r in upstream]
    matched = len(upstream) == len(res.turns)  # one upstream request per turn, in order
    return {
        "impl": impl,
        "way": way_name(cell.transport, cell.state),
        "round": rnd,
        "success": res.success,
        "error": res.error,
        "rollout_ms": res.rollout_ms if res.success else None,
        "turns": len(res.turns),
        "turn_ms": [t.turn_ms for t in turns],
        "ttft_ms": [t.ttft_ms for t in turns],
        "bytes_up": [t.bytes_up for t in turns],
        "bytes_down": [t.bytes_down for t in turns],
        "input_tokens": [t.input_tokens for t in turns],
        "cached_tokens": [t.cached_tokens for t in turns],
        "upstream_requests": len(upstream),
        "upstream_ms": up_ms if matched else [],
        "upstream_input_tokens": [r.get("input_tokens") for r in upstream],
        "upstream_cached_tokens": [r.get("cached_tokens") for r in upstream],
    }


def _start_all(profile: str, workdir: Path) -> dict[tuple[str, str], Endpoint]:
    eps: dict[tuple[str, str], Endpoint] = {}
    try:
        for server in ("https", "ws"):
            ep = start_server_process(server, workdir=workdir / server, profile=profile, tls=False)
            eps["turnbench", server] = ep
        upstream = start_server_process(
            "https", workdir=workdir / "upstream", profile=profile, tls=False, settings=ENGINE_SETTINGS
        )
        eps["upstream", "https"] = upstream
        eps[GATEWAY, "https"], eps[GATEWAY, "ws"] = start_gateway(upstream, workdir=workdir / "gateway")
    except BaseException:
        stop_endpoints({f"{k[0]}/{k[1]}": ep for k, ep in eps.items()})
        raise
    return eps


def measure_profile(
    profile: str, *, scenario: str, rounds: int, subagents: int, fan_rounds: int, workdir: Path, quiet: bool = True
) -> dict[str, Any]:
    """One profile's rounds (rollouts) and fan-out rounds; the raw rows of both."""
    eps = _start_all(profile, workdir)
    upstream = eps["upstream", "https"]
    log = UsageLog(str(workdir / "upstream" / f"usage-https-{profile}.db"))
    cells = _cells(scenario, profile)
    rows: list[dict[str, Any]] = []
    fan: list[dict[str, Any]] = []
    try:
        for rnd in range(rounds):
            shift = rnd % len(cells)
            for impl, cell in cells[shift:] + cells[:shift]:
                ep = eps[impl, cell.server]
                seen = log.count()
                res = asyncio.run(one_rollout(cell, rnd, ep, task_tag=f"gw-{profile}"))
                up = _upstream_rows(log, seen) if impl == GATEWAY else []
                rows.append(_rollout_row(impl, cell, rnd, res, up))
                if not quiet:
                    print(f"gateway: {profile} round {rnd + 1}/{rounds} {impl} {cell.transport}/{cell.state}: "
                          f"{format_number(res.rollout_ms)} ms{'' if res.success else ' FAILED ' + str(res.error)}",
                          flush=True)  # fmt: skip
        plan = "Plan: " + "the parser reads each file and the tests check it " * 160
        for rnd in range(fan_rounds):
            for impl in IMPLS:
                ep = eps[impl, "ws"]
                assert ep.process is not None  # turnbench's ws server, or the gateway's process
                for way in ("ws lanes", "ws connections"):
                    row = asyncio.run(fork_out(way, ep, plan, subagents, 32, ep.process.cpu_s))
                    fan.append({"impl": impl, "way": way, "round": rnd, **row})
    finally:
        log.close()
        codes = stop_endpoints({f"{k[0]}/{k[1]}": ep for k, ep in eps.items()})
    return {
        "rows": rows,
        "fanout": fan,
        "exit_codes": codes,
        "upstream_settings": dict(upstream.settings),
    }


def measure(
    *,
    profiles: Sequence[str] = ("fast", "instant"),
    scenario: str = "agent-20",
    rounds: int = 6,
    subagents: int = 8,
    fan_rounds: int = 4,
    quiet: bool = True,
) -> ExtraResult:
    """The study at each of ``profiles``; raises :class:`Unavailable` when the gateway is not installed."""
    missing = gateway_missing(GATEWAY)
    if missing is not None:
        raise Unavailable(missing)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="turnbench-gateway-") as tmp:
        for profile in profiles:
            out[profile] = measure_profile(
                profile,
                scenario=scenario,
                rounds=rounds,
                subagents=subagents,
                fan_rounds=fan_rounds,
                workdir=Path(tmp) / profile,
                quiet=quiet,
            )
    return {
        "parameters": {
            "gateway": GATEWAY,
            "gateway_version": GATEWAYS[GATEWAY].version,
            "profiles": list(profiles),
            "scenario": scenario,
            "rounds": rounds,
            "subagents": subagents,
            "fan_rounds": fan_rounds,
            "concurrency": 1,
            "tls": False,
            "upstream": ENGINE_SETTINGS,
        },
        "medians": summarize(out),
        "rounds": [{"profile": p, **r} for p, d in out.items() for r in d["rows"]],
        "rows": [{"profile": p, **r} for p, d in out.items() for r in d["fanout"]],
    }


# --- the numbers, from the raw rows ---------------------------------------------------------------------------


def _flat(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    return [float(v) for r in rows for v in (r.get(key) or []) if v is not None and math.isfinite(float(v))]


def _per_turn(rows: Sequence[Mapping[str, Any]], key: str) -> list[float]:
    """Per rollout, the mean of ``key`` over its turns (one value per rollout: rollouts are the samples)."""
    out = []
    for r in rows:
        xs = [float(v) for v in (r.get(key) or []) if v is not None and math.isfinite(float(v))]
        if xs:
            out.append(sum(xs) / len(xs))
    return out


def _new_tokens(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per rollout, the mean over its turns of the input tokens the server did not have cached."""
    out = []
    for r in rows:
        pairs = list(zip(r.get("input_tokens") or [], r.get("cached_tokens") or [], strict=False))
        if pairs:
            out.append(sum(float(i) - float(c) for i, c in pairs) / len(pairs))
    return out


def _gateway_cost(rows: Sequence[Mapping[str, Any]]) -> list[float]:
    """Per gateway rollout, the mean over its turns of (client's turn time − upstream's time)."""
    out = []
    for r in rows:
        up = r.get("upstream_ms") or []
        pairs = [
            (float(t), float(u))
            for t, u in zip(r.get("turn_ms") or [], up, strict=False)
            if t is not None and u is not None
        ]
        if pairs and len(up) == len(r.get("turn_ms") or []):
            out.append(sum(t - u for t, u in pairs) / len(pairs))
    return out


def summarize(data: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per profile, implementation and way: rollouts, median rollout ms with its interval, the ratio to
    ``https/full`` of the same implementation with its interval, per-turn figures."""
    out: dict[str, Any] = {}
    for profile, d in data.items():
        rows = [r for r in d["rows"] if r["success"]]
        per: dict[str, Any] = {}
        for impl in IMPLS:
            base = [r["rollout_ms"] for r in rows if r["impl"] == impl and r["way"] == BASELINE]
            ways: dict[str, Any] = {}
            for transport, state in WAYS:
                w = way_name(transport, state)
                sel = [r for r in rows if r["impl"] == impl and r["way"] == w]
                ms = [r["rollout_ms"] for r in sel]
                med, lo, hi = bootstrap_ci(ms) if ms else (math.nan,) * 3
                ratio = ratio_ci(ms, base) if ms and base else (math.nan,) * 3
                cost = _gateway_cost(sel)
                ways[w] = {
                    "n": len(sel),
                    "failed": sum(1 for r in d["rows"] if r["impl"] == impl and r["way"] == w and not r["success"]),
                    "rollout_ms": [med, lo, hi],
                    "ratio": list(ratio),
                    "turn_ms": median_of(_per_turn(sel, "turn_ms")),
                    "last_ttft_ms": median_of(r["ttft_ms"][-1] for r in sel if r["ttft_ms"]),
                    "bytes_up_per_turn": median_of(_per_turn(sel, "bytes_up")),
                    "new_tokens_per_turn": median_of(_new_tokens(sel)),
                    "upstream_input_tokens_per_turn": median_of(_per_turn(sel, "upstream_input_tokens")),
                    "upstream_cached_tokens_per_turn": median_of(_per_turn(sel, "upstream_cached_tokens")),
                    "upstream_ms_per_turn": median_of(_per_turn(sel, "upstream_ms")),
                    "gateway_ms_per_turn": median_of(cost) if cost else None,
                }
            per[impl] = ways
        fan = d.get("fanout") or []
        per["fanout"] = {
            impl: {
                way: median_of(r["wall_ms"] for r in fan if r["impl"] == impl and r["way"] == way)
                for way in ("ws lanes", "ws connections")
            }
            for impl in IMPLS
        }
        out[profile] = per
    return out


def transfers(med: Mapping[str, Any]) -> tuple[bool | None, str]:
    """Whether the headline (ws/connection vs https/full) holds on the gateway as on turnbench's servers, and
    why not, from one profile's summary. None: not enough data, or nothing to transfer."""
    own, gw = med["turnbench"][HEADLINE], med[GATEWAY][HEADLINE]
    o, g = own["ratio"], gw["ratio"]
    if any(not math.isfinite(as_float(v)) for v in (*o, *g)):
        return None, "not enough completed rollouts to compare"
    o_txt, g_txt = _ratio_text(o), _ratio_text(g)
    if o[2] >= 1.0:
        return None, f"turnbench's own servers show no saving here ({o_txt}), so there is nothing to transfer"
    if g[2] < 1.0:
        return True, f"WebSocket mode saves on both, {o_txt} on turnbench's servers and {g_txt} on the gateway"
    tok = format_number(as_float(gw["upstream_input_tokens_per_turn"]))
    cached = format_number(as_float(gw["upstream_cached_tokens_per_turn"]))
    own_tok = format_number(as_float(own["new_tokens_per_turn"]))
    return False, (
        f"{o_txt} on turnbench's servers, {g_txt} on the gateway (no saving told apart from none): the gateway "
        f"keeps the conversation, but its upstream still receives the whole history every turn ({tok} input "
        f"tokens per request, {cached} of them from its prefix cache) and tokenizes it again, where turnbench's "
        f"WebSocket server works on the increment ({own_tok} new tokens per turn)"
    )


def _ratio_text(triple: Sequence[Any]) -> str:
    """A ratio and its interval as a change in time, as the report's headline writes it: ``−39% [−47%, −28%]``."""
    m, lo, hi = ci_range(list(triple))
    if not all(math.isfinite(v) for v in (m, lo, hi)):
        return "—"
    return interval_text(((1.0 - m) * 100.0, (1.0 - hi) * 100.0, (1.0 - lo) * 100.0))


def render(doc: Doc, data: ExtraResult) -> None:
    p, meds = data["parameters"], data["medians"]
    doc.p(
        f"The same agent workload (`{p['scenario']}`, concurrency 1, {p['rounds']} rounds, every cell once per round "
        f"in a rotating order) over the gateway `{p['gateway']}` {p['gateway_version']} (from PyPI) with turnbench's "
        "engine role as its upstream, and over turnbench's own HTTPS and WebSocket servers; plain TCP on loopback, "
        "the same simulated model. The gateway keeps the conversation and forwards every turn to its upstream as a "
        "stateless `/v1/responses` with the whole history; turnbench's WebSocket server works on the increment. "
        "*gateway ms/turn*: the client's turn time minus the upstream's own time for the request the gateway "
        "forwarded (matched by order)."
    )
    for profile, med in meds.items():
        doc.p(f"**At {profile_text(profile)}:**")
        records = []
        for impl in IMPLS:
            for transport, state in WAYS:
                w = way_name(transport, state)
                m = med[impl][w]
                records.append(
                    {
                        "implementation": impl,
                        "way": w,
                        "rollouts": f"{m['n']}" + (f" ({m['failed']} failed)" if m["failed"] else ""),
                        "median rollout ms [95% CI]": ci_text(m["rollout_ms"]),
                        f"vs {BASELINE}": "—" if w == BASELINE else _ratio_text(m["ratio"]),
                        "turn ms": as_float(m["turn_ms"]),
                        "last turn's TTFT ms": as_float(m["last_ttft_ms"]),
                        "bytes up/turn": as_float(m["bytes_up_per_turn"]),
                        "gateway ms/turn": as_float(m["gateway_ms_per_turn"]),
                        "upstream input tok/turn": as_float(m["upstream_input_tokens_per_turn"]),
                        "of them cached": as_float(m["upstream_cached_tokens_per_turn"]),
                    }
                )
        doc.table(round_frame(pd.DataFrame.from_records(records)))
        ok, why = transfers(med)
        verdict = {True: "It transfers", False: "It does not transfer", None: "Undecided"}[ok]
        doc.p(f"**Does turnbench's answer transfer? {verdict}:** {why}.")
        fan = med.get("fanout") or {}
        if fan:
            parts = [
                f"{impl}: {ms_text(v['ws lanes'])} on {p['subagents']} lanes of one connection against "
                f"{ms_text(v['ws connections'])} over {p['subagents']} connections"
                for impl, v in fan.items()
            ]
            doc.p(f"Fan-out of {p['subagents']} forks (median of {p['fan_rounds']} rounds): " + "; ".join(parts) + ".")


def plot(data: ExtraResult, path: Path) -> str | None:
    """Each way's median rollout time ÷ https/full's on the same implementation, with its interval, per profile:
    the study's answer at a glance. None when no ratio is finite."""
    p, meds = data["parameters"], data["medians"]
    rows = [
        {
            "vs": f"{BASELINE} on the same implementation",
            "cell": f"{impl} {way_name(t, s)}",
            "profile": profile,
            "scenario": p["scenario"],
            **dict(zip(("ratio", "lo", "hi"), ci_range(med[impl][way_name(t, s)]["ratio"]), strict=True)),
        }
        for profile, med in meds.items()
        for impl in IMPLS
        for t, s in WAYS
        if way_name(t, s) != BASELINE
    ]
    if headline_ratios(pd.DataFrame(rows), path) is None:
        return None
    return (
        f"Median rollout time ÷ {BASELINE}'s on the same implementation (turnbench's servers, the gateway), per way "
        "and profile; bars are 95% CIs, left of 1 is faster (green: the whole interval below 1, red: above)."
    )


def _measure(quick: bool) -> ExtraResult:
    return measure(**SIZES["quick" if quick else "full"])


EXTRA = Extra(
    name="gateway",
    title="On a production gateway: does the answer transfer?",
    measure=_measure,
    render=render,
    command="python scripts/gateway.py",
    est_s=(30.0, 90.0),
    plot=plot,
    needs=(OWN_SERVERS,),
    own_why="it starts the gateway and turnbench's upstream itself, beside turnbench's own servers",
)

__all__ = ["EXTRA", "SIZES", "measure", "plot", "render", "summarize", "transfers"]
