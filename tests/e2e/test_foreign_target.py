"""``turnbench run --target`` against a Responses server that is not turnbench (tests/foreign.py): no
``/healthz``, no stage timings, no usage. The rollouts run over HTTPS and WebSocket mode, and the run says what
the endpoint did not provide instead of failing."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from loadtests.cli.run import print_warnings
from loadtests.execution.plan import RunConfig
from loadtests.runs import runner
from loadtests.workload.scenarios import load_scenario
from tests.foreign import WORDS, Foreign

pytestmark = pytest.mark.timeout(120)


async def test_a_foreign_endpoint_runs_and_its_gaps_are_reported(tmp_path: Path) -> None:
    async with Foreign() as foreign:
        config = RunConfig(
            scenarios=[load_scenario("chat-1").replace(rollouts=2, rounds=1, warmup=0, tls=False)],
            transports=["https", "https-raw", "ws"],
            states=("full",),
            targets={
                "https": f"http://127.0.0.1:{foreign.https_port}/v1",
                "ws": f"ws://127.0.0.1:{foreign.ws_port}/v1",
            },
            out_dir=tmp_path / "run",
            quiet=True,
        )
        run = await asyncio.to_thread(runner.run, config)
    cells = run.summary["cells"]
    assert {c["transport"] for c in cells.values()} == {"https", "https-raw", "ws"}
    for c in cells.values():
        assert c["n_rollouts"] == 2 and c["failed_rollouts"] == 0, c["first_error"]
        assert c["provided"] == {"stages": False, "usage": False}
    assert set(run.rollouts["final_output"]) == {"".join(WORDS)}
    out = io.StringIO()
    print_warnings(run, out)
    text = out.getvalue()
    assert "no server stage timings" in text and "no usage" in text


async def test_the_run_command_against_a_foreign_endpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from loadtests.cli import main

    async with Foreign() as foreign:
        argv = ["run", "--scenario", "chat-1", "--rollouts", "2", "--warmup", "0", "--rounds", "1", "--quiet"]
        argv += ["--target", f"https=http://127.0.0.1:{foreign.https_port}/v1"]
        argv += ["--target", f"ws=ws://127.0.0.1:{foreign.ws_port}/v1", "--out", str(tmp_path / "cli")]
        code = await asyncio.to_thread(main, argv)
    printed = capsys.readouterr()
    assert code == 0, printed
    assert "NOTE: the endpoint reported no server stage timings" in printed.err
    assert "rollouts failed" not in printed.err and "https" in printed.out and "ws" in printed.out
    assert (tmp_path / "cli" / "summary.json").is_file()
