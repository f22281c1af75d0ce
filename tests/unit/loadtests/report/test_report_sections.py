"""A report section that raises costs that section only: the report is written with a note where the section
would be, ``report.log`` holds the traceback, and ``turnbench report`` exits non-zero; a figure that fails to
draw likewise. A run whose statistics cannot be computed still gets a report (the run, the environment)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from loadtests.cli import main
from loadtests.present import plots
from loadtests.present.doc import Doc
from loadtests.report import render as report
from tests.unit.loadtests.report.test_report_synth import make_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "run")


def _boom(*_: object, **__: object) -> None:
    raise ZeroDivisionError("made to fail")


def test_a_failing_section_becomes_a_note_and_the_rest_is_written(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(report, "_calibration_section", _boom)
    out = tmp_path / "r"
    assert main(["report", str(run_dir), "--out", str(out)]) == 1
    md = (out / "report.md").read_text(encoding="utf-8")
    html = (out / "report.html").read_text(encoding="utf-8")
    note = "**This section failed to build:** `ZeroDivisionError: made to fail`"
    assert "## Calibration: the harness measuring itself" in md and note in md
    assert "This section failed to build" in html
    for kept in ("## Headline: end-to-end rollout time against HTTPS", "## All cells", "## Environment"):
        assert kept in md  # the sections around it are all there
    log = (out / "report.log").read_text(encoding="utf-8")
    assert "== Calibration: the harness measuring itself" in log and "ZeroDivisionError" in log
    assert (out / "summary.json").is_file()
    assert "some report sections failed" in capsys.readouterr().err


def test_a_section_that_fails_to_render_is_cut_at_write_time(tmp_path: Path) -> None:
    """The failure that lost whole reports: a value that broke the formatter while the document was written."""
    d = Doc("doc")
    d.h2("Before")
    d.p("kept")
    d.h2("Broken")
    d.table(pd.DataFrame({"x": [_Unprintable()]}))
    d.h2("After")
    d.p("kept too")
    paths = d.write(tmp_path)
    md, page = paths["md"].read_text(encoding="utf-8"), paths["html"].read_text(encoding="utf-8")
    note = "**This section failed to render:** `ValueError: no text for this cell`"
    assert "## Before\n\nkept" in md and f"## Broken\n\n{note}" in md and "## After\n\nkept too" in md
    assert "<h2>Broken</h2><p><b>This section failed to render:</b>" in page and "kept too" in page
    assert [e.section for e in d.errors] == ["Broken"]  # once, though both renderings failed
    assert "ValueError: no text for this cell" in paths["log"].read_text(encoding="utf-8")


class _Unprintable:
    def __str__(self) -> str:
        raise ValueError("no text for this cell")


def test_a_figure_that_fails_is_a_note(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plots, "rollout_ecdf", _boom)
    paths = report.write_report(run_dir, tmp_path / "r")
    md = paths["md"].read_text(encoding="utf-8")
    assert "**This figure failed to draw:** `ZeroDivisionError: made to fail`" in md
    assert "## TTFT by turn" in md and (tmp_path / "r" / "plots" / "ttft_by_turn.png").is_file()
    assert "== Rollout latency distribution" in paths["log"].read_text(encoding="utf-8")


def test_the_headline_picture_stands_under_the_verdict(run_dir: Path, tmp_path: Path) -> None:
    paths = report.write_report(run_dir, tmp_path / "r")
    md = paths["md"].read_text(encoding="utf-8")
    assert "log" not in paths and not (tmp_path / "r" / "report.log").exists()
    picture, headline = md.index("## Headline at a glance"), md.index("## Headline: end-to-end")
    assert md.index("**Claim under test:**") < picture < headline
    assert (tmp_path / "r" / "plots" / "headline.png").read_bytes()[:4] == b"\x89PNG"


def test_a_run_without_statistics_still_gets_a_report(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report.RunDir, "statistics", _boom)
    paths = report.write_report(run_dir, tmp_path / "r")
    md = paths["md"].read_text(encoding="utf-8")
    assert "## Statistics of the run" in md and "## Environment" in md and "summary" not in paths
