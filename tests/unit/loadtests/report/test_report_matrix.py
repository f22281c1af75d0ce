"""The benchmark matrix as data: what `make bench` and `make bench-quick` promise to measure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from loadtests.commands import bench
from loadtests.workload.scenarios import load_scenario
from turnbench.settings import Settings


def _rollouts(groups: list[bench.Group]) -> int:
    return sum(g.sizing["rollouts"] + g.sizing["warmup"] for g in groups)


def test_full_matrix_covers_profiles_concurrency_and_ablations() -> None:
    groups = bench.full_matrix()
    default = {(g.scenario, g.profile, g.concurrency) for g in groups if g.variant == "default"}
    for prof in ("instant", "fast", "frontier"):
        assert ("agent-20", prof, 1) in default
    for prof in ("instant", "fast"):
        assert {("agent-20", prof, 4), ("coding-agent-50", prof, 1)} <= default
    # the slow corners (~8 s frontier rollouts, coding-agent-50's quadratic full resend) stay at c=1: the
    # matrix must finish within 10 minutes on a busy 2-core machine
    assert (
        not {("agent-20", "frontier", 4), ("coding-agent-50", "instant", 4), ("coding-agent-50", "fast", 4)} & default
    )
    assert ("calibration", None, 1) in default
    variants = {g.variant: g for g in groups if g.variant != "default"}
    assert set(variants) == {*bench.ABLATIONS, "no-connection_cache"}
    fields = {f.name for f in dataclasses.fields(Settings)}
    for v, g in variants.items():
        assert set(g.server_settings) <= fields, v
        assert (g.scenario, g.profile, g.concurrency) == ("agent-20", "fast", 1)
    # the connection cache is ablated where a continuation can still hydrate: store
    assert variants["no-connection_cache"].states == {"ws": ("store",)}
    for g in groups:  # every sizing is a valid scenario (rollouts >= rounds ...)
        load_scenario(g.scenario).replace(**g.sizing)


def test_quick_matrix_is_a_small_subset() -> None:
    quick, full = bench.quick_matrix(), bench.full_matrix()
    assert _rollouts(quick) * 4 < _rollouts(full)
    assert {g.profile for g in quick} == {"instant", "fast"} and {g.concurrency for g in quick} == {1}
    assert any(g.variant != "default" for g in quick)


def test_every_variant_and_https_h2_get_their_own_server() -> None:
    groups = [
        *bench.quick_matrix(),
        bench.Group(
            scenario="agent-20",
            profile="fast",
            concurrency=1,
            states={"https-h2": ("full",)},
            sizing={"rollouts": 3, "rounds": 3},
        ),
    ]
    config = bench.matrix_config(Path("unused"), server_settings={"burn_us": {"render": 5.0}})
    cells = bench.matrix_cells(groups, config)
    assert [c.number for c in cells] == list(range(len(cells)))  # one series: every cell's prompts its own
    by_id = {c.cell: c for c in cells}
    default, ablated = by_id["agent-20:ws:connection:fast:c1"], by_id["agent-20:ws:connection:fast:c1:no-token_cache"]
    assert default.server_settings == {"burn_us": {"render": 5.0}}  # run-wide settings reach every cell
    assert ablated.server_settings == {"burn_us": {"render": 5.0}, "token_cache": False}
    assert default.endpoint_key == "ws/fast/tls/burn_us=render:5"
    assert ablated.endpoint_key == "ws/fast/tls/burn_us=render:5,token_cache=false"
    h1, h2 = by_id["agent-20:https:full:fast:c1"], by_id["agent-20:https-h2:full:fast:c1"]
    assert h2.server == h1.server == "https" and h2.server_settings["http2"] is True
    assert h1.endpoint_key != h2.endpoint_key
    # https, ws, grpc at instant and at fast; the ablated ws; https-h2
    assert len({c.endpoint_key for c in cells}) == 8


def test_a_matrix_that_makes_one_cell_twice_is_refused() -> None:
    group = bench.Group(
        scenario="agent-20",
        profile="instant",
        concurrency=1,
        states={"ws": ("connection",)},
        sizing={"rollouts": 3, "rounds": 3},
    )
    with pytest.raises(ValueError, match="same cells"):
        bench.matrix_cells([group, group], bench.matrix_config(Path("unused")))
    with pytest.raises(ValueError, match="unknown transport"):
        bench.matrix_cells([dataclasses.replace(group, states={"nope": ("full",)})], bench.matrix_config(Path("x")))
