"""Which extras an endpoint can take (each declares its needs; the probe's findings decide), and what an
extra that cannot run leaves: a file saying why, and a report section listing it."""

from __future__ import annotations

import json
from pathlib import Path

from loadtests.execution.probe import ProbeResult, classify
from loadtests.extras import registry
from loadtests.present.doc import Doc
from tests.unit.loadtests.execution.test_probe import recorded


def found(name: str) -> ProbeResult:
    return ProbeResult(targets={"https": "http://h/v1"}, findings=classify(recorded(name)))


def reasons(name: str) -> dict[str, list[str]]:
    return {e.name: registry.cannot_run(e, found(name)) for e in registry.all_extras()}


def test_an_endpoint_without_steer_loses_steering_only() -> None:
    found_ = found("turnbench")
    found_.findings["steer"] = classify({"steer": {"steered_id": "s", "after_steer": []}})["steer"]
    r = {e.name: registry.cannot_run(e, found_) for e in registry.all_extras()}
    assert r["steering"] and r["steering"][0].startswith("no steer (no answer")
    assert r["warmup"] == [] and r["fanout"] == []


def test_every_extra_declares_its_needs() -> None:
    for extra in registry.all_extras():
        assert extra.needs, extra.name
        assert (registry.OWN_SERVERS in extra.needs) == bool(extra.own_why), extra.name


def test_turnbench_as_a_target_takes_all_but_what_needs_servers_of_its_own() -> None:
    r = reasons("turnbench")
    assert r["steering"] == [] and r["warmup"] == [] and r["fanout"] == []
    assert r["crosshost"] and "servers it starts" in r["crosshost"][0] and "Redis" in r["crosshost"][0]


def test_the_foreign_server_takes_none_and_each_says_why() -> None:
    r = reasons("foreign")
    assert all(r.values())
    assert any(x.startswith("no steer") for x in r["steering"])
    assert any(x.startswith("no generate: false") for x in r["warmup"])
    assert any(x.startswith("no lanes") for x in r["fanout"])
    assert any(x.startswith("no usage") for x in r["steering"])


def test_an_extra_the_endpoint_cannot_take_is_not_run_and_its_section_says_why(tmp_path: Path) -> None:
    outcomes = registry.run_extras(tmp_path, quick=True, only=["steering", "crosshost"], target=(found("foreign"), {}))
    assert outcomes == {"steering": "not_offered", "crosshost": "not_offered"}
    data = json.loads((tmp_path / "steering.json").read_text())
    assert any(x.startswith("no steer") for x in data["not_offered"])
    d = Doc("t")
    registry.add_sections(d, tmp_path)
    md = d.markdown(tmp_path)
    assert "the endpoint cannot take it" in md and "no steer" in md
