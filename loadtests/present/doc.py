"""The report's document model: blocks (headings, paragraphs, bullets, tables, figures, preformatted text)
rendered twice, as Markdown with figures as relative links and as a self-contained HTML page with figures
inlined (PNG as base64, no external assets). Paragraph text may use `code`, *italics* and **bold**.

Every table cell goes through :func:`cell_text` (numbers rounded for reading), and in HTML every table and
preformatted block scrolls sideways inside the page instead of being cut at its edge.
"""

from __future__ import annotations

import base64
import html
import math
import re
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Doc", "SectionError", "cell_text", "format_number", "round_frame"]


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w*])\*([^*\n]+?)\*(?![\w*])", r"<i>\1</i>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


SCIENTIFIC_ABOVE = 1e15
SCIENTIFIC_BELOW = 1e-6
"""Magnitudes outside [SCIENTIFIC_BELOW, SCIENTIFIC_ABOVE) are shown in scientific notation: no benchmark figure
lies there, and a fixed-point form would run to hundreds of digits."""


def format_number(v: Any, digits: int = 3) -> str:
    """A number for reading: ``digits`` significant figures below 1000 (``0.7799999999999999`` → ``0.78``),
    whole numbers with thousands separators from 1000 on (``12,345``; ``999.9999999999999`` → ``1,000``),
    ``n/a`` for NaN and ±inf, scientific notation only outside the range a benchmark reports (see
    :data:`SCIENTIFIC_ABOVE`). Takes any value: one that is not a number is shown as ``str`` does."""
    digits = max(1, int(digits))
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):
        return str(v)
    if not math.isfinite(x):
        return "n/a"
    if x == 0:
        return "0"
    if not SCIENTIFIC_BELOW <= abs(x) < SCIENTIFIC_ABOVE:
        return f"{x:.{digits}g}"
    rounded = float(f"{x:.{digits}g}")  # to `digits` significant figures first: 999.99 becomes 1000 here
    if abs(rounded) >= 1000:
        return f"{x:,.0f}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    text = f"{rounded:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def cell_text(v: Any) -> str:
    """What a table cell shows: floats rounded (:func:`format_number`), None and NaN as ``—``, the rest as
    ``str``."""
    if v is None or v is pd.NA:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float | np.floating):
        return "—" if math.isnan(v) else format_number(float(v))
    return str(v)


def round_frame(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Floats shown with ``digits`` significant figures (:func:`format_number`)."""
    out = df.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col]):
            out[col] = out[col].map(lambda v: format_number(v, digits))
    return out


@dataclass(frozen=True)
class SectionError:
    """A report section that failed: its title, the error in one line, the traceback."""

    section: str
    error: str
    traceback: str


class Doc:
    """A document under construction: add blocks in order, then :meth:`write` (or :meth:`markdown`,
    :meth:`html`)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[tuple[str, Any]] = []
        self.errors: list[SectionError] = []
        """The sections that failed to build or to render, in order (one entry per section)."""

    def section(self, title: str, build: Callable[[], None]) -> None:
        """Add a section by calling ``build`` (which adds its blocks, its ``h2`` first). If ``build`` raises,
        what it added is dropped and the section is its heading and a note saying it failed; the traceback
        goes to :attr:`errors`. A report's sections are built this way so that one failure costs one section."""
        mark = len(self.blocks)
        try:
            build()
        except Exception as exc:  # one section's failure must not cost the others
            del self.blocks[mark:]
            self.h2(title)
            self.p(f"**This section failed to build:** `{type(exc).__name__}: {exc}` (traceback in report.log).")
            self.errors.append(SectionError(title, f"{type(exc).__name__}: {exc}", traceback.format_exc()))

    def h2(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: Iterable[str]) -> None:
        items = list(items)
        if items:
            self.blocks.append(("ul", items))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def table(self, df: pd.DataFrame, *, empty: str = "No data.") -> None:
        self.blocks.append(("table", df) if not df.empty else ("p", f"*{empty}*"))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("img", (path, caption)))

    def sections(self) -> list[list[tuple[str, Any]]]:
        """The blocks cut into sections: each starts at an ``h2`` (the first may have none)."""
        out: list[list[tuple[str, Any]]] = [[]]
        for block in self.blocks:
            if block[0] == "h2" and out[-1]:
                out.append([])
            out[-1].append(block)
        return [s for s in out if s]

    def _render(self, one: Callable[[str, Any], list[str]]) -> list[str]:
        """Every section through ``one`` (a block → its lines); a section that raises is replaced by its
        heading and a note saying it failed, its traceback kept in :attr:`errors` (once per section)."""
        out: list[str] = []
        for section in self.sections():
            try:
                lines = [line for kind, val in section for line in one(kind, val)]
            except Exception as exc:  # one section's failure must not cost the others
                title = str(section[0][1]) if section[0][0] == "h2" else "(untitled)"
                note = f"**This section failed to render:** `{type(exc).__name__}: {exc}` (traceback in report.log)."
                if title not in {e.section for e in self.errors}:
                    self.errors.append(SectionError(title, f"{type(exc).__name__}: {exc}", traceback.format_exc()))
                lines = [*one("h2", title), *one("p", note)] if section[0][0] == "h2" else one("p", note)
            out += lines
        return out

    def markdown(self, base: Path) -> str:
        def one(kind: str, val: Any) -> list[str]:
            if kind == "h2":
                return [f"## {val}", ""]
            if kind == "p":
                return [val, ""]
            if kind == "ul":
                return [f"- {x}" for x in val] + [""]
            if kind == "pre":
                return ["```", val, "```", ""]
            if kind == "table":
                cols = [str(c) for c in val.columns]
                rows = [
                    "| " + " | ".join(cell_text(v).replace("|", "\\|") for v in row) + " |"
                    for row in val.itertuples(index=False)
                ]
                return ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), *rows, ""]
            path, caption = val
            return [f"![{caption}]({Path(path).relative_to(base).as_posix()})", "", f"*{caption}*", ""]

        return "\n".join([f"# {self.title}", "", *self._render(one)])

    def html(self) -> str:
        def one(kind: str, val: Any) -> list[str]:
            if kind == "h2":
                return [f"<h2>{_inline_html(val)}</h2>"]
            if kind == "p":
                return [f"<p>{_inline_html(val)}</p>"]
            if kind == "ul":
                return ["<ul>" + "".join(f"<li>{_inline_html(x)}</li>" for x in val) + "</ul>"]
            if kind == "pre":
                return [f'<div class="scroll"><pre>{html.escape(val)}</pre></div>']
            if kind == "table":
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in val.columns)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(cell_text(v))}</td>" for v in row) + "</tr>"
                    for row in val.itertuples(index=False)
                )
                return [f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>']
            path, caption = val
            data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
            return [
                f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline_html(caption)}</figcaption></figure>"
            ]

        body = [f"<h1>{html.escape(self.title)}</h1>", *self._render(one)]
        style = (
            "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
            ".scroll{overflow-x:auto;max-width:100%}"
            "table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:3px 7px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
            "code{background:#f3f3f3;padding:0 3px}figcaption{font-style:italic;margin-bottom:1em}"
        )
        return (
            f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
        )

    def write(self, out: Path) -> dict[str, Path]:
        """Write ``report.md`` and ``report.html`` into ``out``, and ``report.log`` with the traceback of every
        section that failed (:attr:`errors`; an old log is removed when none did). Returns: the paths."""
        md, page, log = out / "report.md", out / "report.html", out / "report.log"
        md.write_text(self.markdown(out), encoding="utf-8")
        page.write_text(self.html(), encoding="utf-8")
        paths = {"md": md, "html": page}
        if self.errors:
            log.write_text("".join(f"== {e.section}\n{e.traceback}\n" for e in self.errors), encoding="utf-8")
            paths["log"] = log
        else:
            log.unlink(missing_ok=True)
        return paths
