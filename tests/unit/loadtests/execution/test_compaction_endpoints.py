"""Where a compacting cell's compaction calls go: its own server when it is HTTPS, else the HTTPS server of the
same deployment, started beside it, or the HTTPS target given with a target of its own. No process is started:
the planning and the refusals are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.execution.plan import Cell, RunConfig, plan_cells
from loadtests.execution.procs import process_keys, start_endpoints, with_compaction
from loadtests.workload.scenarios import Scenario, load_scenario

COMPACT = load_scenario("coding-agent-compact").replace(tool_calls=4, compact_every=2, rollouts=1, rounds=1)


def cells(transports: list[str], scenario: Scenario = COMPACT) -> list[Cell]:
    return plan_cells(RunConfig(scenarios=[scenario], transports=transports))


def test_https_cells_compact_on_their_own_server_and_the_others_on_the_deployments_https_server() -> None:
    planned = cells(["https", "ws", "grpc"])
    for c in planned:
        cc = c.compaction_cell
        assert cc is not None
        if c.transport == "https":
            assert cc is c
        else:
            assert (cc.transport, cc.server, cc.profile, cc.tls) == ("https", "https", c.profile, c.tls)
            assert cc.endpoint_key == next(x for x in planned if x.transport == "https").endpoint_key
    assert process_keys(planned) == ["https/fast/tls", "ws/fast/tls", "grpc/fast/tls"]
    ws_only = cells(["ws"])
    # a run of WebSocket cells alone still starts the HTTPS server its compaction calls need
    assert process_keys(ws_only) == ["ws/fast/tls", "https/fast/tls"]
    assert [c.transport for c in with_compaction(ws_only)] == ["ws"] * 3 + ["https"] * 3


def test_a_scenario_that_does_not_compact_needs_nothing_more() -> None:
    plain = cells(["ws"], load_scenario("agent-5"))
    assert all(c.compaction_cell is None for c in plain)
    assert process_keys(plain) == ["ws/fast/tls"]


def test_option_a_cannot_compact() -> None:
    with pytest.raises(ValueError, match=r"ws-long \(option A\) cannot"):
        cells(["ws-long"])


def test_a_targeted_websocket_server_needs_the_https_target_of_its_deployment(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pass --target https=URL too"):
        start_endpoints(cells(["ws"]), tmp_path, targets={"ws": "wss://127.0.0.1:1/v1"}, ca_path="ca.pem")
    eps = start_endpoints(
        cells(["ws"]),
        tmp_path,
        targets={"ws": "wss://127.0.0.1:1/v1", "https": "https://127.0.0.1:2/v1"},
        ca_path="ca.pem",
    )
    ws = eps["ws/fast/tls"]
    assert ws.compaction is eps["https/fast/tls"] and ws.compaction.url == "https://127.0.0.1:2/v1"
