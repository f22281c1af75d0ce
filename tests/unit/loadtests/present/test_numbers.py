"""Whatever renders numbers renders *any* number: the formatter, table cells, frames and whole documents take
finite floats of every size and sign, ±inf, NaN, values that round across a power of ten
(``999.9999999999999``), and missing cells, and never raise."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import example, given, settings
from hypothesis import strategies as st

from loadtests.analysis.verdict import _pct
from loadtests.cli.run import _f, _pair
from loadtests.extras.common import ms_text
from loadtests.present.doc import SCIENTIFIC_ABOVE, SCIENTIFIC_BELOW, Doc, cell_text, format_number, round_frame
from loadtests.report.render import _fmt_ci

ANY_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
MISSING = st.sampled_from([None, math.nan, pd.NA, np.nan])
CELL = st.one_of(ANY_FLOAT, MISSING, st.integers(), st.text(max_size=5), st.booleans())
EDGES = [999.9999999999999, 999.95, 99.99999, 9.9999999, 0.99999999, -999.9999999999999, 5e-324, 1e308, -0.0]


def _value(text: str) -> float:
    return float(text.replace(",", ""))


@given(ANY_FLOAT, st.integers(min_value=-2, max_value=8))
@example(999.9999999999999, 3)
@example(999.95, 3)
@example(0.00099999, 3)
@example(1e-300, 3)
@example(-1e300, 3)
@example(5e-324, 3)
def test_format_number_renders_any_float_close_to_its_value(v: float, digits: int) -> None:
    text = format_number(v, digits)
    assert isinstance(text, str) and text
    if not math.isfinite(v):
        assert text == "n/a"
        return
    shown = _value(text)
    sig = max(1, digits)
    if SCIENTIFIC_BELOW <= abs(v) < SCIENTIFIC_ABOVE:
        assert "e" not in text  # never scientific notation for what a benchmark reports
        if abs(v) >= 999.5:
            assert abs(shown - v) <= 0.5 + 1e-9 * abs(v)  # whole numbers above 1000
        else:
            assert abs(shown - v) <= 0.5 * 10 ** (math.floor(math.log10(abs(v))) - sig + 2)
    elif v != 0:
        # rounding may carry past the largest float (1.5e308 → "2e+308") or below the smallest
        assert math.isclose(shown, v, rel_tol=10 ** (1 - sig)) or not math.isfinite(shown) or abs(v) < 1e-300


def test_format_number_reads_as_a_person_writes() -> None:
    assert format_number(999.9999999999999) == "1,000"
    assert format_number(0.7799999999999999) == "0.78"
    assert format_number(12345.6) == "12,346"
    assert format_number(-0.0) == "0"
    assert format_number(1e-3) == "0.001"
    assert format_number(float("nan")) == format_number(float("-inf")) == "n/a"


@given(CELL)
def test_cell_text_renders_any_cell(v: object) -> None:
    text = cell_text(v)
    assert isinstance(text, str) and (text or v == "")
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        assert text == "—"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(ANY_FLOAT, CELL, ANY_FLOAT), min_size=0, max_size=6))
def test_tables_and_documents_render_any_numbers(rows: list[tuple[object, ...]]) -> None:
    df = pd.DataFrame(rows, columns=["a", "b", "c"])
    rounded = round_frame(df)
    assert rounded.shape == df.shape
    doc = Doc("numbers")
    doc.h2("A table of anything")
    doc.table(df, empty="none")
    doc.table(rounded, empty="none")
    md, page = doc.markdown(Path(".")), doc.html()
    assert doc.errors == []
    assert md.count("| a | b | c |") == (2 if rows else 0) and "<h2>A table of anything</h2>" in page
    for v in df["a"]:
        assert cell_text(v).replace("|", "\\|") in md


@given(ANY_FLOAT, ANY_FLOAT, ANY_FLOAT)
@example(999.9999999999999, math.nan, math.inf)
def test_the_report_and_cli_formatters_take_any_float(v: float, lo: float, hi: float) -> None:
    for text in (
        _fmt_ci(v, lo, hi),
        _f(v),
        _f(None),
        _pair({"p50": v, "p99": hi}),
        ms_text(v),
        ms_text(None),
        _pct(v),
    ):
        assert isinstance(text, str) and text
        assert not re.search(r"\{|\}", text)


def test_the_old_formatter_failed_where_this_one_does_not() -> None:
    """The bug this file guards: ``.3g`` gives ``1e+03`` for 999.9999999999999, ``log10`` of it rounds to 3.0
    and a computed precision of -1 raised ``Format specifier missing precision`` (the whole report was lost)."""
    v = 999.9999999999999
    assert f"{v:.3g}" == "1e+03" and math.floor(math.log10(abs(v))) == 3
    assert format_number(v) == "1,000"
    for edge in EDGES:
        format_number(edge)
