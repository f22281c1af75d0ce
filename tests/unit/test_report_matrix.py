"""The benchmark matrix as data: what `make bench` and `make bench-quick` promise to measure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from loadtests import bench
from loadtests.scenarios import load_scenario
from turnbench.settings import Settings


def _rollouts(groups: list[bench.Group]) -> int:
    return sum(g.sizing["rollouts"] + g.sizing["warmup"] for g in groups)


def test_full_matrix_covers_profiles_concurrency_and_ablations() -> None:
    groups = bench.full_matrix()
    default = {(g.scenario, g.profile, g.concurrency) for g in groups if g.variant == "default"}
    for prof in ("instant", "fast", "frontier"):
        assert {("agent-20", prof, 1), ("agent-20", prof, 4)} <= default
    for prof in ("instant", "fast"):
        assert {("coding-agent-50", prof, 1), ("coding-agent-50", prof, 4)} <= default
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


def test_variant_cells_get_their_own_server() -> None:
    sc = load_scenario("agent-20")
    common = dict(cell="c", scenario=sc, transport="ws", server="ws", state="connection", profile="fast",
                  concurrency=1, arrival_rate_rps=None, tls=True)
    default = bench._VariantCell(variant="default", **common)
    ablated = bench._VariantCell(variant="no-token_cache", **common)
    assert default.endpoint_key == "ws/fast/tls"
    assert ablated.endpoint_key == "ws/fast/tls/no-token_cache"


def test_run_matrix_refuses_when_nothing_is_built(tmp_path: Path) -> None:
    group = bench.Group(scenario="agent-20", profile="instant", concurrency=1, states={"nope": ("full",)})
    with pytest.raises(ValueError, match="no transport of the matrix is built"):
        bench.run_matrix([group], tmp_path / "run")
