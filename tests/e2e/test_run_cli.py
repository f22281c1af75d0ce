"""``turnbench run`` as a user runs it: a subprocess that starts server processes, writes a run directory
and prints a table; ``--help`` explains every flag; Locust users drive a server started separately."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.cli import build_parser, main
from loadtests.execution import machine
from loadtests.execution.plan import RunConfig
from loadtests.execution.procs import Endpoint, ServerError, start_server_process
from loadtests.runs import runner
from loadtests.runs.rundir import RunDir
from loadtests.workload.scenarios import load_scenario
from tests.conftest import TIMEOUT_FACTOR
from turnbench.transports import DEFAULT_TRANSPORTS

ROOT = Path(__file__).resolve().parents[2]
TURNBENCH = [sys.executable, "-m", "loadtests.cli"]


def _run(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"}
    return subprocess.run(
        [*TURNBENCH, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout_s * TIMEOUT_FACTOR,
        check=False,
    )


@pytest.mark.timeout(420 * TIMEOUT_FACTOR)
def test_run_agent5_over_the_default_transports(tmp_path: Path) -> None:
    transports = ["inproc", *DEFAULT_TRANSPORTS]
    out = tmp_path / "run"
    proc = _run(
        [
            "run",
            "--scenario",
            "agent-5",
            "--transports",
            ",".join(transports),
            "--profile",
            "instant",
            "--rollouts",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--quiet",
            "--out",
            str(out),
        ],
        360,  # generous: a busy machine may run it several times slower, and the test only needs it to finish
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("turns.parquet", "turns.jsonl", "rollouts.parquet", "rollouts.jsonl", "run.json", "summary.json"):
        assert (out / name).is_file(), name
    header = next(line for line in proc.stdout.splitlines() if line.startswith("transport"))
    assert "rollout_ms p50/p99" in header and "ttft t1 p50/p99" in header and "connect_ms" in header
    for t in transports:
        assert any(line.startswith(t + " ") for line in proc.stdout.splitlines()), t
    assert f"run directory: {out}" in proc.stdout
    data = RunDir(out)
    measured = data.rollouts
    assert measured["success"].all(), measured[~measured["success"]]["error"].tolist()
    assert set(measured["transport"]) == set(transports) and (measured["n_tool_calls"] == 5).all()
    for key, server in data.meta["servers"].items():
        if server["kind"] == "process":
            assert server["exit_code"] == 0 and server["pid"] > 0 and server["cpu_s"] > 0, key
            assert server["argv"][1:4] == ["-m", "servers", server["server"]]
            assert server["transports"] == [server["server"]]
    cells = data.summary["cells"]
    assert all(c["n_rollouts"] == 2 for c in cells.values())
    assert all(c["server_cpu_ms_per_turn"] > 0 for c in cells.values() if c["transport"] != "inproc")


@pytest.mark.timeout(420 * TIMEOUT_FACTOR)
def test_run_starts_a_server_of_its_own_for_https_h2(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = _run(
        [
            "run",
            "--scenario",
            "chat-1",
            "--transports",
            "https-h2,https",
            "--states",
            "full",
            "--profile",
            "instant",
            "--rollouts",
            "2",
            "--warmup",
            "0",
            "--rounds",
            "1",
            "--quiet",
            "--out",
            str(out),
        ],
        360,  # generous: a busy machine may run it several times slower, and the test only needs it to finish
    )
    assert proc.returncode == 0, proc.stderr
    data = RunDir(out)
    assert data.rollouts["success"].all() and set(data.rollouts["transport"]) == {"https", "https-h2"}
    servers = {tuple(s["transports"]): s for s in data.meta["servers"].values()}
    h1, h2 = servers[("https",)], servers[("https-h2",)]
    assert h1["kind"] == h2["kind"] == "process" and h1["pid"] != h2["pid"]
    assert h2["server"] == "https" and h2["settings"]["http2"] is True and "--http2" in h2["argv"]
    assert h1["settings"]["http2"] is False and "--http2" not in h1["argv"]
    cells = {c["transport"]: c for c in data.cells}
    assert cells["https-h2"]["settings"] == {"http2": True} and cells["https"]["settings"] == {}
    assert cells["https-h2"]["endpoint"] != cells["https"]["endpoint"]
    assert cells["https-h2"]["server_settings"]["http2"] is True


def test_run_help_explains_every_flag() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run_parser = sub.choices["run"]
    text = run_parser.format_help()
    flags = [a for a in run_parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 20
    for action in flags:
        assert action.help and len(action.help) > 15, action.option_strings
        assert action.option_strings[0] in text
    for flag in ("--scenario", "--transports", "--states", "--rate", "--concurrency", "--target", "--out"):
        assert flag in text


def test_bad_arguments_fail_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args, message in (
        (["--scenario", "nope"], "no scenario 'nope'"),
        (["--transports", "carrier-pigeon"], "unknown transport"),
        (["--set", "port=5"], "the runner sets this itself"),
        (["--profile", "warp"], "unknown profile"),
        (["--target", "ws"], "expected TRANSPORT=URL"),
        (["--scenario", "agent-5", "--compact-every", "9"], "'compact_every' (9) must be <= 'tool_calls' (5)"),
    ):
        assert main(["run", *args, "--quiet", "--out", str(tmp_path)]) == 2
        assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this OS")
@pytest.mark.timeout(420 * TIMEOUT_FACTOR)
def test_cells_run_pinned_when_isolation_is_planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where there are CPUs enough, the load generator and each server get their own: forced here on this
    machine's CPUs (the plan, not the machine, decides), then undone for the load generator."""
    cpus = machine.available_cpus()
    client_cpu, server_cpu = cpus[0], cpus[-1]

    def plan(keys: list[str], *_: object, mode: str = "auto") -> machine.Isolation:
        return machine.Isolation(True, tuple(cpus), "forced by the test", (client_cpu,), {keys[0]: (server_cpu,)})

    monkeypatch.setattr(runner, "plan_isolation", plan)
    seen: dict[str, object] = {}
    real_execute = runner._execute_in_a_fresh_loop

    def execute(config: RunConfig, cells: object, endpoints: dict[str, Endpoint]) -> object:
        ep = next(iter(endpoints.values()))
        assert ep.process is not None
        seen["server"] = {
            os.sched_getaffinity(int(t)) == {server_cpu} for t in os.listdir(f"/proc/{ep.process.pid}/task")
        }
        seen["client"] = os.sched_getaffinity(0)
        return real_execute(config, cells, endpoints)  # type: ignore[arg-type]

    monkeypatch.setattr(runner, "_execute_in_a_fresh_loop", execute)
    before = os.sched_getaffinity(0)
    sc = load_scenario("chat-1").replace(rollouts=1, warmup=0, rounds=1, tls=False, profile="instant")
    result = runner.run(RunConfig(scenarios=[sc], transports=["ws"], quiet=True, out_dir=tmp_path / "run"))
    assert seen == {"server": {True}, "client": {client_cpu}}  # every server thread, and the client, pinned
    assert os.sched_getaffinity(0) == before  # the load generator is free again
    assert result.meta["isolation"]["pinned"] and result.meta["isolation"]["reason"] == "forced by the test"
    (server,) = result.meta["servers"].values()
    assert server["cpus"] == [server_cpu] and result.rollouts["success"].all()


def test_a_server_that_cannot_start_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="exited"):
        start_server_process("https", workdir=tmp_path, profile="no-such-profile", tls=False, timeout_s=30)


@pytest.mark.timeout(300 * TIMEOUT_FACTOR)
def test_locust_users_drive_separate_servers(tmp_path: Path) -> None:
    """The user classes come from the transport table: HttpsUser and HttpsH2User, each on its own server.

    The run time only decides when Locust stops *starting* rollouts: ``--stop-timeout`` lets every rollout
    already started finish, however slowly a busy machine runs it, so each user records at least its first."""
    locust = shutil.which("locust", path=str(Path(sys.executable).parent))
    if locust is None:
        pytest.skip("locust not installed")
    h1 = start_server_process("https", workdir=tmp_path / "h1", profile="instant", tls=True)
    h2 = start_server_process("https", workdir=tmp_path / "h2", profile="instant", tls=False, settings={"http2": True})
    try:
        samples = tmp_path / "turns"
        proc = subprocess.run(
            [
                locust,
                "-f",
                "loadtests/users/locustfile.py",
                "--headless",
                "-u",
                "2",
                "-r",
                "2",
                "--run-time",
                "3s",
                "--stop-timeout",
                "120",
                "--tb-https",
                h1.url,
                "--tb-https-h2",
                h2.url,
                "--tb-ca",
                str(h1.ca_path),
                "--tb-scenario",
                "chat-1",
                "--tb-samples",
                str(samples),
                "--only-summary",
                "--exit-code-on-error",
                "1",
                "HttpsUser",
                "HttpsH2User",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=240 * TIMEOUT_FACTOR,
            check=False,
        )
    finally:
        assert h1.process is not None and h1.process.stop() == 0
        assert h2.process is not None and h2.process.stop() == 0
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    for transport in ("https", "https-h2"):
        rows = [line for line in lines if line.startswith(transport + " ")]
        assert any(" rollout " in r for r in rows) and any(" turn " in r for r in rows), transport
    written = list(tmp_path.glob("turns.*"))
    assert written, "raw samples were not written"
    first = json.loads(written[0].read_text().splitlines()[0])  # a rollout, its turns inside
    assert first["transport"] in ("https", "https-h2") and first["turns"][0]["ttft_ms"] > 0


@pytest.mark.timeout(120 * TIMEOUT_FACTOR)
def test_locust_refuses_an_unknown_state() -> None:
    """``--tb-state`` outside the state strategies is an error naming them, not a run as ``connection``."""
    locust = shutil.which("locust", path=str(Path(sys.executable).parent))
    if locust is None:
        pytest.skip("locust not installed")
    proc = subprocess.run(
        [
            locust,
            "-f",
            "loadtests/users/locustfile.py",
            "--headless",
            "-u",
            "1",
            "-r",
            "1",
            "--run-time",
            "2s",
            "--tb-https",
            "http://127.0.0.1:9/v1",
            "--tb-state",
            "sticky",
            "--only-summary",
            "--exit-code-on-error",
            "1",
            "HttpsUser",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=100 * TIMEOUT_FACTOR,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    assert "--tb-state 'sticky': expected one of full, store, connection" in out, out[-2000:]


@pytest.mark.timeout(300 * TIMEOUT_FACTOR)
def test_compact_every_compacts_any_scenario_over_websocket_mode(tmp_path: Path) -> None:
    """``--compact-every`` on a scenario that does not compact: the WebSocket cell compacts on an HTTPS server the
    run starts beside its own, and the run directory's turns say which request was which."""
    out = tmp_path / "run"
    args = ["run", "--scenario", "agent-5", "--compact-every", "2", "--transports", "ws", "--states", "connection"]
    proc = _run([*args, "--profile", "instant", "--rollouts", "1", "--warmup", "0", "--out", str(out)], 240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = RunDir(out)
    assert sorted(s["server"] for s in run.meta["servers"].values()) == ["https", "ws"]
    turns = run.turns.sort_values("turn_index")
    assert list(turns["phase"]) == [
        "turn",
        "turn",
        "compact",
        "after_compact",
        "turn",
        "compact",
        "after_compact",
        "turn",
    ]
    assert turns["success"].all() and (turns["input_bytes"] > 0).all()
    assert int(run.rollouts["compactions"].iloc[0]) == 2
