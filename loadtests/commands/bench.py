"""``turnbench bench``: the fixed, seeded benchmark matrix → ``reports/latest/`` and ``reports/runs/<stamp>/``.

Bench orchestrates: it runs the matrix (one run directory), measures migration cost into its
``migration.json`` (:mod:`loadtests.commands.migration`), renders the report (:mod:`loadtests.report.render`)
and copies the whole directory to ``latest``.

The matrix is data (:func:`full_matrix`, :func:`quick_matrix`): groups of cells that share a scenario
sizing, a profile, a concurrency level and server settings. Every group becomes runner cells
(:func:`loadtests.model.plan_cells`, with the group's variant and settings); all cells of all groups run in
**one** interleaved execution (A B C A B C …), so the ablations are measured beside the cells they are
compared with. A cell's server settings decide its server (:attr:`loadtests.model.Cell.endpoint_key`):
each ablation variant, like ``https-h2``, gets a server process of its own.

Sizing (2 cores): rollout counts are small where a rollout is slow (``frontier``: ~65 tok/s, ~8 s for 20
tool calls) and larger where it is cheap (``instant``, ``fast``). Full: within 10 min on a busy 2-core
machine; ``--quick`` ≈ 40 s quiet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypedDict, Unpack, cast

from loadtests.commands import migration
from loadtests.execution import probe
from loadtests.execution.plan import Cell, RunConfig, plan_cells
from loadtests.extras import registry as extras
from loadtests.report import render as report
from loadtests.runs import runner
from loadtests.runs.rundir import RunDir, write_json
from loadtests.workload.scenarios import State, load_scenario

__all__ = [
    "ABLATIONS",
    "BUDGET_S",
    "BenchRecord",
    "Group",
    "GroupRecord",
    "Target",
    "bench",
    "bench_target",
    "cmd_bench",
    "full_matrix",
    "matrix_cells",
    "matrix_record",
    "not_run",
    "quick_matrix",
    "run_matrix",
    "target_groups",
]

MAIN_STATES: dict[str, tuple[State, ...]] = {
    "https": ("full", "store"),
    "ws": ("connection", "store"),
    "grpc": ("connection",),
}
ABLATIONS: dict[str, dict[str, Any]] = {
    "no-incremental_checks": {"incremental_checks": False},
    "no-token_cache": {"token_cache": False},
    "no-overlap_post": {"overlap_post": False},
    "no-prefix_cache": {"prefix_cache": False},
    "tokens_per_chunk-8": {"tokens_per_chunk": 8},
}
"""Variant label → server settings, each on ``ws``/``connection`` (framing also on ``grpc``). The connection
cache is ablated on ``ws``/``store``: with it off a ``connection`` chain has nothing to fall back on."""


@dataclass(frozen=True, kw_only=True)
class Group:
    """Cells sharing one scenario sizing, profile, concurrency and server settings.

    ``states``: transport → state strategies; ``sizing``: :class:`Scenario` fields overridden (``rollouts``,
    ``rounds``, ``warmup``, ``answer_tokens`` …); ``profile`` None keeps the scenario's own.
    """

    scenario: str
    profile: str | None
    concurrency: int
    states: Mapping[str, tuple[State, ...]]
    sizing: Mapping[str, Any] = field(default_factory=dict)
    variant: str = "default"
    server_settings: Mapping[str, Any] = field(default_factory=dict)
    source: str | None = None  # the source tree its servers run from (the paired gate's base); None: this one

    def record(self) -> GroupRecord:
        """The group as ``run.json["bench"]["groups"]`` lists it: every field, in order."""
        return {
            "scenario": self.scenario,
            "profile": self.profile,
            "concurrency": self.concurrency,
            "states": {k: list(v) for k, v in self.states.items()},
            "sizing": dict(self.sizing),
            "variant": self.variant,
            "server_settings": dict(self.server_settings),
            "source": self.source,
        }


class GroupRecord(TypedDict):
    """A :class:`Group` in ``run.json["bench"]["groups"]``."""

    scenario: str
    profile: str | None
    concurrency: int
    states: dict[str, list[State]]
    sizing: dict[str, Any]
    variant: str
    server_settings: dict[str, Any]
    source: str | None


class BenchInfo(TypedDict, total=False):
    """What a matrix's maker adds to ``run.json["bench"]``: ``turnbench bench``'s ``quick`` and ``budget_s``."""

    quick: bool
    budget_s: float | None


class BenchRecord(BenchInfo):
    """``run.json["bench"]`` (:func:`matrix_record`): the groups as run and the wall time in s."""

    groups: list[GroupRecord]
    wall_s: float


def _size(rollouts: int, rounds: int, warmup: int, **extra: Any) -> dict[str, Any]:
    return {"rollouts": rollouts, "rounds": rounds, "warmup": warmup, **extra}


def _ablations(scenario: str, sizing: Mapping[str, Any]) -> list[Group]:
    out = [
        Group(
            scenario=scenario,
            profile="fast",
            concurrency=1,
            states={"ws": ("connection",)},
            sizing=sizing,
            variant=v,
            server_settings=s,
        )
        for v, s in ABLATIONS.items()
    ]
    out[-1] = Group(
        scenario=scenario,
        profile="fast",
        concurrency=1,
        sizing=sizing,
        variant="tokens_per_chunk-8",
        states={"ws": ("connection",), "grpc": ("connection",)},
        server_settings={"tokens_per_chunk": 8},
    )
    out.append(
        Group(
            scenario=scenario,
            profile="fast",
            concurrency=1,
            states={"ws": ("store",)},
            sizing=sizing,
            variant="no-connection_cache",
            server_settings={"connection_cache": False},
        )
    )
    return out


def full_matrix() -> list[Group]:
    """``make bench``: agent-20 × {instant, fast, frontier} at concurrency 1 and agent-20 × {instant, fast}
    at concurrency 4 over https full/store, ws connection/store, grpc connection (+ grpc-json and https-raw
    at concurrency 1 below frontier); coding-agent-50 × {instant, fast} at concurrency 1; the ablations on
    agent-20 at ``fast``; and the calibration scenario.

    Sized to finish within 10 minutes on a busy 2-core machine (measured: 13 min for the previous matrix with
    other processes holding 1.3 of 2 cores): a frontier rollout is ~8 s of model time and coding-agent-50's
    full resend grows with the square of its 50 turns, so those run at concurrency 1 only
    (``turnbench run --scenario coding-agent-50 --concurrency 4`` measures the rest)."""
    # grpc-json separates serialization from transport; https-raw (a minimal HTTP/1.1 client) separates the
    # cost of the httpx client library from the cost of HTTPS itself
    # ws-long: option A (one long response per rollout) beside option B, the report's A vs B section
    main = {**MAIN_STATES, "grpc-json": ("connection",), "https-raw": ("full",), "ws-long": ("connection",)}
    # the servers are warm from round 0 (every cell's warm-up), so slow cells skip their own warm-up
    c1 = {"instant": _size(6, 3, 1), "fast": _size(6, 3, 1), "frontier": _size(2, 2, 0, answer_tokens=8)}
    c4 = {"instant": _size(8, 2, 1), "fast": _size(8, 2, 1)}
    groups: list[Group] = []
    for prof in ("instant", "fast", "frontier"):
        groups.append(
            Group(
                scenario="agent-20",
                profile=prof,
                concurrency=1,
                sizing=c1[prof],
                states=main if prof != "frontier" else MAIN_STATES,
            )
        )
        if prof in c4:
            groups.append(Group(scenario="agent-20", profile=prof, concurrency=4, states=MAIN_STATES, sizing=c4[prof]))
    for prof in ("instant", "fast"):
        groups.append(
            Group(scenario="coding-agent-50", profile=prof, concurrency=1, states=MAIN_STATES, sizing=_size(3, 3, 0))
        )
    groups += _ablations("agent-20", _size(4, 2, 1))
    groups.append(
        Group(
            scenario="calibration",
            profile=None,
            concurrency=1,
            sizing=_size(3, 3, 1),
            states={"https": ("full",), "ws": ("connection",), "grpc": ("connection",)},
        )
    )
    return groups


def quick_matrix() -> list[Group]:
    """``make bench-quick`` (~1 min): agent-20 at concurrency 1 — ``instant`` over https full, ws connection,
    grpc connection; ``fast`` adding https store — and one ablation (token cache off on ws/connection)."""
    sizing = _size(3, 3, 1)
    core: dict[str, tuple[State, ...]] = {"https": ("full",), "ws": ("connection",), "grpc": ("connection",)}
    return [
        Group(scenario="agent-20", profile="instant", concurrency=1, states=core, sizing=sizing),
        Group(
            scenario="agent-20",
            profile="fast",
            concurrency=1,
            states={**core, "https": ("full", "store"), "ws-long": ("connection",)},
            sizing=sizing,
        ),
        Group(
            scenario="agent-20",
            profile="fast",
            concurrency=1,
            states={"ws": ("connection",)},
            sizing=sizing,
            variant="no-token_cache",
            server_settings={"token_cache": False},
        ),
    ]


def matrix_cells(groups: Sequence[Group], config: RunConfig) -> list[Cell]:
    """Every group's cells, numbered in one series (it makes each cell's prompts its own). A group's cells
    get its variant, and its server settings over ``config.server_settings`` (run-wide, e.g. the gate's burn).

    Raises: ``ValueError`` for an unknown transport, or when two groups make the same cell.
    """
    cells: list[Cell] = []
    for g in groups:
        sc = load_scenario(g.scenario).replace(**g.sizing, states=dict(g.states))
        cfg = dataclasses.replace(
            config,
            scenarios=[sc],
            transports=list(g.states),
            states=None,
            profiles=(g.profile,) if g.profile else None,
            concurrency=(g.concurrency,),
            variant=g.variant,
            server_settings={**config.server_settings, **g.server_settings},
            source=g.source,
        )
        cells += plan_cells(cfg, first_number=len(cells))
    ids = [c.cell for c in cells]
    if len(set(ids)) != len(ids):
        raise ValueError(f"two groups make the same cells: {sorted({i for i in ids if ids.count(i) > 1})}")
    return cells


def matrix_record(groups: Sequence[Group], wall_s: float, **extra: Unpack[BenchInfo]) -> BenchRecord:
    """``run.json["bench"]``: the groups as run, the wall time in s, and ``extra`` (``quick`` …)."""
    return {"groups": [g.record() for g in groups], "wall_s": wall_s, **extra}


def matrix_config(
    out: Path,
    *,
    argv: Sequence[str] = (),
    quiet: bool = True,
    server_settings: Mapping[str, Any] | None = None,
    deadline: float | None = None,
    target: Target | None = None,
) -> RunConfig:
    """The run configuration a matrix runs under (``server_settings``: for every server; ``deadline``: the
    ``time.monotonic()`` by which measuring ends, see :func:`loadtests.runner.execute`; ``target``: run against
    that endpoint instead of starting servers)."""
    return RunConfig(
        scenarios=[],
        transports=[],
        quiet=quiet,
        argv=list(argv),
        server_settings=dict(server_settings or {}),
        out_dir=out,
        deadline=deadline,
        targets=dict(target.urls) if target is not None else {},
        ca_path=target.ca_path if target is not None else None,
        api_key=target.api_key if target is not None else None,
    )


@dataclass(frozen=True)
class Target:
    """An endpoint of someone else's a matrix runs against: server protocol → URL, its CA, its key."""

    urls: Mapping[str, str]
    ca_path: str | None = None
    api_key: str | None = None


def run_matrix(
    groups: Sequence[Group],
    out: Path,
    *,
    argv: Sequence[str] = (),
    quiet: bool = True,
    server_settings: Mapping[str, Any] | None = None,
    deadline: float | None = None,
    target: Target | None = None,
    **record: Unpack[BenchInfo],
) -> RunDir:
    """Run every group's cells in one interleaved execution and write the run directory ``out``; its
    run.json holds ``bench`` (:func:`matrix_record`, with ``record``'s entries) and, if ``deadline`` dropped
    rounds, ``trimmed``. ``target``: against that endpoint, starting no server."""
    t0 = time.perf_counter()
    config = matrix_config(
        out, argv=argv, quiet=quiet, server_settings=server_settings, deadline=deadline, target=target
    )
    cells = matrix_cells(groups, config)
    if not quiet:
        print(
            f"bench: {len(cells)} cells, {sum(c.scenario.rollouts + c.scenario.warmup for c in cells)} rollouts",
            file=sys.stderr,
        )
    collected = runner.measure(config, cells)
    return RunDir.write(
        out, config, cells, collected, {"bench": matrix_record(groups, time.perf_counter() - t0, **record)}
    )


BUDGET_S = 600.0
"""``make bench`` ends within this many seconds, however busy the machine (see :func:`bench`)."""
RESERVE_S = {False: 90.0, True: 45.0}
"""Seconds kept for the migration measurement and the report after the matrix (full, quick), on a busy machine."""
EXTRAS_S = {False: 150.0, True: 65.0}
"""Seconds kept for the measurements beyond the matrix (:mod:`loadtests.extras.registry`; full, quick): measured 43 s
and 27 s on a quiet 2-core machine before the compaction section (~25 s and ~10 s more; 33 s and 14 s on a busy
one) and the gateway study (~60 s and ~18 s more where its package is installed); on a busy machine the matrix is
trimmed first, and an extra that still does not fit is skipped."""
REPORT_S = 30.0
"""Of :data:`RESERVE_S`, what rendering the report needs: the extras must end this long before the budget."""


def bench(
    *,
    quick: bool = False,
    out_root: Path = Path("reports"),
    argv: Sequence[str] = (),
    quiet: bool = False,
    migration_runtime: bool = True,
    budget_s: float | None = BUDGET_S,
    run_extras: bool = True,
) -> Path:
    """Run the matrix, measure migration cost (``migration.json``), render the report, all into
    ``out_root/runs/<stamp>/``, and copy that to ``out_root/latest/`` (replaced). Returns: ``latest``.

    ``budget_s``: the whole command's time budget (None: none). The matrix must end :data:`RESERVE_S` before
    it: on a machine so busy that a measured round would overrun, that round and every later one are dropped
    whole (every cell keeps the same rounds; round 1 always runs), run.json ``trimmed`` says what was
    dropped, and the report says so before anything else. After the migration cost, the measurements beyond
    the matrix (``run_extras``: steering, fan-out, warm-up, cross-host state, compaction, the gateway;
    :mod:`loadtests.extras.registry`) get :data:`EXTRAS_S`; one that no longer fits the budget is skipped, and
    its section says so.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = out_root / "runs" / f"{stamp}-bench{'-quick' if quick else ''}"
    t0 = time.perf_counter()
    end = time.monotonic() + budget_s if budget_s else None
    reserve = RESERVE_S[quick] + (EXTRAS_S[quick] if run_extras else 0.0)
    deadline = end - reserve if end is not None else None
    run_matrix(
        quick_matrix() if quick else full_matrix(),
        run_dir,
        argv=argv,
        quiet=quiet,
        deadline=deadline,
        quick=quick,
        budget_s=budget_s,
    )
    runtime = asyncio.run(migration.measure_recovery("ws", rollouts=1 if quick else 3)) if migration_runtime else None
    write_json(run_dir / "migration.json", migration.migration_report(runtime=runtime))
    if run_extras:
        extras.run_extras(run_dir, quick=quick, deadline=end - REPORT_S if end is not None else None, quiet=quiet)
    return _report_and_publish(run_dir, out_root, t0, quiet=quiet)


def _report_and_publish(run_dir: Path, out_root: Path, t0: float, *, quiet: bool) -> Path:
    """Render the report of ``run_dir`` (a failure leaves ``report.log``, never a lost run), copy the run to
    ``out_root/latest/`` (replaced) and return that."""
    try:
        report.write_report(run_dir)
    except Exception:  # the measured run is on disk whatever happens here; say why it has no report
        (run_dir / "report.log").write_text(traceback.format_exc(), encoding="utf-8")
    latest = out_root / "latest"
    if latest.exists():
        shutil.rmtree(latest)
    shutil.copytree(run_dir, latest)
    if not quiet:
        print(f"bench: {time.perf_counter() - t0:.0f} s; report: {latest / 'report.html'} (copy: {run_dir})")
    return latest


def target_groups(found: probe.ProbeResult, *, quick: bool) -> list[Group]:
    """The matrix against an endpoint of someone else's: each transport it answers × the states it keeps
    (:func:`loadtests.execution.probe.supported_states`), agent-20 (quick: agent-5) at concurrency 1."""
    states = probe.supported_states(found)
    if not states:
        raise ValueError("the endpoint answers neither streamed HTTPS responses nor WebSocket mode: nothing to run")
    sizing = _size(3, 3, 1) if quick else _size(6, 3, 1)
    typed: dict[str, tuple[State, ...]] = {t: tuple(cast(State, s) for s in v) for t, v in states.items()}
    return [
        Group(scenario="agent-5" if quick else "agent-20", profile=None, concurrency=1, states=typed, sizing=sizing)
    ]


def not_run(found: probe.ProbeResult, groups: Sequence[Group]) -> list[dict[str, str]]:
    """What the matrix and the report could not run against the endpoint, and why: the main cells it lacks
    (``https/store``, ``ws/connection`` …) and what turnbench measures only on its own servers."""
    ran = {f"{t}/{s}" for g in groups for t, states in g.states.items() for s in states}
    out: list[dict[str, str]] = []
    needs = {
        "https/full": ("https_stream",),
        "https/store": ("https_stream", "store", "https_continuation"),
        "ws/full": ("ws",),
        "ws/connection": ("ws", "ws_continuation"),
        "ws/store": ("ws", "ws_continuation", "store", "https_continuation"),
    }
    for cell, caps in needs.items():
        if cell not in ran:
            why = "; ".join(found.why_not(c) for c in caps if not found.offers(c)) or "not offered"
            out.append({"what": f"matrix cell {cell}", "why": why})
    out.append({"what": "matrix cells over gRPC", "why": "the probe tries HTTPS and WebSocket mode only"})
    if not found.offers("stage_timings"):
        out.append(
            {
                "what": "where the time went (server stages)",
                "why": "no stage timings: " + found.findings["stage_timings"].evidence,
            }
        )
    if not found.offers("usage"):
        out.append({"what": "token counts and tokens/s", "why": "no usage: " + found.findings["usage"].evidence})
    out.append(
        {
            "what": "ablations, option A, calibration, migration cost at run time",
            "why": "they switch turnbench's own server settings or run its own servers",
        }
    )
    for extra in extras.all_extras():
        reasons = extras.cannot_run(extra, found)
        if reasons:
            out.append({"what": extra.title, "why": "; ".join(reasons)})
    return out


def bench_target(
    target: Target,
    *,
    quick: bool = False,
    out_root: Path = Path("reports"),
    argv: Sequence[str] = (),
    quiet: bool = False,
    run_extras: bool = True,
    timeout_s: float = 20.0,
) -> Path:
    """``turnbench bench --target``: probe the endpoint (``target.json`` of the run directory: the findings and
    what could not run, written before anything is measured), run the matrix of the transports and states it
    offers, then the extras it can take (the others' files say what it lacks), render the report (a rendering
    failure leaves ``report.log``, never loses the data) and copy it all to ``out_root/latest``. Returns: latest.
    """
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = out_root / "runs" / f"{stamp}-bench-target{'-quick' if quick else ''}"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    eps = probe.target_endpoints(target.urls, ca_path=target.ca_path, api_key=target.api_key)
    if not quiet:
        print(f"bench: probing {', '.join(f'{k}={v}' for k, v in target.urls.items())}", file=sys.stderr)
    found = probe.probe(eps, timeout_s=timeout_s, inflight_bound=64)
    groups = target_groups(found, quick=quick)
    skipped = not_run(found, groups)
    write_json(run_dir / "target.json", {"probe": found.to_json(), "not_run": skipped})
    if not quiet:
        print(probe.format_table(found), file=sys.stderr)
    urls = dict(target.urls)
    if "ws" in groups[0].states and "ws" not in urls:  # served beside HTTPS, at the same address
        urls["ws"] = urls["https"]
    by_server = probe.target_endpoints(urls, ca_path=target.ca_path, api_key=target.api_key)
    run_matrix(
        groups,
        run_dir,
        argv=argv,
        quiet=quiet,
        target=dataclasses.replace(target, urls=urls),
        quick=quick,
        budget_s=None,
    )
    if run_extras:
        extras.run_extras(run_dir, quick=quick, quiet=quiet, target=(found, by_server))
    return _report_and_publish(run_dir, out_root, t0, quiet=quiet)


def cmd_bench(args: Any) -> int:
    """``turnbench bench``: see :func:`bench` (and :func:`bench_target` with ``--target``)."""
    if getattr(args, "target", None):
        urls = probe.parse_targets(args.target)
        latest = bench_target(
            Target(urls=urls, ca_path=args.ca, api_key=args.api_key),
            quick=args.quick,
            out_root=args.out,
            argv=sys.argv,
            quiet=args.quiet,
            run_extras=getattr(args, "extras", True),
        )
    else:
        latest = _bench_from_args(args)
    print(latest / "report.html")
    if (latest / "report.log").is_file():
        print(
            f"turnbench: error: the run is complete but some report sections failed; see {latest / 'report.log'} "
            f"(then re-render with `turnbench report {latest}`)",
            file=sys.stderr,
        )
        return 1
    return 0


def _bench_from_args(args: Any) -> Path:
    return bench(
        quick=args.quick,
        out_root=args.out,
        argv=sys.argv,
        quiet=args.quiet,
        migration_runtime=args.migration_runtime,
        budget_s=getattr(args, "budget_s", BUDGET_S) or None,
        run_extras=getattr(args, "extras", True),
    )
