"""``turnbench run``: one agent workload over several transports and state strategies, measured honestly.

A run crosses scenarios × transports × state strategies (× profile / concurrency / rate overrides) into
*cells*. Each server runs in its own process (:mod:`loadtests.procs`), so client and server CPU never mix;
the load generator watches itself (:class:`~loadtests.monitor.LoadMonitor`) and says when it saturates.
Cells are interleaved round by round (A B C A B C …) so drift hits them all alike; warm-up rollouts run
first and are kept in the samples but marked ``warmup`` and left out of every summary. Each rollout gets
its own client object and connection; connection setup is measured apart (``connect_ms``) and is in no
``turn_ms``; in an open loop the rollout's clock starts at its scheduled arrival, so turn 0's ``queue_ms``
holds the generator's lateness *and* the connection setup. Seeds are fixed: rollout *k* of a cell does the
same work on every transport. The run directory (the contract with the report) is written by
:mod:`loadtests.runner_out`; :func:`load_run` reads it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

from clients.agent import Toolbox, run_rollout
from clients.base import RolloutResult, make_client
from loadtests.monitor import LoadMonitor, MonitorReport
from loadtests.procs import Endpoint, start_server_process, target_endpoint
from loadtests.runner_loops import chunk_plan, closed_loop, open_loop, poisson_offsets
from loadtests.runner_out import RunData, load_run
from loadtests.scenarios import Scenario, states_for
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.transports import TRANSPORTS, get_transport

__all__ = ["Cell", "ChunkStat", "Collected", "RunConfig", "RunData", "Sample", "chunk_plan", "execute",
           "load_run", "plan_cells", "run", "server_transport"]

ToolboxFactory = Callable[[Scenario, int], Toolbox]
TASK = "Investigate the repository and summarize what you find."


def default_toolbox(scenario: Scenario, index: int) -> Toolbox:
    """The scenario's tools for rollout ``index``: same index, same output sizes on every transport."""
    return Toolbox(output_bytes=scenario.tool_output_bytes, output_sigma=scenario.tool_output_sigma,
                   latency_ms=scenario.tool_latency_ms, seed=scenario.seed * 100_003 + index)


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One measured combination. ``cell`` is its string id, unique in a run."""

    cell: str
    scenario: Scenario
    transport: str  # the client transport (registry key)
    server: str  # the server transport it talks to; "inproc" for the in-process reference
    state: str
    profile: str
    concurrency: int | None  # closed loop
    arrival_rate_rps: float | None  # open loop
    variant: str
    tls: bool
    number: int = 0  # position in the plan: makes this cell's task text (and so its prompts) its own

    @property
    def mode(self) -> str:
        return "open" if self.arrival_rate_rps is not None else "closed"

    @property
    def endpoint_key(self) -> str:
        """Which server process serves this cell: one per (server transport, profile, TLS)."""
        return f"{self.server}/{self.profile}/{'tls' if self.tls else 'plain'}"

    def labels(self) -> dict[str, Any]:
        """The columns every sample row of this cell carries (beside ``round`` and ``warmup``)."""
        return {"scenario": self.scenario.name, "profile": self.profile, "concurrency": self.concurrency,
                "arrival_rate_rps": self.arrival_rate_rps, "mode": self.mode, "cell": self.cell,
                "variant": self.variant, "tls": self.tls}


@dataclass(kw_only=True)
class RunConfig:
    """Everything ``turnbench run`` was asked to do (the CLI maps its flags onto these fields)."""

    scenarios: list[Scenario]
    transports: list[str]
    states: tuple[str, ...] | None = None  # None: the scenario's per-transport defaults
    profiles: tuple[str, ...] | None = None  # None: the scenario's profile
    concurrency: tuple[int, ...] | None = None  # closed-loop override
    rates_rps: tuple[float, ...] | None = None  # open-loop override (wins over concurrency)
    variant: str = "default"
    server_settings: dict[str, Any] = field(default_factory=dict)  # extra Settings for every server
    targets: dict[str, str] = field(default_factory=dict)  # server transport -> URL of a running server
    ca_path: str | None = None
    api_key: str | None = None
    out_dir: Path | None = None
    quiet: bool = False
    loop: str = "uvloop"
    cpu_threshold: float = 0.9  # load generator saturation: CPU, fraction of one core
    lag_p99_threshold_ms: float = 5.0  # load generator saturation: event-loop lag p99, in ms
    server_timeout_s: float = 30.0
    gc: str = "between-chunks"  # or "auto": Python's collector may pause the client mid-request
    toolbox_factory: ToolboxFactory = default_toolbox
    argv: list[str] = field(default_factory=list)
    task_tag: str = field(default_factory=lambda: secrets.token_hex(4))  # see one_rollout


def server_transport(transport: str) -> str:
    """The server a client transport talks to: ``sdk-https`` → ``https``, ``grpc-json`` → ``grpc``."""
    return get_transport(transport).server_name


def _cell_id(scenario: str, transport: str, state: str, profile: str, load: str, variant: str) -> str:
    base = f"{scenario}:{transport}:{state}:{profile}:{load}"
    return base if variant == "default" else f"{base}:{variant}"


def plan_cells(config: RunConfig) -> list[Cell]:
    """Cross scenarios × profiles × loads × transports × states into cells, in a stable order.

    The ``calibration`` scenario always runs ``inproc`` too: it separates the harness from the transport.
    Raises ``ValueError`` for an unknown transport or a state strategy no transport can use.
    """
    cells: list[Cell] = []
    for sc in config.scenarios:
        transports = list(dict.fromkeys(config.transports))
        if sc.name == "calibration" and "inproc" not in transports:
            transports.append("inproc")
        loads: list[tuple[int | None, float | None]]
        if config.rates_rps:
            loads = [(None, r) for r in config.rates_rps]
        elif config.concurrency:
            loads = [(c, None) for c in config.concurrency]
        else:
            loads = [(None if sc.arrival_rate_rps else sc.concurrency, sc.arrival_rate_rps)]
        for profile in config.profiles or (sc.profile,):
            for conc, rate in loads:
                load = f"r{rate:g}" if rate is not None else f"c{conc}"
                for t in transports:
                    if t not in TRANSPORTS:
                        raise ValueError(f"unknown transport {t!r}; known: {', '.join(TRANSPORTS)}")
                    states = states_for(sc, t)
                    if config.states is not None:
                        states = tuple(s for s in config.states if s in states)
                    for state in states:
                        tls = False if t == "inproc" else sc.tls
                        cells.append(Cell(
                            cell=_cell_id(sc.name, t, state, profile, load, config.variant), scenario=sc,
                            transport=t, server=server_transport(t), state=state, profile=profile,
                            concurrency=conc, arrival_rate_rps=rate, variant=config.variant, tls=tls,
                            number=len(cells)))
    if not cells:
        raise ValueError("no cells to run: check --transports and --states")
    return cells


# ---------------------------------------------------------------------------------------------- servers


def start_endpoints(config: RunConfig, cells: Sequence[Cell], workdir: Path) -> dict[str, Endpoint]:
    """One endpoint per ``Cell.endpoint_key``: a started server process, a ``--target``, or (inproc) a
    service in this process. Server processes start in parallel; if one fails, the others are stopped."""
    needed = {c.endpoint_key: c for c in cells}
    endpoints: dict[str, Endpoint] = {}
    to_start: dict[str, Cell] = {}
    for key, c in needed.items():
        if c.server == "inproc":
            settings = Settings.from_env(profile=c.profile, tls=False, **config.server_settings,
                                         usage_db=str(workdir / f"usage-inproc-{c.profile}.db"))
            endpoints[key] = Endpoint(transport="inproc", url="", tls=False,
                                      options={"service": ResponsesService(settings)},
                                      settings={"profile": c.profile, "tls": False, **config.server_settings})
        elif c.server in config.targets:
            endpoints[key] = target_endpoint(c.server, config.targets[c.server], ca_path=config.ca_path,
                                             api_key=config.api_key)
        else:
            to_start[key] = c
    with ThreadPoolExecutor(max_workers=max(1, len(to_start))) as pool:
        futures = {key: pool.submit(
            start_server_process, c.server, workdir=workdir, profile=c.profile, tls=c.tls,
            settings=config.server_settings, api_key=config.api_key, timeout_s=config.server_timeout_s)
            for key, c in to_start.items()}
        errors: list[BaseException] = []
        for key, fut in futures.items():
            try:
                endpoints[key] = fut.result()
            except BaseException as exc:  # keep going: every started server must be stopped below
                errors.append(exc)
    if errors:
        stop_endpoints(endpoints)
        raise errors[0]
    return endpoints


def stop_endpoints(endpoints: Mapping[str, Endpoint]) -> dict[str, int | None]:
    """SIGTERM every server process the runner started; close in-process services.

    Returns: exit status per endpoint key (None: not a process).
    """
    codes: dict[str, int | None] = {}
    for key, ep in endpoints.items():
        codes[key] = ep.process.stop() if ep.process is not None else None
        service = ep.options.get("service")
        if isinstance(service, ResponsesService):
            service.close()
    return codes


# ---------------------------------------------------------------------------------------------- execution


@dataclass(slots=True)
class Sample:
    """One rollout and where it ran."""

    rollout: RolloutResult
    cell: Cell
    round: int
    warmup: bool


@dataclass(slots=True)
class ChunkStat:
    """One cell's share of one round: what it cost the client, the server, and the client's loop."""

    cell: str
    round: int
    warmup: bool
    rollouts: int
    turns: int
    wall_s: float
    client_cpu_s: float
    server_cpu_s: float | None  # None: the server is not a process the runner can see
    lag_ms: list[float]


@dataclass(slots=True)
class Collected:
    samples: list[Sample]
    chunks: list[ChunkStat]
    monitor: MonitorReport
    loop: str
    system: dict[str, Any] = field(default_factory=dict)  # machine-wide CPU while the run ran


def _failed(cell: Cell, index: int, error: str) -> RolloutResult:
    return RolloutResult(transport=cell.transport, state=cell.state, rollout_id=index, success=False,
                         error=error, turns=[], rollout_ms=0.0)


async def one_rollout(cell: Cell, index: int, endpoint: Endpoint, toolbox_factory: ToolboxFactory,
                      scheduled_ns: int | None = None, task_tag: str = "") -> RolloutResult:
    """A fresh client, its connection (timed apart), one rollout, close. Never raises (but cancellation).

    The task text starts with ``[<task_tag> <cell number>.<index>]``: the same length everywhere, but a
    prompt of its own, so the engine's prefix cache (shared by every connection of a server) cannot serve
    one cell's rollout from another cell's identical one; the tool definitions before it stay shared, as a
    system prompt is. The scripted model's tool calls and answer depend on the seed only.
    """
    sc = cell.scenario
    meta = {**sc.metadata(), "seed": str(sc.seed + index)}
    task = f"[{task_tag} {cell.number:03d}.{index:05d}] {TASK}"
    try:
        client = make_client(cell.transport, endpoint.client_config())
        connect_ms = await client.connect()
    except Exception as exc:
        return _failed(cell, index, f"connect: {type(exc).__name__}: {exc}")
    try:
        return await run_rollout(client, state=cell.state, toolbox=toolbox_factory(sc, index), metadata=meta,
                                 rollout_id=index, scheduled_ns=scheduled_ns, transport=cell.transport,
                                 connect_ms=connect_ms, task=task)
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def run_chunk(config: RunConfig, cell: Cell, rnd: int, indices: Sequence[int], endpoint: Endpoint,
                    on_done: Callable[[], object] = lambda: None) -> list[RolloutResult]:
    """One cell's share of one round: closed loop (``concurrency`` in flight) or open loop (Poisson
    arrivals, each rollout stamped with its scheduled time). ``on_done`` is called after each rollout."""

    async def job(i: int, scheduled_ns: int | None = None) -> RolloutResult:
        result = await one_rollout(cell, i, endpoint, config.toolbox_factory, scheduled_ns, config.task_tag)
        on_done()
        return result

    if cell.arrival_rate_rps is not None:
        offsets = poisson_offsets(cell.arrival_rate_rps, len(indices), seed=cell.scenario.seed * 1009 + rnd)
        return await open_loop(offsets, lambda k, due: job(indices[k], due))
    return await closed_loop([functools.partial(job, i) for i in indices], cell.concurrency or 1)


async def execute(config: RunConfig, cells: Sequence[Cell], endpoints: Mapping[str, Endpoint],
                  *, loop_name: str = "asyncio") -> Collected:
    """Run every chunk of :func:`chunk_plan` in order under one :class:`LoadMonitor`."""
    plan = chunk_plan(cells)
    samples: list[Sample] = []
    chunks: list[ChunkStat] = []
    bar = tqdm(total=sum(len(ch[2]) for ch in plan), unit="rollout", dynamic_ncols=True, leave=False,
               disable=config.quiet or not sys.stderr.isatty())
    monitor = LoadMonitor(cpu_threshold=config.cpu_threshold, lag_p99_threshold_ms=config.lag_p99_threshold_ms)
    sys0, load0 = psutil.cpu_times(), os.getloadavg()
    async with monitor:
        for rnd, cell, indices, warmup in plan:
            ep = endpoints[cell.endpoint_key]
            bar.set_description_str(f"round {rnd} {cell.cell}", refresh=False)
            if config.gc == "between-chunks":
                gc.collect()  # a full collection of this process takes 20-50 ms: never inside a chunk
                gc.disable()
                await asyncio.sleep(monitor.interval_s + 0.01)  # the probe notes the collection's stall here
            lag0, cpu0, srv0, t0 = len(monitor.lag_ms), time.process_time(), ep.cpu_s(), time.perf_counter()
            try:
                results = await run_chunk(config, cell, rnd, indices, ep, on_done=lambda: bar.update(1))
            finally:
                gc.enable()
            srv1 = ep.cpu_s()
            chunks.append(ChunkStat(
                cell=cell.cell, round=rnd, warmup=warmup, rollouts=len(results),
                turns=sum(len(r.turns) for r in results), wall_s=time.perf_counter() - t0,
                client_cpu_s=time.process_time() - cpu0,
                server_cpu_s=None if srv0 is None or srv1 is None else srv1 - srv0,
                lag_ms=list(monitor.lag_ms[lag0:])))
            samples += [Sample(r, cell, rnd, warmup) for r in results]
        for ep in endpoints.values():
            service = ep.options.get("service")
            if isinstance(service, ResponsesService):
                await service.drain()
    bar.close()
    sys1 = psutil.cpu_times()
    total = sum(sys1) - sum(sys0)
    system = {"cpu_busy": 1.0 - (sys1.idle - sys0.idle) / total if total > 0 else None,
              "cores": psutil.cpu_count(), "loadavg_1m_start": load0[0], "loadavg_1m_end": os.getloadavg()[0]}
    return Collected(samples=samples, chunks=chunks, monitor=monitor.report(), loop=loop_name, system=system)


def run_in_loop(config: RunConfig, cells: Sequence[Cell], endpoints: Mapping[str, Endpoint]) -> Collected:
    """:func:`execute` on a fresh event loop: uvloop unless ``config.loop == "asyncio"`` (or it is missing)."""
    if config.loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                version = getattr(uvloop, "__version__", "?")
                return runner.run(execute(config, cells, endpoints, loop_name=f"uvloop {version}"))
    return asyncio.run(execute(config, cells, endpoints, loop_name="asyncio"))


def run(config: RunConfig) -> tuple[Path, int]:
    """Plan, start servers, execute, stop servers, write the run directory, print the summary table.

    Returns: (run directory, exit status: 0, or 1 if a server exited badly or every rollout failed).
    """
    from loadtests import runner_out

    cells = plan_cells(config)
    with tempfile.TemporaryDirectory(prefix="turnbench-run-") as tmp:
        workdir = Path(tmp)
        endpoints = start_endpoints(config, cells, workdir)
        servers_ready = {k: ep.cpu_s() for k, ep in endpoints.items()}
        try:
            if not config.quiet:
                for key, ep in endpoints.items():
                    where = f"pid {ep.process.pid}" if ep.process else ("in-process" if not ep.url else "target")
                    print(f"server {key}: {ep.url or '(in process)'} ({where})", file=sys.stderr)
            collected = run_in_loop(config, cells, endpoints)
        finally:
            exit_codes = stop_endpoints(endpoints)
        servers = {k: runner_out.server_record(ep, exit_codes[k], servers_ready[k]) for k, ep in endpoints.items()}
        out = config.out_dir or runner_out.default_out_dir(config.scenarios)
        data = runner_out.write_run(out, config, cells, collected, servers)
    print(runner_out.format_table(data))
    status = runner_out.print_warnings(data, file=sys.stderr)
    print(f"run directory: {out}")
    return out, status

