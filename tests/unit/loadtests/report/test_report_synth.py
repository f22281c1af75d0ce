"""Synthetic run directories with known medians, for the report/gate/compare tests.

``make_run`` builds the runner's own records (cells, rollout and turn results, chunks, server records) and
writes them with :meth:`loadtests.rundir.RunDir.write`, the writer ``turnbench run`` uses, so the files are
the runner's format by construction. Rollout times of a cell are ``median × (1 + spread·k)`` for a
symmetric set of k, so the cell's median is exactly the given median and the headline ratios are known.
Each chunk's process CPU follows from its turns: the server's is the stages' CPU × (1 + ``OUTSIDE``), the
client's ``CLIENT`` × the server's, so the CPU splits are known too; every chunk records a background load
(``background``: other processes' cores, with the CPUs full or not).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clients.base import RolloutResult, TurnResult
from loadtests.execution.monitor import MonitorReport
from loadtests.execution.plan import Cell, ChunkStat, Collected, RunConfig, Sample, plan_cells
from loadtests.runs.rundir import RunDir
from loadtests.workload.scenarios import load_scenario
from turnbench.schema import StageStat
from turnbench.settings import STAGES, Settings

# (transport, state) -> median rollout_ms at the fast profile, concurrency 1
MEDIANS: dict[tuple[str, str], float] = {
    ("inproc", "full"): 500.0,
    ("https", "full"): 1000.0,
    ("https", "store"): 900.0,
    ("ws", "connection"): 600.0,
    ("ws", "store"): 700.0,
    ("grpc", "connection"): 660.0,
}
PROFILE_SCALE = {"fast": 1.0, "instant": 0.5}
OUTSIDE = 0.5  # server CPU outside the stages, as a share of the stages' CPU
CLIENT = 0.4  # client CPU as a share of the server process's
# ablation variants on ws/connection (fast, c=1): server settings, factor on the default median
ABLATIONS: dict[str, tuple[dict[str, Any], float]] = {
    "no-token_cache": ({"token_cache": False}, 1.2),
    "no-incremental_checks": ({"incremental_checks": False}, 1.1),
    "tokens_per_chunk-8": ({"tokens_per_chunk": 8}, 0.95),
}
API_STAGES = tuple(s for s in STAGES if s not in ("tokenize", "injected"))
STAGE_CPU_MS = {
    "parse": 0.2,
    "validate": 0.3,
    "resolve": 0.05,
    "safety": 0.8,
    "render": 1.0,
    "route": 0.02,
    "prefill": 0.1,
    "decode": 0.5,
    "post": 0.3,
}


def _spread(n: int, spread: float) -> np.ndarray:
    k = np.linspace(-1.0, 1.0, n)
    return 1.0 + spread * k


def _cells(
    scenario: str,
    profile: str,
    conc: int,
    medians: Mapping[tuple[str, str], float],
    variant: str,
    settings: Mapping[str, Any],
    number: int,
) -> list[Cell]:
    states: dict[str, list[str]] = {}
    for transport, state in medians:
        if variant == "default" or (transport, state) == ("ws", "connection"):
            states.setdefault(transport, []).append(state)
    sc = load_scenario(scenario).replace(states={t: tuple(s) for t, s in states.items()}, rollouts=3, rounds=1)
    config = RunConfig(
        scenarios=[sc],
        transports=list(states),
        profiles=(profile,),
        concurrency=(conc,),
        variant=variant,
        server_settings=dict(settings),
    )
    return plan_cells(config, first_number=number)


def _rollout(
    cell: Cell,
    rid: int,
    rollout_ms: float,
    n_turns: int,
    stage_cpu_ms: Mapping[str, float],
    cpu_factor: float,
    rng: np.random.Generator,
    extra_ms: Mapping[str, float],
) -> RolloutResult:
    turns = []
    for t in range(n_turns):
        turn_ms = rollout_ms / n_turns
        stages = {}
        for stage in API_STAGES:  # a turn of the API role: no tokenize (engine role), nothing injected
            cpu = stage_cpu_ms.get(stage, 0.1) * cpu_factor * float(rng.uniform(0.9, 1.1))
            cpu += extra_ms.get(stage, 0.0)  # like Settings.burn_us: fixed CPU, whatever the machine's speed
            stages[stage] = StageStat(wall_ns=round(cpu * 1.3e6), cpu_ns=round(cpu * 1e6), items=1, tokens=10)
        turns.append(
            TurnResult(
                transport=cell.transport,
                state=cell.state,
                rollout_id=rid,
                turn_index=t,
                ttft_ms=turn_ms * 0.4 + t * 0.1,
                ttfb_ms=turn_ms * 0.3,
                itl_ms=[1.0, 1.1],
                turn_ms=turn_ms,
                latency_ms=turn_ms,
                connect_ms=3.0 if t == 0 else None,
                chunks=12,
                events=20,
                output_tokens=12,
                input_tokens=100 * (t + 1),
                cached_tokens=90 * t,
                tool_ms=0.25,
                bytes_up=4000 * (t + 1) if cell.state == "full" else 4000,
                bytes_down=2000,
                server_stages=stages,
            )
        )
    return RolloutResult(
        transport=cell.transport,
        state=cell.state,
        rollout_id=rid,
        success=True,
        turns=turns,
        rollout_ms=rollout_ms,
        tool_ms=5.0,
        connect_ms=3.0,
        tool_calls=[("word_count", "{}")] * (n_turns - 1),
    )


def make_run(
    path: Path,
    *,
    medians: Mapping[tuple[str, str], float] = MEDIANS,
    n_rollouts: int = 9,
    n_turns: int = 21,
    spread: float = 0.1,
    concurrencies: tuple[int, ...] = (1, 4),
    profiles: tuple[str, ...] = ("fast", "instant"),
    scenario: str = "agent-20",
    ablations: Mapping[str, tuple[dict[str, Any], float]] = ABLATIONS,
    stage_cpu_ms: Mapping[str, float] = STAGE_CPU_MS,
    cpu_factor: Mapping[tuple[str, str], float] | None = None,
    stage_extra_ms: Mapping[str, float] | None = None,
    client_factor: float = 1.0,
    other_cores: float = 0.05,
    server_settings: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """Write a synthetic run directory at ``path``; returns it. Times in ms, bytes in bytes.

    ``cpu_factor``: every stage's CPU × this in a cell (a slower machine, or code); ``stage_extra_ms``: CPU
    added to a stage of every turn of every cell; ``client_factor``: the client's CPU × this; ``other_cores``:
    other processes' CPU in every chunk's background (above 0.25 with the CPUs full: contended);
    ``server_settings``: for every cell's server (as ``turnbench run --set``); ``meta``: run.json additions.
    """
    rng = np.random.default_rng(seed)
    cells: list[Cell] = []
    samples: list[Sample] = []
    chunks: list[ChunkStat] = []
    rid = 0
    for profile in profiles:
        for conc in concurrencies:
            variants: dict[str, tuple[dict[str, Any], float]] = {"default": ({}, 1.0)}
            if profile == "fast" and conc == min(concurrencies):
                variants.update(ablations)
            for variant, (settings, factor) in variants.items():
                group = _cells(
                    scenario, profile, conc, medians, variant, {**(server_settings or {}), **settings}, len(cells)
                )
                cells += group
                for cell in group:
                    median = medians[(cell.transport, cell.state)]
                    m = median * PROFILE_SCALE[profile] * factor * (1.0 + 0.2 * (conc - 1))
                    times = m * _spread(n_rollouts, spread)
                    rng.shuffle(times)
                    cpu_f = (cpu_factor or {}).get((cell.transport, cell.state), 1.0)
                    stage_s = {1: 0.0, 2: 0.0, 3: 0.0}
                    for i, rollout_ms in enumerate(times):
                        rollout = _rollout(
                            cell, rid, float(rollout_ms), n_turns, stage_cpu_ms, cpu_f, rng, stage_extra_ms or {}
                        )
                        samples.append(Sample(rollout, cell, 1 + i % 3, False))
                        stage_s[1 + i % 3] += (
                            sum(st.cpu_ns for t in rollout.turns for st in t.server_stages.values()) / 1e9
                        )
                        rid += 1
                    inproc = cell.transport == "inproc"
                    chunks += [
                        ChunkStat(
                            cell=cell.cell,
                            round=r,
                            warmup=False,
                            rollouts=n_rollouts // 3,
                            turns=n_turns * n_rollouts // 3,
                            wall_s=1.0,
                            client_cpu_s=stage_s[r] * (1 + OUTSIDE) * CLIENT * client_factor
                            + (stage_s[r] if inproc else 0.0),
                            server_cpu_s=None if inproc else stage_s[r] * (1 + OUTSIDE),
                            lag_ms=[0.5, 0.8],
                            background={
                                "wall_s": 1.0,
                                "cores": 2,
                                "busy_cores": 1.0 + other_cores,
                                "own_cores": 1.0,
                                "other_cores": other_cores,
                                "idle_cores": max(0.0, 1.0 - other_cores),
                                "steal": 0.0,
                                "pressure": 0.02 + other_cores / 2,
                            },
                        )
                        for r in (1, 2, 3)
                    ]
    servers = {
        c.endpoint_key: {
            "server": c.server,
            "kind": "process",
            "transports": [c.transport],
            "pid": 1,
            "exit_code": 0,
            "cpu_s": 1.0,
            "argv": ["python", "-m", "servers", c.server],
            "settings": Settings(profile=c.profile, tls=c.tls, **c.server_settings).as_dict(),
        }
        for c in cells
    }
    monitor = MonitorReport(
        cpu_util=0.4, loop_lag_p50_ms=0.5, loop_lag_p99_ms=0.8, loop_lag_max_ms=0.9, saturated=False
    )
    collected = Collected(samples=samples, chunks=chunks, monitor=monitor, loop="synthetic", servers=servers)
    config = RunConfig(
        scenarios=[], transports=[], argv=["turnbench", "bench"], server_settings=dict(server_settings or {})
    )
    RunDir.write(path, config, cells, collected, meta)
    return path


def test_make_run_roundtrip(tmp_path: Path) -> None:
    run = RunDir(make_run(tmp_path / "run", concurrencies=(1,), profiles=("fast",)))
    https = run.rollouts[run.rollouts["label"] == "https/full"]
    assert float(https["rollout_ms"].median()) == 1000.0
    assert len(run.turns) == len(run.rollouts) * 21
    assert run.turns["itl_ms"].iloc[0] == [1.0, 1.1]
    variants = {c["variant"]: c for c in run.cells if c["transport"] == "ws" and c["state"] == "connection"}
    assert variants["no-token_cache"]["settings"] == {"token_cache": False}
    assert variants["no-token_cache"]["endpoint"] != variants["default"]["endpoint"]
