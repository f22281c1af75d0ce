"""The runner's rollout path over every registered transport, and a saturated load generator flagged.

Servers run in this process here (``servers.base.start_server``, TLS on, profile ``instant``); the e2e test
drives the real ``turnbench run`` with server processes.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from clients.agent import Toolbox
from clients.base import ClientConfig, RolloutResult, make_client
from loadtests.cli.run import format_table, print_warnings
from loadtests.execution.plan import Cell, RunConfig, plan_cells
from loadtests.execution.procs import Endpoint
from loadtests.runs.runner import one_rollout, run
from loadtests.workload.scenarios import Scenario, load_scenario, states_for
from tests.conftest import ServeFn
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.transports import TRANSPORTS

SCENARIO = load_scenario("agent-5").replace(tool_calls=4, tool_output_sigma=0.8, profile="instant")


def _cell(transport: str, state: str, sc: Scenario = SCENARIO) -> Cell:
    return Cell(
        cell=f"{transport}:{state}",
        scenario=sc,
        transport=transport,
        state=state,
        profile="instant",
        concurrency=1,
        arrival_rate_rps=None,
        variant="default",
        tls=transport != "inproc",
    )


async def _reference() -> RolloutResult:
    service = ResponsesService(Settings(profile="instant", usage_db=":memory:"))
    ep = Endpoint(server="inproc", url="", tls=False, options={"service": service})
    try:
        return await one_rollout(_cell("inproc", "connection"), 3, ep, toolbox_factory=_toolbox)
    finally:
        await service.drain()
        service.close()


def _toolbox(sc: Scenario, index: int) -> Toolbox:
    return Toolbox(output_bytes=sc.tool_output_bytes, output_sigma=sc.tool_output_sigma, seed=index)


def _network_transports() -> list[str]:
    return sorted(name for name, row in TRANSPORTS.items() if row.server is not None)


@pytest.mark.parametrize("transport", _network_transports())
async def test_same_seed_same_rollout_on_every_transport(serve: ServeFn, tmp_path: Path, transport: str) -> None:
    ref = await _reference()
    assert ref.success and len(ref.tool_calls) == 4 and ref.final_output
    server = await serve(transport)
    assert server.tls is not None
    ca = tmp_path / "ca.pem"
    ca.write_bytes(server.tls.ca_pem_bytes)
    ep = Endpoint(server=server.transport, url=server.url, tls=True, ca_path=str(ca))
    for state in states_for(SCENARIO, transport):
        result = await one_rollout(_cell(transport, state), 3, ep, toolbox_factory=_toolbox)
        assert result.success, (state, result.error)
        assert result.transport == transport and result.state == state
        assert result.tool_calls == ref.tool_calls, state
        assert result.final_output == ref.final_output, state
        assert len(result.turns) == 5 and all(t.ttft_ms is not None for t in result.turns)
        assert result.connect_ms is None or result.connect_ms >= 0


async def test_connect_failure_is_a_failed_rollout_not_an_exception() -> None:
    ep = Endpoint(server="ws", url="ws://127.0.0.1:9/v1", tls=False)  # port 9: nothing listens
    result = await one_rollout(_cell("ws", "connection"), 0, ep, toolbox_factory=_toolbox)
    assert not result.success and result.error is not None
    assert result.turns == [] and result.error.startswith("connect:")


class BlockingToolbox(Toolbox):
    """A tool that blocks the event loop (``time.sleep``): the load generator itself becomes the bottleneck."""

    async def run(self, name: str, arguments: str, call_index: int = 0) -> str:
        time.sleep(0.04)  # noqa: ASYNC251 -- the point: stall every task on the client's loop
        return self.execute(name, arguments, call_index)


def test_a_saturated_client_is_flagged(tmp_path: Path) -> None:
    sc = load_scenario("agent-5").replace(
        tool_calls=2, rollouts=3, rounds=1, warmup=0, profile="instant", arrival_rate_rps=20.0, tool_output_bytes=256
    )
    config = RunConfig(
        scenarios=[sc],
        transports=["inproc"],
        states=("connection",),
        out_dir=tmp_path / "run",
        quiet=True,
        toolbox_factory=lambda s, i: BlockingToolbox(output_bytes=256, seed=i),
    )
    assert [c.mode for c in plan_cells(config)] == ["open"]
    result = run(config)
    assert result.path == tmp_path / "run"
    meta = result.meta
    assert meta["monitor"]["saturated"] is True
    assert "event-loop lag" in meta["monitor"]["reason"]
    cell = meta["monitor"]["cells"]["agent-5:inproc:connection:instant:r20"]
    assert cell["saturated"] and cell["loop_lag_p99_ms"] > 5.0
    err = io.StringIO()
    assert print_warnings(result, file=err) == 0  # saturation warns, it does not fail the run
    assert "WARNING: the load generator saturated" in err.getvalue()


def test_an_unsaturated_inproc_run_is_not_flagged_and_uses_uvloop(tmp_path: Path) -> None:
    sc = load_scenario("chat-1").replace(rollouts=2, rounds=1, warmup=1, profile="instant", tool_latency_ms=20.0)
    config = RunConfig(
        scenarios=[sc],
        transports=["inproc"],
        states=("store",),
        out_dir=tmp_path / "run",
        quiet=True,
        lag_p99_threshold_ms=2000.0,  # out of reach of a busy machine's scheduling delays, not of a stall
        server_settings={"inject_ms": {"safety": 1.0}, "burn_us": {"render": 0.0}},
    )
    result = run(config)
    meta = result.meta
    key = "inproc/instant/plain/burn_us=render:0,inject_ms=safety:1"
    assert meta["injected"] == {key: {"inject_ms": {"safety": 1.0}}}
    assert meta["cells"][0]["endpoint"] == key and meta["servers"][key]["kind"] == "inproc"
    assert meta["cells"][0]["server_settings"]["inject_ms"] == {"safety": 1.0}
    assert meta["monitor"]["saturated"] is False and meta["loop"].startswith("uvloop")
    assert meta["gc"] == "between-chunks"
    err = io.StringIO()
    assert print_warnings(result, file=err) == 0
    # nothing about this run; only the machine's other load may be worth a line
    assert all("contended machine" in line for line in err.getvalue().splitlines()), err.getvalue()
    assert "inproc" in format_table(result)


def test_cells_never_share_prompt_prefixes(tmp_path: Path) -> None:
    """Rollout k does the same work in every cell, but the engine's prefix cache must not serve one cell's
    tool outputs from another's: every continuation prefills its own new tokens."""
    sc = load_scenario("agent-5").replace(
        tool_calls=3, rollouts=2, rounds=1, warmup=0, profile="instant", tool_output_bytes=2048, tool_output_sigma=0.0
    )
    config = RunConfig(
        scenarios=[sc], transports=["inproc"], out_dir=tmp_path / "run", quiet=True, lag_p99_threshold_ms=1e9
    )
    turns = run(config).turns
    later = turns[turns["turn_index"] > 0]
    per_cell = later.groupby("cell")["stage_prefill_tokens"].median()
    assert len(per_cell) == 3 and (per_cell > 300).all(), per_cell  # ~2 KB of new tool output each turn
    first = turns[turns["turn_index"] == 0]
    assert (first["cached_tokens"] < first["input_tokens"] - 5).all()  # the task text is never a cache hit


def test_inproc_client_config_shares_the_service() -> None:
    service = ResponsesService(Settings(profile="instant", usage_db=":memory:"))
    try:
        ep = Endpoint(server="inproc", url="", tls=False, options={"service": service})
        cfg: ClientConfig = ep.client_config()
        assert cfg.options["service"] is service and cfg.ssl_context is None
        assert make_client("inproc", cfg).transport == "inproc"
    finally:
        service.close()


def test_a_deadline_drops_whole_rounds_after_the_first(tmp_path: Path) -> None:
    """A deadline already past: the warm-ups (round 0) and round 1 run for every cell, later rounds do not,
    and run.json says what was dropped."""
    sc = load_scenario("chat-1").replace(rollouts=3, rounds=3, warmup=1, profile="instant")
    config = RunConfig(
        scenarios=[sc],
        transports=["inproc"],
        states=("full", "store"),
        out_dir=tmp_path / "run",
        quiet=True,
        lag_p99_threshold_ms=1e9,
        deadline=time.monotonic(),
    )
    result = run(config)
    cut = result.meta["trimmed"]
    assert cut["rounds_planned"] == 3 and cut["rounds_run"] == 1 and cut["rollouts_dropped"] == 4
    assert "time budget" in cut["reason"]
    assert sorted({(ch["cell"], ch["round"]) for ch in result.chunks}) == sorted(
        (c["cell"], r) for c in result.cells for r in (0, 1)
    )
    assert len(result.rollouts) == 2 and result.rollouts["success"].all()  # one measured rollout per cell


def test_no_deadline_runs_every_round(tmp_path: Path) -> None:
    sc = load_scenario("chat-1").replace(rollouts=2, rounds=2, warmup=0, profile="instant")
    config = RunConfig(
        scenarios=[sc],
        transports=["inproc"],
        states=("full",),
        out_dir=tmp_path / "run",
        quiet=True,
        lag_p99_threshold_ms=1e9,
    )
    result = run(config)
    assert result.meta["trimmed"] is None and sorted(ch["round"] for ch in result.chunks) == [1, 2]
