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
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["Doc", "cell_text", "format_number", "round_frame"]


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"(?<![\w*])\*([^*\n]+?)\*(?![\w*])", r"<i>\1</i>", out)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


def format_number(v: float, digits: int = 3) -> str:
    """A number for reading: ``digits`` significant figures below 1000 (``0.7799999999999999`` → ``0.78``),
    whole numbers with thousands separators above (``12,345``), ``n/a`` for NaN/inf; never scientific
    notation for what a benchmark reports."""
    if not math.isfinite(v):
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v == 0:
        return "0"
    text = f"{v:.{digits}g}"
    if "e" in text:  # tiny values: fixed point with the same significant figures
        text = f"{v:.{digits - 1 - math.floor(math.log10(abs(v)))}f}"
    return text


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


class Doc:
    """A document under construction: add blocks in order, then :meth:`write` (or :meth:`markdown`,
    :meth:`html`)."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[tuple[str, Any]] = []

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

    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, val in self.blocks:
            if kind == "h2":
                out += [f"## {val}", ""]
            elif kind == "p":
                out += [val, ""]
            elif kind == "ul":
                out += [f"- {x}" for x in val] + [""]
            elif kind == "pre":
                out += ["```", val, "```", ""]
            elif kind == "table":
                cols = [str(c) for c in val.columns]
                out += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                out += [
                    "| " + " | ".join(cell_text(v).replace("|", "\\|") for v in row) + " |"
                    for row in val.itertuples(index=False)
                ] + [""]
            elif kind == "img":
                path, caption = val
                out += [f"![{caption}]({path.relative_to(base).as_posix()})", "", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        body: list[str] = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, val in self.blocks:
            if kind == "h2":
                body.append(f"<h2>{_inline_html(val)}</h2>")
            elif kind == "p":
                body.append(f"<p>{_inline_html(val)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline_html(x)}</li>" for x in val) + "</ul>")
            elif kind == "pre":
                body.append(f'<div class="scroll"><pre>{html.escape(val)}</pre></div>')
            elif kind == "table":
                head = "".join(f"<th>{html.escape(str(c))}</th>" for c in val.columns)
                rows = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(cell_text(v))}</td>" for v in row) + "</tr>"
                    for row in val.itertuples(index=False)
                )
                body.append(
                    f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>'
                )
            elif kind == "img":
                path, caption = val
                data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
                body.append(
                    f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{_inline_html(caption)}</figcaption></figure>"
                )
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
        """Write ``report.md`` and ``report.html`` into ``out``. Returns: both paths."""
        md, page = out / "report.md", out / "report.html"
        md.write_text(self.markdown(out), encoding="utf-8")
        page.write_text(self.html(), encoding="utf-8")
        return {"md": md, "html": page}
