"""Scenario files: every shipped one loads; a bad one fails with its file and field named."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest

from loadtests.workload.scenarios import (
    PROFILES,
    Scenario,
    ScenarioError,
    State,
    available_scenarios,
    is_state,
    load_scenario,
    states_for,
)
from turnbench.engine import sim
from turnbench.transports import STATES, TRANSPORTS

REQUIRED = ("chat-1", "agent-5", "agent-20", "coding-agent-50", "calibration")


def test_required_scenarios_ship_and_load() -> None:
    names = available_scenarios()
    assert set(REQUIRED) <= set(names)
    for name in names:
        sc = load_scenario(name)
        assert sc.name == name and sc.description
        assert sc.rollouts >= sc.rounds >= 1


def test_the_tool_call_counts_of_the_issue() -> None:
    assert {load_scenario(n).tool_calls for n in REQUIRED} >= {1, 5, 20, 50}
    assert load_scenario("calibration").profile == "calibration"
    assert load_scenario("agent-20").profile == "fast"


def test_open_and_closed_loop_modes() -> None:
    assert load_scenario("agent-20").mode == "closed"
    opened = load_scenario("open-agent-5")
    assert opened.mode == "open" and opened.arrival_rate_rps and opened.arrival_rate_rps > 0


def test_metadata_drives_the_scripted_model() -> None:
    sc = load_scenario("agent-5")
    assert sc.metadata() == {"tool_calls": "5", "seed": str(sc.seed), "answer_tokens": str(sc.answer_tokens)}


def test_default_states_per_transport() -> None:
    sc = load_scenario("agent-5")
    assert states_for(sc, "https") == ("full", "store")
    assert states_for(sc, "ws") == TRANSPORTS["ws"].states == ("connection", "store", "full")
    assert states_for(sc, "sdk-https") == ("full", "store")
    assert states_for(sc, "sdk-ws") == ("connection", "store")
    custom = sc.replace(states={"ws": ("store",)})
    assert states_for(custom, "ws") == ("store",)


def _write(tmp_path: Path, body: str, name: str = "x") -> Path:
    p = tmp_path / f"{name}.toml"
    p.write_text(body, encoding="utf-8")
    return p


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('name = "x"\ntool_calls = -1\n', "'tool_calls'"),
        ('name = "x"\nprofile = "warp"\n', "'profile'"),
        ('name = "x"\nrollouts = 1\nrounds = 3\n', "'rollouts'"),
        ('name = "x"\ntool_calls = 3\nbogus = 1\n', "unknown field(s) bogus"),
        ('name = "x"\narrival_rate_rps = 0\n', "'arrival_rate_rps'"),
        ('name = "x"\ntls = "yes"\n', "'tls'"),
        ('name = "x"\n[states]\nhttps = ["connection"]\n', "'states.https'"),
        ('name = "x"\n[states]\nsdk-https = ["store", "connection"]\n', "sdk-https has no connection state"),
        ('name = "x"\n[states]\nws = ["warp"]\n', "'states.ws'"),
        ('description = "no name"\n', "'name' is required"),
        ('name = "x"\ntool_output_sigma = -0.5\n', "'tool_output_sigma'"),
        ('name = "x"\nconcurrency = true\n', "'concurrency'"),
        ("name = \n", "invalid TOML"),
        ('name = "x"\ncompact_every = -1\n', "'compact_every' must be an integer >= 0 (the tool-calling turns"),
        ('name = "x"\ncompact_every = 2.5\n', "'compact_every' must be an integer"),
        ('name = "x"\ncompact_every = "10"\n', "'compact_every' must be an integer"),
        ('name = "x"\ncompact_every = true\n', "'compact_every' must be an integer"),
        ('name = "x"\ntool_calls = 8\ncompact_every = 9\n', "'compact_every' (9) must be <= 'tool_calls' (8)"),
    ],
)
def test_invalid_files_name_the_field(tmp_path: Path, body: str, needle: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_unknown_name_lists_the_available_ones() -> None:
    with pytest.raises(ScenarioError, match="agent-20"):
        load_scenario("no-such-scenario")


def test_name_must_match_file_in_the_scenario_folder(tmp_path: Path) -> None:
    _write(tmp_path, 'name = "other"\n', name="mine")
    with pytest.raises(ScenarioError, match="must match the file name"):
        load_scenario("mine", directory=tmp_path)
    _write(tmp_path, 'name = "mine"\ntool_calls = 2\ntool_latency_ms = 3\n', name="mine")
    sc = load_scenario("mine", directory=tmp_path)
    assert sc.tool_calls == 2 and sc.tool_latency_ms == 3.0 and isinstance(sc.tool_latency_ms, float)


def test_replace_validates_again() -> None:
    sc = load_scenario("agent-5")
    assert sc.replace(rollouts=9).rollouts == 9
    with pytest.raises(ScenarioError, match="'concurrency'"):
        sc.replace(concurrency=0)


def test_scenario_is_frozen_and_serialisable() -> None:
    sc = load_scenario("agent-20")
    with pytest.raises(AttributeError):
        sc.rollouts = 3  # type: ignore[misc]
    d = sc.as_dict()
    assert d["name"] == "agent-20" and d["mode"] == "closed" and isinstance(d["states"], dict)
    assert isinstance(Scenario(name="bare"), Scenario)


def test_the_profiles_are_the_sim_engine_s() -> None:
    assert PROFILES == tuple(sim.PROFILES)


def test_the_state_type_names_the_cores_strategies() -> None:
    """``State`` is the core's ``STATES`` as a type: the same names in the same order, and every transport
    row's states are among them (``states_for`` drops none)."""
    assert get_args(State) == STATES
    assert all(is_state(s) for row in TRANSPORTS.values() for s in row.states)
    assert not is_state("memory")


def test_the_compacting_scenario_is_a_long_rollout_that_compacts() -> None:
    sc = load_scenario("coding-agent-compact")
    assert 40 <= sc.tool_calls <= 60 and 10 <= sc.compact_every <= 16
    assert sc.tool_calls // sc.compact_every >= 3  # several compactions, so several new chains, per rollout
    assert sc.tool_calls % sc.compact_every  # the turn after the last compaction still calls a tool
    assert "compact" in sc.description and sc.as_dict()["compact_every"] == sc.compact_every
    assert load_scenario("agent-20").compact_every == 0  # the others never compact


def test_compact_every_is_read_and_checked_again_on_replace(tmp_path: Path) -> None:
    sc = load_scenario(_write(tmp_path, 'name = "x"\ntool_calls = 12\ncompact_every = 4\n'))
    assert sc.compact_every == 4
    assert sc.replace(compact_every=0).compact_every == 0
    with pytest.raises(ScenarioError, match="would never compact"):
        sc.replace(compact_every=13)
