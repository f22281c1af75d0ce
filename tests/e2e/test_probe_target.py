"""``turnbench probe``, ``bench --target`` and ``gate --target`` on 127.0.0.1: against turnbench's own servers
(everything offered; the gate passes twice unchanged and fails with 5 ms injected per request) and against
tests/foreign.py, which streams over HTTPS and WebSocket mode and keeps nothing, tags nothing, reports no
usage: the probe finds exactly that, and bench's report lists what it could not run."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from loadtests.cli.main import main
from loadtests.execution.procs import Endpoint, start_server_process, stop_endpoints
from tests.conftest import TIMEOUT_FACTOR
from tests.foreign import Foreign
from turnbench.settings import INJECTED

pytestmark = pytest.mark.timeout(300 * TIMEOUT_FACTOR)


def findings(path: Path) -> dict[str, str]:
    return {k: f["offered"] for k, f in json.loads(path.read_text())["findings"].items()}


def test_probe_of_turnbench_s_own_servers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["probe", "--json", str(tmp_path / "p.json"), "--inflight-bound", "80"])
    out = capsys.readouterr().out
    assert code == 0, out
    found = findings(tmp_path / "p.json")
    assert {k for k, v in found.items() if v != "yes"} == set(), found
    assert "response.steer" in out and "too_many_queued_requests" in out


async def test_probe_of_a_foreign_server_finds_what_it_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with Foreign() as foreign:
        argv = ["probe", "--target", f"https=http://127.0.0.1:{foreign.https_port}/v1"]
        argv += ["--target", f"ws=ws://127.0.0.1:{foreign.ws_port}/v1", "--json", str(tmp_path / "f.json")]
        argv += ["--inflight-bound", "16", "--timeout-s", "5"]
        code = await asyncio.to_thread(main, argv)
    assert code == 0, capsys.readouterr()
    found = findings(tmp_path / "f.json")
    # what foreign.py does: SSE for every POST, WebSocket mode answering every frame with a response, no
    # routes but POST /v1/responses, previous_response_id and stream_id ignored, no usage, no extension
    assert {k for k, v in found.items() if v == "yes"} == {"https_stream", "ws", "inflight"}
    for cap in ("https_json", "store", "https_continuation", "forks", "compaction", "ws_continuation", "lanes"):
        assert found[cap] == "no", cap
    for cap in ("generate_false", "steer", "stage_timings", "usage", "health"):
        assert found[cap] == "no", cap


async def test_bench_target_lists_what_it_could_not_run(tmp_path: Path) -> None:
    async with Foreign() as foreign:
        argv = ["bench", "--quick", "--quiet", "--out", str(tmp_path)]
        argv += ["--target", f"https=http://127.0.0.1:{foreign.https_port}/v1"]
        argv += ["--target", f"ws=ws://127.0.0.1:{foreign.ws_port}/v1"]
        code = await asyncio.to_thread(main, argv)
    latest = tmp_path / "latest"
    assert code == 0, (latest / "report.log").read_text() if (latest / "report.log").exists() else ""
    cells = json.loads((latest / "summary.json").read_text())["cells"]
    assert {f"{c['transport']}/{c['state']}" for c in cells.values()} == {"https/full", "ws/full"}
    assert all(c["n_rollouts"] > 0 and not c["failed_rollouts"] for c in cells.values())
    md = (latest / "report.md").read_text()
    listed = md.split("**Could not run against this endpoint:**", 1)[1].split("What `turnbench probe` found", 1)[0]
    for words in ("ws/connection", "https/store", "no stage timings", "no usage", "no steer", "no lanes"):
        assert words in listed, words
    for extra in ("steering", "fanout", "warmup", "crosshost"):
        assert "not_offered" in json.loads((latest / f"{extra}.json").read_text())
    assert "the endpoint cannot take it" in (latest / "report.html").read_text()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, Endpoint]]:
    """turnbench's https server (WebSocket mode on the same port), plain TCP, the instant profile: as it is
    and with 5 ms injected into every request (`--inject-ms 5`)."""
    eps: dict[str, Endpoint] = {}
    try:
        eps["as is"] = start_server_process("https", workdir=tmp_path / "a", profile="instant", tls=False)
        eps["slower"] = start_server_process(
            "https", workdir=tmp_path / "b", profile="instant", tls=False, settings={"inject_ms": {INJECTED: 5.0}}
        )
        yield eps
    finally:
        stop_endpoints(eps)


def test_gate_target_passes_unchanged_and_fails_with_5_ms_per_request(
    servers: dict[str, Endpoint], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = tmp_path / "baseline.json"

    def gate(ep: Endpoint, *flags: str, out: str) -> tuple[int, str]:
        argv = ["gate", "--target", f"https={ep.url}", "--rollouts", "4", "--out", str(tmp_path / out), *flags]
        code = main(argv)
        return code, capsys.readouterr().out

    code, out = gate(servers["as is"], "--write-baseline", str(base), out="w")
    assert code == 0 and base.is_file(), out
    assert json.loads(base.read_text())["states"] == {"https": ["full", "store"], "ws": ["full", "connection", "store"]}
    code, out = gate(servers["as is"], "--baseline", str(base), out="again")
    assert code == 0, out
    assert "gate: PASS" in out and "not measured: server process CPU" in out
    code, out = gate(servers["slower"], "--baseline", str(base), out="slower")
    assert code == 1, out
    assert "REGRESSED" in out and "ms p10" in out
    assert out.count("gate: FAIL") == 2  # the failure, and the rerun that confirmed it


def test_gate_target_without_a_baseline_is_a_usage_error(tmp_path: Path) -> None:
    argv = ["gate", "--target", "https=http://127.0.0.1:9/v1", "--baseline", str(tmp_path / "none.json")]
    assert main(argv) == 2
    assert main(["gate", "--target", "https=http://127.0.0.1:9/v1"]) == 2


def test_extras_run_against_an_endpoint_they_can_take(tmp_path: Path) -> None:
    """Warm-up and fan-out against turnbench's server as a target (plain TCP, WebSocket mode on the HTTPS
    port): measured there, not on servers of their own, and said so in their sections."""
    from loadtests.execution import probe
    from loadtests.extras import registry
    from loadtests.present.doc import Doc

    ep = start_server_process("https", workdir=tmp_path / "s", profile="instant", tls=False)
    try:
        eps = probe.target_endpoints({"https": ep.url, "ws": ep.url}, ca_path=None, api_key=None)
        found = probe.probe({"https": eps["https"]}, timeout_s=10, inflight_bound=8)
        outcomes = registry.run_extras(tmp_path, quick=True, only=["warmup", "fanout"], target=(found, eps))
    finally:
        stop_endpoints({"s": ep})
    assert outcomes == {"warmup": "ok", "fanout": "ok"}, outcomes
    fan = json.loads((tmp_path / "fanout.json").read_text())
    assert fan["target"]["https"] == ep.url and all(r["completed"] == 8 for r in fan["rounds"])
    assert all(r["cpu_ms"] is None for r in fan["rounds"])  # not ours to read: null, not a made-up figure
    warm = json.loads((tmp_path / "warmup.json").read_text())
    assert warm["medians"]["warm_cached_tokens"] > 0
    d = Doc("t")
    registry.add_sections(d, tmp_path)
    md = d.markdown(tmp_path)
    assert f"the endpoint `{ep.url}`" in md and "Server CPU is not measured" in md
