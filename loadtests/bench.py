"""``turnbench bench``: the fixed, seeded benchmark matrix → ``reports/latest/`` and ``reports/runs/<stamp>/``.

The matrix is data (:func:`full_matrix`, :func:`quick_matrix`): groups of cells that share a scenario
sizing, a profile, a concurrency level and server settings. Every group becomes runner cells
(:func:`loadtests.runner.plan_cells`); all cells of all groups run in **one** interleaved execution (A B C
A B C …) against one server process per (transport, profile, TLS, variant), so the ablations are measured
beside the cells they are compared with. Transports that are not built are skipped and listed.

Sizing (2 cores): rollout counts are small where a rollout is slow (``frontier``: ~65 tok/s, ~8 s for 20
tool calls) and larger where it is cheap (``instant``, ``fast``). Full ≈ 7–8 min, ``--quick`` ≈ 40 s.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np

from clients.base import ClientConfig, ResponsesClient, TurnRecorder
from loadtests import runner, runner_out
from loadtests.metrics import ratio_ci
from loadtests.procs import Endpoint
from loadtests.scenarios import Scenario, load_scenario
from turnbench.settings import Settings

__all__ = ["ABLATIONS", "Group", "bench", "full_matrix", "measure_recovery", "quick_matrix", "run_matrix"]

MAIN_STATES: dict[str, tuple[str, ...]] = {"https": ("full", "store"), "ws": ("connection", "store"),
                                           "grpc": ("connection",)}
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
    states: Mapping[str, tuple[str, ...]]
    sizing: Mapping[str, Any] = field(default_factory=dict)
    variant: str = "default"
    server_settings: Mapping[str, Any] = field(default_factory=dict)


def _size(rollouts: int, rounds: int, warmup: int, **extra: Any) -> dict[str, Any]:
    return {"rollouts": rollouts, "rounds": rounds, "warmup": warmup, **extra}


def _ablations(scenario: str, sizing: Mapping[str, Any]) -> list[Group]:
    out = [Group(scenario=scenario, profile="fast", concurrency=1, states={"ws": ("connection",)}, sizing=sizing,
                 variant=v, server_settings=s) for v, s in ABLATIONS.items()]
    out[-1] = Group(scenario=scenario, profile="fast", concurrency=1, sizing=sizing, variant="tokens_per_chunk-8",
                    states={"ws": ("connection",), "grpc": ("connection",)}, server_settings={"tokens_per_chunk": 8})
    out.append(Group(scenario=scenario, profile="fast", concurrency=1, states={"ws": ("store",)}, sizing=sizing,
                     variant="no-connection_cache", server_settings={"connection_cache": False}))
    return out


def full_matrix() -> list[Group]:
    """``make bench``: {agent-20, coding-agent-50} × {instant, fast, frontier} × concurrency {1, 4} over
    https full/store, ws connection/store, grpc connection (+ grpc-json and https-raw on agent-20), the ablations on
    agent-20 at ``fast``, and the calibration scenario. ``frontier`` runs agent-20 only: a 50-call frontier
    rollout takes ~20 s (run it with ``turnbench run --scenario coding-agent-50 --profile frontier``)."""
    # grpc-json separates serialization from transport; https-raw (a minimal HTTP/1.1 client) separates the
    # cost of the httpx client library from the cost of HTTPS itself
    main = {**MAIN_STATES, "grpc-json": ("connection",), "https-raw": ("full",)}
    # the servers are warm from round 0 (every cell's warm-up), so slow cells skip their own warm-up
    c1 = {"instant": _size(6, 3, 1), "fast": _size(6, 3, 1), "frontier": _size(2, 2, 0, answer_tokens=8)}
    c4 = {"instant": _size(8, 2, 1), "fast": _size(8, 2, 1), "frontier": _size(4, 1, 0, answer_tokens=8)}
    groups: list[Group] = []
    for prof in ("instant", "fast", "frontier"):
        groups.append(Group(scenario="agent-20", profile=prof, concurrency=1, sizing=c1[prof],
                            states=main if prof != "frontier" else MAIN_STATES))
        groups.append(Group(scenario="agent-20", profile=prof, concurrency=4, states=MAIN_STATES, sizing=c4[prof]))
    for prof in ("instant", "fast"):
        groups.append(Group(scenario="coding-agent-50", profile=prof, concurrency=1, states=MAIN_STATES,
                            sizing=_size(3, 3, 0)))
        groups.append(Group(scenario="coding-agent-50", profile=prof, concurrency=4, states=MAIN_STATES,
                            sizing=_size(4, 1, 0)))
    groups += _ablations("agent-20", c1["fast"])
    groups.append(Group(scenario="calibration", profile=None, concurrency=1, sizing=_size(3, 3, 1),
                        states={"https": ("full",), "ws": ("connection",), "grpc": ("connection",)}))
    return groups


def quick_matrix() -> list[Group]:
    """``make bench-quick`` (~1 min): agent-20 at concurrency 1 — ``instant`` over https full, ws connection,
    grpc connection; ``fast`` adding https store — and one ablation (token cache off on ws/connection)."""
    sizing = _size(3, 3, 1)
    core = {"https": ("full",), "ws": ("connection",), "grpc": ("connection",)}
    return [Group(scenario="agent-20", profile="instant", concurrency=1, states=core, sizing=sizing),
            Group(scenario="agent-20", profile="fast", concurrency=1, states={**core, "https": ("full", "store")},
                  sizing=sizing),
            Group(scenario="agent-20", profile="fast", concurrency=1, states={"ws": ("connection",)}, sizing=sizing,
                  variant="no-token_cache", server_settings={"token_cache": False})]


@dataclass(frozen=True, kw_only=True)
class _VariantCell(runner.Cell):
    """A runner cell whose server is its variant's own (the runner keys servers by transport/profile/TLS)."""

    @property
    def endpoint_key(self) -> str:
        base = f"{self.server}/{self.profile}/{'tls' if self.tls else 'plain'}"
        return base if self.variant == "default" else f"{base}/{self.variant}"


def built_transports() -> set[str]:
    """Every transport of the table."""
    from turnbench.transports import TRANSPORTS

    return set(TRANSPORTS)


def _plan(group: Group, built: set[str], base: runner.RunConfig) -> tuple[runner.RunConfig, list[runner.Cell]]:
    states = {t: s for t, s in group.states.items() if t in built}
    sc: Scenario = load_scenario(group.scenario).replace(**group.sizing, states=states)
    cfg = dataclasses.replace(base, scenarios=[sc], transports=list(states), states=None,
                              profiles=(group.profile,) if group.profile else None,
                              concurrency=(group.concurrency,), variant=group.variant,
                              server_settings={**base.server_settings, **group.server_settings})
    cells = runner.plan_cells(cfg)
    return cfg, [_VariantCell(**{f.name: getattr(c, f.name) for f in fields(c)}) for c in cells]


def _start_all(plans: Sequence[tuple[runner.RunConfig, list[runner.Cell]]], workdir: Path) -> dict[str, Endpoint]:
    """Start every endpoint the cells need, variants in parallel; on failure stop what started."""
    todo: dict[str, tuple[runner.RunConfig, list[runner.Cell]]] = {}
    for cfg, cells in plans:
        for c in cells:
            todo.setdefault(c.endpoint_key, (cfg, []))[1].append(c)
    endpoints: dict[str, Endpoint] = {}
    errors: list[BaseException] = []
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(todo)))) as pool:
        futs = []
        for key, (cfg, cells) in todo.items():
            where = workdir / key.replace("/", "_")  # per-server files (CA, log, usage DB) must not collide
            where.mkdir(parents=True, exist_ok=True)
            futs.append(pool.submit(runner.start_endpoints, cfg, cells[:1], where))
        for fut in futs:
            try:
                endpoints.update(fut.result())
            except BaseException as exc:  # every started server must still be stopped
                errors.append(exc)
    if errors:
        runner.stop_endpoints(endpoints)
        raise errors[0]
    return endpoints


def run_matrix(groups: Sequence[Group], out: Path, *, argv: Sequence[str] = (), quiet: bool = True,
               server_settings: Mapping[str, Any] | None = None, extra_meta: Mapping[str, Any] | None = None
               ) -> Path:
    """Run every group's cells in one interleaved execution and write the run directory ``out``.

    ``server_settings`` apply to every server (e.g. the gate's ``--burn``). ``run.json`` gains ``bench``:
    the matrix, the transports skipped as not built, the wall time in s.
    Raises: ``ValueError`` if no group has a built transport.
    """
    t0 = time.perf_counter()
    built = built_transports()
    base = runner.RunConfig(scenarios=[], transports=[], quiet=quiet, argv=list(argv),
                            server_settings=dict(server_settings or {}), out_dir=out)
    plans = [_plan(g, built, base) for g in groups if any(t in built for t in g.states)]
    skipped = sorted({t for g in groups for t in g.states} - built)
    if not plans:
        raise ValueError(f"no transport of the matrix is built (skipped: {', '.join(skipped)})")
    # one number per cell across all groups: it makes each cell's prompts its own (runner.one_rollout)
    number = itertools.count()
    plans = [(cfg, [dataclasses.replace(c, number=next(number)) for c in cs]) for cfg, cs in plans]
    cells = [c for _, cs in plans for c in cs]
    scenarios = list({c.scenario.name: c.scenario for c in cells}.values())
    base = dataclasses.replace(base, scenarios=scenarios, transports=sorted({c.transport for c in cells}))
    if not quiet:
        print(f"bench: {len(cells)} cells, {sum(c.scenario.rollouts + c.scenario.warmup for c in cells)} rollouts"
              + (f"; not built, skipped: {', '.join(skipped)}" if skipped else ""), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="turnbench-bench-") as tmp:
        endpoints = _start_all(plans, Path(tmp))
        ready = {k: ep.cpu_s() for k, ep in endpoints.items()}
        try:
            collected = runner.run_in_loop(base, cells, endpoints)
        finally:
            codes = runner.stop_endpoints(endpoints)
        servers = {k: runner_out.server_record(ep, codes[k], ready[k]) for k, ep in endpoints.items()}
        runner_out.write_run(out, base, cells, collected, servers)
    meta = json.loads((out / "run.json").read_text())
    meta["injected"] = {}  # per server, from the settings it was started with (variants differ)
    for key, rec in servers.items():
        knobs = {n: nz for n in ("inject_ms", "burn_us")
                 if (nz := {st: v for st, v in dict(rec["settings"].get(n) or {}).items() if v})}
        if knobs:
            meta["injected"][key] = knobs
    meta["bench"] = {"groups": [{**g.__dict__, "states": {k: list(v) for k, v in g.states.items()},
                                 "sizing": dict(g.sizing), "server_settings": dict(g.server_settings)}
                                for g in groups],
                     "not_built": skipped, "wall_s": time.perf_counter() - t0, **(extra_meta or {})}
    (out / "run.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    return out


def bench(*, quick: bool = False, out_root: Path = Path("reports"), argv: Sequence[str] = (),
          quiet: bool = False, migration_runtime: bool = True) -> Path:
    """Run the matrix, measure migration cost, write the report into ``out_root/runs/<stamp>/`` and copy it
    to ``out_root/latest/`` (replaced). Returns: the ``latest`` directory."""
    import asyncio

    from loadtests import migration, report

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = out_root / "runs" / f"{stamp}-bench{'-quick' if quick else ''}"
    t0 = time.perf_counter()
    run_matrix(quick_matrix() if quick else full_matrix(), run_dir, argv=argv, quiet=quiet,
               extra_meta={"quick": quick})
    runtime = None
    if migration_runtime:
        transport = "ws" if "ws" in built_transports() else "inproc"
        runtime = asyncio.run(measure_recovery(transport, rollouts=1 if quick else 3))
    data = migration.migration_report(runtime=runtime)
    (run_dir / "migration.json").write_text(json.dumps(data, indent=2, default=str))
    report.write_report(run_dir, migration=data)
    latest = out_root / "latest"
    if latest.exists():
        shutil.rmtree(latest)
    shutil.copytree(run_dir, latest)
    if not quiet:
        print(f"bench: {time.perf_counter() - t0:.0f} s; report: {latest / 'report.html'} (copy: {run_dir})")
    return latest


# ------------------------------------------------------------------------------------------ migration


class _DropOnce(ResponsesClient):
    """Wraps a client; before call ``drop_at`` (0-based) it closes the connection under the loop, so that
    turn fails with ``connection_closed`` and the agent loop's recovery runs, as after a real drop."""

    transport: ClassVar[str] = "migration-probe"

    def __init__(self, inner: ResponsesClient, drop_at: int) -> None:
        super().__init__(inner.config)
        self.inner, self.drop_at, self.calls = inner, drop_at, 0

    async def connect(self) -> float | None:
        return await self.inner.connect()

    async def reconnect(self) -> float | None:
        again = getattr(self.inner, "reconnect", None)
        if again is not None:
            return cast(float | None, await again())
        await self.inner.close()
        return await self.inner.connect()

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        self.calls += 1
        if self.calls == self.drop_at + 1:
            await self.inner.close()  # the server sees the connection go, and its cache with it
            recorder.sent(0)
            recorder.fail("connection dropped by the migration probe", "connection_closed")
            return {}
        return await self.inner.create(body, recorder=recorder)


STRATEGIES = {"store": "reconnect + hydrate from the store (store=true)",
              "connection": "reconnect + resend the full context (store=false)"}


async def measure_recovery(transport: str = "ws", *, profile: str = "fast", rollouts: int = 3, drop_at: int = 10,
                           tool_calls: int = 20, seed: int = 0) -> dict[str, Any]:
    """Drop the connection before turn ``drop_at`` of ``tool_calls``-call rollouts and recover, per strategy
    (:data:`STRATEGIES`), interleaved with undisturbed rollouts on one in-process server.

    Returns: per strategy the median extra rollout time (ms, and the disturbed/undisturbed ratio with its
    95% CI), the loop's ``recovery_ms`` (reconnect + failed turn), and the resumed turn's ``turn_ms`` and
    ``bytes_up`` against the same turn undisturbed. ``built: False`` when the transport is missing.
    """
    from clients.agent import Toolbox, run_rollout
    from clients.base import make_client
    from loadtests.runner import TASK
    from servers.base import start_server
    from turnbench.service import ResponsesService

    settings = Settings(profile=profile, tls=transport != "inproc", usage_db=":memory:")
    server = None
    if transport == "inproc":
        service = ResponsesService(settings)
        config = ClientConfig(url="inproc", options={"service": service})
    else:
        server = await start_server(transport, settings)
        service = server.service
        config = ClientConfig(url=server.url, ssl_context=server.tls.client_ssl_context() if server.tls else None,
                              ca_pem=server.tls.ca_pem_bytes if server.tls else None)
    toolbox = Toolbox(seed=seed)
    meta = {"tool_calls": str(tool_calls), "seed": str(seed), "answer_tokens": "16"}
    rows: list[dict[str, Any]] = []
    try:
        for i in range(rollouts):
            for state in STRATEGIES:
                for dropped in (False, True):
                    async with _DropOnce(make_client(transport, config), drop_at if dropped else -1) as client:
                        r = await run_rollout(client, state=state, toolbox=toolbox, metadata=meta, rollout_id=i,
                                              transport=transport, task=f"[{state}:{dropped:d}:{i}] {TASK}")
                    resumed = r.turns[drop_at + 1] if dropped and len(r.turns) > drop_at + 1 else (
                        r.turns[drop_at] if len(r.turns) > drop_at else None)
                    rows.append({"state": state, "dropped": dropped, "success": r.success, "rollout_ms": r.rollout_ms,
                                 "recovery_ms": r.recovery_ms, "recoveries": r.recoveries,
                                 "resumed_turn_ms": resumed.turn_ms if resumed else None,
                                 "resumed_bytes_up": resumed.bytes_up if resumed else None})
    finally:
        if server is not None:
            await server.stop()
        service.close()
    return {"transport": transport, "built": True, "profile": profile, "drop_at": drop_at, "tool_calls": tool_calls,
            "rollouts": rollouts, "strategies": _recovery_summary(rows), "samples": rows}


def _med(df: Any, col: str) -> float:
    return float(np.nanmedian(df[col].astype(float))) if len(df) else float("nan")


def _recovery_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import pandas as pd

    df = pd.DataFrame(rows)
    out = []
    for state, text in STRATEGIES.items():
        on = df[(df["state"] == state) & df["success"]]
        base, hit = on[~on["dropped"]], on[on["dropped"]]
        ratio, lo, hi = ratio_ci(hit["rollout_ms"], base["rollout_ms"])
        out.append({"strategy": text, "ok": f"{len(hit)}/{int((df['state'] == state).sum() // 2)}",
                    "extra_rollout_ms": _med(hit, "rollout_ms") - _med(base, "rollout_ms"), "ratio": ratio,
                    "ratio_lo": lo, "ratio_hi": hi, "recovery_ms": _med(hit, "recovery_ms"),
                    **{f"{k} {w}": _med(d, k) for k in ("resumed_turn_ms", "resumed_bytes_up")
                       for w, d in (("dropped", hit), ("undisturbed", base))}})
    return out


def cmd_bench(args: Any) -> int:
    """``turnbench bench``: see :func:`bench`."""
    latest = bench(quick=args.quick, out_root=args.out, argv=sys.argv, quiet=args.quiet,
                   migration_runtime=args.migration_runtime)
    print(latest / "report.html")
    return 0


def cmd_report(args: Any) -> int:
    """``turnbench report DIR [--out OUT]``: rebuild the report from saved samples."""
    from loadtests.report import write_report

    paths = write_report(args.run_dir, args.out)
    for path in paths.values():
        print(path)
    return 0
