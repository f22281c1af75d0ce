"""``turnbench run --rtt-ms``: every server behind the network emulator, TLS end to end; the round trips it
adds show in what the clients measure (lower bounds: a busy machine adds time, never removes it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.execution.plan import RunConfig
from loadtests.runs import runner
from loadtests.workload.scenarios import load_scenario
from tests.conftest import TIMEOUT_FACTOR

pytestmark = pytest.mark.timeout(240 * TIMEOUT_FACTOR)


def test_rtt_cells_pay_their_round_trips(tmp_path: Path) -> None:
    config = RunConfig(
        scenarios=[load_scenario("chat-1").replace(rollouts=2, rounds=1, warmup=0)],
        transports=["https", "ws", "grpc"],
        states=("full",),
        profiles=("instant",),
        rtt_ms=(0.0, 30.0),
        out_dir=tmp_path / "run",
        quiet=True,
    )
    run = runner.run(config)
    cells = run.summary["cells"]
    assert len(cells) == 6 and all(c["failed_rollouts"] == 0 for c in cells.values())
    t = run.turns
    for transport in ("https", "ws", "grpc"):
        near = t[(t["transport"] == transport) & (t["rtt_ms"] == 0)]
        far = t[(t["transport"] == transport) & (t["rtt_ms"] == 30)]
        assert len(far) == len(near) > 0
        # a request and its first event cross the network once each way: at least one RTT per turn (a lower
        # bound, whatever the load); beside it, in the same run, the loopback cell is the faster one
        assert far["ttft_ms"].min() >= 30.0 and far["ttft_ms"].median() > near["ttft_ms"].median()
    proxied = [s for s in run.meta["servers"].values() if s["network"]]
    assert len(proxied) == 3 and all(s["network"]["rtt_ms"] == 30 for s in proxied)
    far_ids = [cid for cid, c in cells.items() if c["rtt_ms"] == 30]
    assert all(cid.endswith(":rtt30") for cid in far_ids)
