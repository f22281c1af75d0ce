"""Executing cells: the rollout every harness tool runs, the round-by-round execution, one start/stop path.

:func:`run` is ``turnbench run``: plan the cells (:func:`loadtests.model.plan_cells`), :func:`measure` them,
write the run directory (:class:`loadtests.rundir.RunDir`). Bench and the gate build their own cells and
call :func:`measure` the same way. Each server runs in its own process (:mod:`loadtests.execution.procs`), so client
and server CPU never mix; the load generator watches itself (:class:`~loadtests.monitor.LoadMonitor`) and
says when it saturates. Cells are interleaved round by round (:func:`loadtests.loops.chunk_plan`) so drift
hits them all alike; warm-up rollouts run first and are kept in the samples but marked ``warmup``. Each
rollout gets its own client object and connection; connection setup is measured apart (``connect_ms``) and
is in no ``turn_ms``; in an open loop the rollout's clock starts at its scheduled arrival, so turn 0's
``queue_ms`` holds the generator's lateness *and* the connection setup. Seeds are fixed: rollout *k* of a
cell does the same work on every transport.

:func:`cell_rollout` and :func:`one_rollout` are the one rollout of the harness: the Locust users and the
overhead scripts run theirs through them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
from tqdm import tqdm

from clients.agent import run_rollout
from clients.base import ResponsesClient, RolloutResult, make_client
from loadtests.execution.loops import chunk_plan, closed_loop, open_loop, poisson_offsets
from loadtests.execution.machine import MachineProbe, background, pin_threads, plan_isolation, restore_threads
from loadtests.execution.monitor import LoadMonitor
from loadtests.execution.plan import (
    Cell,
    ChunkStat,
    Collected,
    RunConfig,
    Sample,
    ToolboxFactory,
    default_toolbox,
    plan_cells,
)
from loadtests.execution.procs import Endpoint, process_keys, start_endpoints, stop_endpoints, with_compaction
from loadtests.runs.rundir import RunDir, default_out_dir

__all__ = ["TASK", "cell_rollout", "execute", "measure", "one_rollout", "run", "run_chunk"]

TASK = "Investigate the repository and summarize what you find."


def _failed(cell: Cell, index: int, error: str) -> RolloutResult:
    return RolloutResult(
        transport=cell.transport,
        state=cell.state,
        rollout_id=index,
        success=False,
        error=error,
        turns=[],
        rollout_ms=0.0,
    )


async def cell_rollout(
    client: ResponsesClient,
    cell: Cell,
    index: int,
    *,
    toolbox_factory: ToolboxFactory = default_toolbox,
    scheduled_ns: int | None = None,
    task_tag: str = "",
    connect_ms: float | None = None,
    compactor: ResponsesClient | None = None,
) -> RolloutResult:
    """Rollout ``index`` of ``cell`` on a connected ``client``: the cell's scenario, state, tools and seed.

    A scenario that compacts (``compact_every``) compacts through ``compactor`` (default: ``client``, which must
    serve ``POST /v1/responses/compact``); state ``store`` compacts by the stored response's id where the
    compactor talks to the cell's own server (:attr:`Cell.compaction_cell` is the cell), else by sending the
    history.

    The task text starts with ``[<task_tag> <cell number>.<index>]``: the same length everywhere, but a
    prompt of its own, so the engine's prefix cache (shared by every connection of a server) cannot serve
    one cell's rollout from another cell's identical one; the tool definitions before it stay shared, as a
    system prompt is. The scripted model's tool calls and answer depend on the seed only.
    """
    sc = cell.scenario
    return await run_rollout(
        client,
        state=cell.state,
        toolbox=toolbox_factory(sc, index),
        metadata={**sc.metadata(index), "seed": str(sc.seed + index)},
        rollout_id=index,
        scheduled_ns=scheduled_ns,
        transport=cell.transport,
        connect_ms=connect_ms,
        task=f"[{task_tag} {cell.number:03d}.{index:05d}] {TASK}",
        compact_every=sc.compact_every,
        compactor=compactor,
        compact_by_id=cell.state == "store" and cell.compaction_cell is cell,
    )


async def one_rollout(
    cell: Cell,
    index: int,
    endpoint: Endpoint,
    *,
    toolbox_factory: ToolboxFactory = default_toolbox,
    scheduled_ns: int | None = None,
    task_tag: str = "",
) -> RolloutResult:
    """A fresh client, its connection (timed apart), :func:`cell_rollout`, close. Never raises (but
    cancellation): a connection that fails is a failed rollout whose error starts with ``connect:``.

    A cell that compacts over a client that cannot (WebSocket mode, gRPC, the SDK's and the raw HTTP clients)
    gets a second client, HTTPS (httpx), to ``endpoint.compaction`` (the HTTPS server of the same deployment) or,
    for a cell whose own server is HTTPS, to ``endpoint``; it is connected before the rollout starts and closed
    after it, and its connection time is in no record. Without one, the rollout fails with ``compaction:``."""
    client = compactor = None
    try:
        client = make_client(cell.transport, endpoint.client_config())
        if cell.scenario.compact_every and not client.serves_compact:
            where = endpoint.compaction or (endpoint if cell.server == "https" else None)
            if where is None:
                return _failed(cell, index, f"compaction: no HTTPS endpoint for {cell.transport}'s compact calls")
            compactor = make_client("https", where.client_config())
            await compactor.connect()
        connect_ms = await client.connect()
    except Exception as exc:
        await _close(compactor)
        return _failed(cell, index, f"connect: {type(exc).__name__}: {exc}")
    try:
        return await cell_rollout(
            client,
            cell,
            index,
            toolbox_factory=toolbox_factory,
            scheduled_ns=scheduled_ns,
            task_tag=task_tag,
            connect_ms=connect_ms,
            compactor=compactor,
        )
    finally:
        await _close(client)
        await _close(compactor)


async def _close(client: ResponsesClient | None) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            await client.close()


async def run_chunk(
    config: RunConfig,
    cell: Cell,
    rnd: int,
    indices: Sequence[int],
    endpoint: Endpoint,
    on_done: Callable[[], object] = lambda: None,
) -> list[RolloutResult]:
    """One cell's share of one round: closed loop (``concurrency`` in flight) or open loop (Poisson
    arrivals, each rollout stamped with its scheduled time). ``on_done`` is called after each rollout."""

    async def job(i: int, scheduled_ns: int | None = None) -> RolloutResult:
        result = await one_rollout(
            cell,
            i,
            endpoint,
            toolbox_factory=config.toolbox_factory,
            scheduled_ns=scheduled_ns,
            task_tag=config.task_tag,
        )
        on_done()
        return result

    if cell.arrival_rate_rps is not None:
        offsets = poisson_offsets(cell.arrival_rate_rps, len(indices), seed=cell.scenario.seed * 1009 + rnd)
        return await open_loop(offsets, lambda k, due: job(indices[k], due))
    return await closed_loop([functools.partial(job, i) for i in indices], cell.concurrency or 1)


def _round_estimate_s(chunks: Sequence[tuple[int, Cell, list[int], bool]], done: Sequence[ChunkStat]) -> float:
    """How long ``chunks`` (one round) should take: each cell's seconds per rollout so far × its rollouts."""
    per: dict[str, list[float]] = {}
    for ch in done:
        if ch.rollouts:
            per.setdefault(ch.cell, []).append(ch.wall_s / ch.rollouts)
    every = [x for xs in per.values() for x in xs]
    fallback = max(every) if every else 0.0
    return sum(max(per.get(c.cell, [fallback])) * len(idx) for _, c, idx, _ in chunks)


def _trim(
    plan: list[tuple[int, Cell, list[int], bool]], done: Sequence[ChunkStat], next_round: int, deadline: float
) -> dict[str, Any] | None:
    """Whether round ``next_round`` (and every later one) must be dropped to end by ``deadline``
    (``time.monotonic()``); the record of what was dropped, else None. Rounds 0 (warm-ups) and 1 always run,
    and a round runs whole or not at all, so every cell keeps the same rounds."""
    if next_round < 2:
        return None
    estimate = _round_estimate_s([ch for ch in plan if ch[0] == next_round], done)
    left = deadline - time.monotonic()
    if estimate <= left:
        return None
    rounds = max(ch[0] for ch in plan)
    return {
        "rounds_planned": rounds,
        "rounds_run": next_round - 1,
        "rollouts_dropped": sum(len(ch[2]) for ch in plan if ch[0] >= next_round),
        "reason": f"round {next_round} would take ~{estimate:.0f} s and {max(left, 0.0):.0f} s were left of the "
        "time budget",
    }


async def execute(
    config: RunConfig, cells: Sequence[Cell], endpoints: Mapping[str, Endpoint], *, loop_name: str = "asyncio"
) -> Collected:
    """Run every chunk of :func:`chunk_plan` in order under one :class:`LoadMonitor`. With
    ``config.deadline``, a round that would not end by then is dropped with every later one (see
    :func:`_trim`; ``Collected.trimmed`` says what was dropped)."""
    plan = chunk_plan(cells, counterbalance=config.counterbalance)
    trimmed: dict[str, Any] | None = None
    samples: list[Sample] = []
    chunks: list[ChunkStat] = []
    bar = tqdm(
        total=sum(len(ch[2]) for ch in plan),
        unit="rollout",
        dynamic_ncols=True,
        leave=False,
        disable=config.quiet or not sys.stderr.isatty(),
    )
    monitor = LoadMonitor(cpu_threshold=config.cpu_threshold, lag_p99_threshold_ms=config.lag_p99_threshold_ms)
    probe = MachineProbe()
    sys0, load0 = psutil.cpu_times(), os.getloadavg()

    def servers_cpu_s() -> float:
        return sum(v for e in endpoints.values() if (v := e.cpu_s()) is not None)

    async with monitor:
        for rnd, cell, indices, warmup in plan:
            if config.deadline is not None and chunks and chunks[-1].round != rnd:  # a new round starts
                trimmed = _trim(plan, chunks, rnd, config.deadline)
                if trimmed is not None:
                    break
            ep = endpoints[cell.endpoint_key]
            bar.set_description_str(f"round {rnd} {cell.cell}", refresh=False)
            if config.gc == "between-chunks":
                gc.collect()  # a full collection of this process takes 20-50 ms: never inside a chunk
                gc.disable()
                await asyncio.sleep(monitor.interval_s + 0.01)  # the probe notes the collection's stall here
            ref_ms = config.reference_cpu() if config.reference_cpu is not None else None
            all0, m0 = servers_cpu_s(), probe.read()
            lag0, cpu0, srv0, t0 = len(monitor.lag_ms), time.process_time(), ep.cpu_s(), time.perf_counter()
            try:
                results = await run_chunk(config, cell, rnd, indices, ep, on_done=lambda: bar.update(1))
            finally:
                gc.enable()
            srv1, cpu1 = ep.cpu_s(), time.process_time()
            m1, all1 = probe.read(), servers_cpu_s()
            chunks.append(
                ChunkStat(
                    cell=cell.cell,
                    round=rnd,
                    warmup=warmup,
                    rollouts=len(results),
                    turns=sum(len(r.turns) for r in results),
                    wall_s=time.perf_counter() - t0,
                    client_cpu_s=cpu1 - cpu0,
                    server_cpu_s=None if srv0 is None or srv1 is None else srv1 - srv0,
                    lag_ms=list(monitor.lag_ms[lag0:]),
                    background=background(m0, m1, own_cpu_s=(cpu1 - cpu0) + (all1 - all0), cores=probe.cores),
                    reference_cpu_ms=ref_ms,
                )
            )
            samples += [Sample(r, cell, rnd, warmup) for r in results]
        for ep in endpoints.values():
            if ep.service is not None:
                await ep.service.drain()
    bar.close()
    sys1 = psutil.cpu_times()
    total = sum(sys1) - sum(sys0)
    system = {
        "cpu_busy": 1.0 - (sys1.idle - sys0.idle) / total if total > 0 else None,
        "cores": psutil.cpu_count(),
        "loadavg_1m_start": load0[0],
        "loadavg_1m_end": os.getloadavg()[0],
    }
    return Collected(
        samples=samples, chunks=chunks, monitor=monitor.report(), loop=loop_name, system=system, trimmed=trimmed
    )


def _execute_in_a_fresh_loop(config: RunConfig, cells: Sequence[Cell], endpoints: Mapping[str, Endpoint]) -> Collected:
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


def measure(config: RunConfig, cells: Sequence[Cell]) -> Collected:
    """Start the servers ``cells`` need, execute every cell, stop the servers.

    Returns: what was gathered, with ``servers`` (their ``run.json`` records) filled in.
    Raises: ``ValueError`` if two cells share an id; :class:`loadtests.procs.ServerError` if a server
    does not start.
    """
    ids = [c.cell for c in cells]
    served = with_compaction(cells)
    if len(set(ids)) != len(ids):
        raise ValueError(f"cell ids must be unique in a run: {sorted({i for i in ids if ids.count(i) > 1})}")
    isolation = plan_isolation(process_keys(cells, config.targets), mode=config.cpu_pinning)
    with tempfile.TemporaryDirectory(prefix="turnbench-run-") as tmp:
        endpoints = start_endpoints(
            cells,
            Path(tmp),
            targets=config.targets,
            ca_path=config.ca_path,
            api_key=config.api_key,
            timeout_s=config.server_timeout_s,
            isolation=isolation,
        )
        pinned = pin_threads(os.getpid(), isolation.client) if isolation.pinned else {}
        try:
            if not config.quiet:
                print(f"cpu isolation: {isolation.reason}", file=sys.stderr)
                for key, ep in endpoints.items():
                    where = f"pid {ep.process.pid}" if ep.process else ep.kind
                    print(f"server {key}: {ep.url or '(in process)'} ({where})", file=sys.stderr)
            collected = _execute_in_a_fresh_loop(config, cells, endpoints)
        finally:
            restore_threads(pinned)
            codes = stop_endpoints(endpoints)
    collected.isolation = isolation.record()
    collected.servers = {
        key: ep.record(codes[key], sorted({c.transport for c in served if c.endpoint_key == key}))
        for key, ep in endpoints.items()
    }
    return collected


def run(config: RunConfig, cells: Sequence[Cell] | None = None, *, meta: Mapping[str, Any] | None = None) -> RunDir:
    """Measure ``cells`` (default: :func:`plan_cells` of ``config``) and write the run directory
    ``config.out_dir`` (default: :func:`loadtests.rundir.default_out_dir`); ``meta``: entries added to
    run.json. Returns: the run directory."""
    cells = list(cells) if cells is not None else plan_cells(config)
    collected = measure(config, cells)
    out = config.out_dir or default_out_dir(list({c.scenario.name: c.scenario for c in cells}.values()))
    return RunDir.write(out, config, cells, collected, meta)
