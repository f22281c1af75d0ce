"""The run statistics and the report on synthetic run directories with known medians: headline ratios and
CIs, ablations, the cell table, the rendered Markdown/HTML (every section, valid PNGs, embedded), and the
``turnbench report`` command."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from loadtests.analysis.cells import cell_table
from loadtests.analysis.headline import ablations, headline
from loadtests.cli import main
from loadtests.present.doc import cell_text, format_number
from loadtests.report import render as report
from loadtests.runs.rundir import RunDir, read_samples, write_json, write_samples
from tests.unit.loadtests.report.test_report_synth import make_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIGRATION = {
    "agent_loop": {"file": "clients/agent.py"},
    "clients": [
        {
            "transport": "ws",
            "written": 10,
            "deleted": 20,
            "kept": 5,
            "codegen": False,
            "proto_lines": 0,
            "generated_lines": 0,
            "new_dependencies": ["websockets"],
            "support_lines": 0,
            "body": {"identical": True, "note": "same JSON"},
        }
    ],
    "sdk": {"files": ["a.py", "b.py"], "written": 7, "deleted": 5, "kept": 26, "old": 31},
    "runtime": None,
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run")


def _row(h: object, cell: str, vs: str, profile: str = "fast") -> dict[str, object]:
    assert isinstance(h, pd.DataFrame)
    sel = h[(h["cell"] == cell) & (h["vs"] == vs) & (h["profile"] == profile)]
    assert len(sel) == 1, sel
    return dict(sel.iloc[0])


def _headline(path: Path) -> pd.DataFrame:
    run = RunDir(path)
    return headline(run.rollouts, run.cells)


def test_headline_ratios_and_cis_on_known_medians(run_dir: Path) -> None:
    h = _headline(run_dir)
    ws = _row(h, "ws/connection", "https/full")
    assert ws["ratio"] == pytest.approx(0.6)
    assert ws["reduction_pct"] == pytest.approx(40.0)
    assert ws["lo"] < 0.6 < ws["hi"] and ws["hi"] - ws["lo"] < 0.2
    assert ws["reduction_lo"] == pytest.approx(100 * (1 - ws["hi"]))  # type: ignore[operator]
    grpc = _row(h, "grpc/connection", "https/store", profile="instant")
    assert grpc["ratio"] == pytest.approx(660 / 900)
    assert _row(h, "https/store", "https/full")["ratio"] == pytest.approx(0.9)
    assert set(h["concurrency"]) == {1}  # headline at the lowest concurrency
    assert not (h["cell"].str.startswith("inproc")).any()  # the in-process reference is no transport
    assert not ((h["cell"] == "https/store") & (h["vs"] == "https/store")).any()


def test_headline_sentences_state_the_measurement(run_dir: Path) -> None:
    h = _headline(run_dir)
    text = report.headline_sentences(h)
    ws_fast = [s for s in text if "`ws/connection`" in s and "~1,000 tok/s" in s]
    assert len(ws_fast) == 1
    assert "0.60× the time of `https/full` (40.0% less" in ws_fast[0]
    assert "0.67× the time of `https/store` (33.3% less" in ws_fast[0]
    assert not any("`ws/store` rollouts" in s for s in text)  # the sentences name WS and gRPC with state


def test_ablations_change_and_share(run_dir: Path) -> None:
    run = RunDir(run_dir)
    a = ablations(run.rollouts, run.cells).set_index("variant")
    assert a.loc["no-token_cache", "change_pct"] == pytest.approx(20.0)
    # 600 -> 720 ms against a 400 ms gap to https/full: 30% of the gap
    assert a.loc["no-token_cache", "share_pct"] == pytest.approx(30.0)
    # the setting is what the variant's server was started with, not what its label says
    assert a.loc["tokens_per_chunk-8", "setting"] == "tokens_per_chunk = 8"
    assert a.loc["no-incremental_checks", "setting"] == "incremental_checks off"
    assert set(a["cell"]) == {"ws/connection"}


def test_cell_table_throughput_is_littles_law(run_dir: Path) -> None:
    cells = cell_table(RunDir(run_dir).statistics().cells)
    row = cells[
        (cells["transport"] == "https")
        & (cells["state"] == "full")
        & (cells["profile"] == "fast")
        & (cells["concurrency"] == 4)
        & (cells["variant"] == "default")
    ].iloc[0]
    assert row["rollouts_per_s"] == pytest.approx(4 * 1000 / 1600.0)  # 1000 ms x 1.6 at c=4
    assert row["rollout_p50_ms"] == pytest.approx(1600.0) and row["rollouts"] == 9 and row["failed"] == 0


def test_the_runner_summary_is_the_report_summary(run_dir: Path, tmp_path: Path) -> None:
    """summary.json as the run wrote it and as the report rebuilds it: one statistics module, one result."""
    written = json.loads((run_dir / "summary.json").read_text())
    paths = report.write_report(run_dir, tmp_path / "r")
    rebuilt = json.loads(paths["summary"].read_text())
    assert rebuilt == written
    assert {r["cell"] for r in written["headline"]} >= {"ws/connection", "grpc/connection"}


def test_warmup_and_failures_are_not_timed(tmp_path: Path) -> None:
    d = make_run(tmp_path / "run", concurrencies=(1,), profiles=("fast",))
    r = read_samples(d / "rollouts")
    https = (r["transport"] == "https") & (r["state"] == "full")
    extra = r[https].head(2).copy()
    extra["warmup"] = [True, False]
    extra["success"] = [True, False]
    extra["rollout_ms"] = [1e9, 1e9]
    write_samples(pd.concat([r, extra], ignore_index=True), d / "rollouts")
    assert len(RunDir(d).samples("rollouts", warmup=True)) == len(RunDir(d).rollouts) + 1  # kept on disk
    h = _headline(d)
    row = _row(h, "ws/connection", "https/full")
    assert row["ratio"] == pytest.approx(0.6) and row["failed"] == 1


def test_report_renders_every_section_with_embedded_pngs(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_json(run_dir / "migration.json", MIGRATION)
    try:
        paths = report.write_report(run_dir, out)
    finally:
        (run_dir / "migration.json").unlink()
    md, page = paths["md"].read_text(), paths["html"].read_text()
    for heading in (
        "Headline",
        "TTFT by turn",
        "Rollout latency distribution",
        "Server time per turn by stage",
        "Bytes per turn",
        "Throughput vs concurrency",
        "Ablations",
        "Calibration",
        "Migration cost",
        "Environment",
    ):
        assert f"## {heading}" in md, heading
        assert f"<h2>{heading}" in page, heading
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.stem for p in pngs} == {
        "headline",
        "ttft_by_turn",
        "rollout_ecdf",
        "stage_stack",
        "bytes_per_turn",
        "throughput",
        "ablations",
    }
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(embedded) == len(pngs)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)
    assert {base64.b64decode(d) for d in embedded} == {p.read_bytes() for p in pngs}
    assert all(f"plots/{p.name}" in md for p in pngs)
    assert "http://" not in page and "https://" not in page  # self-contained: no external assets
    assert "Injected latency: **none**" in md and "not saturated" in md
    meta = RunDir(run_dir).meta
    assert str(meta["git_commit"])[:12] in md and meta["cpu"]["model"] in md  # the environment to rerun it
    assert "**7 lines written" in md and "websockets" in md  # migration.json rendered
    summary = json.loads(paths["summary"].read_text())
    assert {r["cell"] for r in summary["headline"]} >= {"ws/connection", "grpc/connection"}


def test_report_lists_injected_latency_and_says_what_is_missing(tmp_path: Path) -> None:
    d = make_run(
        tmp_path / "run",
        concurrencies=(1,),
        profiles=("fast",),
        ablations={},
        server_settings={"inject_ms": {"safety": 5.0}},
    )
    md = report.write_report(d)["md"].read_text()
    assert '"safety": 5.0' in md
    assert "This run has no ablation variants" in md
    assert "has no `migration.json`" in md  # the report renders migration cost, it never measures it


def test_report_cli_rebuilds_and_reports_missing_dir(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "report.html").is_file()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "has no run.json" in capsys.readouterr().err


RUNTIME_N1 = {
    "transport": "ws",
    "profile": "fast",
    "drop_at": 10,
    "tool_calls": 20,
    "rollouts": 1,
    "strategies": [
        {
            "strategy": "reconnect + hydrate from the store (store=true)",
            "ok": "1/1",
            "extra_rollout_ms": 55.08931999999993,
            "ratio": 1.0649895313950504,
            "ratio_lo": 1.0649895313950504,
            "ratio_hi": 1.0649895313950504,
            "recovery_ms": 0.7799999999999999,
        }
    ],
}


def test_numbers_are_rounded_for_reading() -> None:
    assert format_number(0.7799999999999999) == "0.78" and format_number(12345.6) == "12,346"
    assert format_number(0.00012345) == "0.000123" and format_number(float("nan")) == "n/a"
    assert cell_text(0.7799999999999999) == "0.78" and cell_text(None) == "—" and cell_text(3) == "3"


def test_report_rounds_scrolls_and_shows_n1_as_n1(run_dir: Path, tmp_path: Path) -> None:
    write_json(run_dir / "migration.json", {**MIGRATION, "runtime": RUNTIME_N1})
    try:
        paths = report.write_report(run_dir, tmp_path / "r")
    finally:
        (run_dir / "migration.json").unlink()
    md, page = paths["md"].read_text(), paths["html"].read_text()
    table_rows = [line for line in md.splitlines() if line.startswith("|")]
    assert table_rows and not [r for r in table_rows if re.search(r"(?<![\d:])\d+\.\d{5,}", r)]  # no 0.7799999999999999
    runtime = md[md.index("Runtime cost of migrating") :]
    assert "ratio (n=1)" in runtime and "| 1.06 |" in runtime and "[1.06" not in runtime and "95% CI" not in runtime
    assert page.count('<div class="scroll"><table>') == page.count("<table>")  # wide tables scroll, never cut
    assert "overflow-x:auto" in page
