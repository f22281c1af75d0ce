"""mkdocs hook: the ``turnbench`` command reference, generated from its argparse parser at build time.

``on_files`` adds ``reference/cli.md`` (never written to disk, never committed) built from
``loadtests.cli.build_parser()``: for every subcommand its usage, its description and epilog, and every flag
with its help, grouped as ``--help`` groups them. The page cannot drift from the code: a flag added to the
parser is on the page at the next ``make docs``.

It reads only the parser's public shape plus argparse's action list (``parser._actions``,
``parser._action_groups``), which is the same whether ``loadtests.cli`` is a module or a package that
exposes ``build_parser``.
"""

from __future__ import annotations

import argparse
import re
import sys
import textwrap
from pathlib import Path

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files

PAGE = "reference/cli.md"

INTRO = """\
# Command reference

Every `turnbench` subcommand with its usage, what it does and every flag. This page is generated from the
command's own argument parser each time the site is built, so it matches the code it was built from;
`turnbench COMMAND --help` prints the same text in a terminal.

The `make` targets that wrap these commands:

| target | command |
|---|---|
| `make bench` | `turnbench bench` |
| `make bench-quick` | `turnbench bench --quick` |
| `make gate` | `turnbench gate` |
| `make baseline` | `turnbench gate --write-baseline` |
"""


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """Add the generated command reference to the site's files."""
    content = render(_build_parser(config))
    files.append(File.generated(config, PAGE, content=content))
    return files


def _build_parser(config: MkDocsConfig) -> argparse.ArgumentParser:
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:  # the checkout's own code, whether or not it is installed in this environment
        sys.path.insert(0, root)
    from loadtests.cli import build_parser

    parser: argparse.ArgumentParser = build_parser()
    return parser


# ---------------------------------------------------------------------------------------------- rendering


def render(parser: argparse.ArgumentParser) -> str:
    """The whole page as Markdown."""
    sub = _subcommands(parser)
    out = [INTRO, "## Subcommands", "", "| command | what it does |", "|---|---|"]
    for name, short in _short_help(parser).items():
        out.append(f"| [`{name}`](#turnbench-{name}) | {_escape_cell(short)} |")
    out += ["", "## `turnbench`", "", _usage(parser)]
    out += _prose(parser.epilog)
    for name, sp in sub.items():
        out += ["", f"## `turnbench {name}` {{ #turnbench-{name} }}", "", _usage(sp)]
        out += _prose(sp.description)
        for group in sp._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = _group_title(group.title)
            out += ["", f"### {title} {{ #turnbench-{name}-{_slug(title)} }}", ""]
            out += [_action_item(sp, a) for a in actions]
        out += _prose(sp.epilog)
    return "\n".join(out).rstrip() + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _short_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each subcommand's one-line help, in the order they were added."""
    out: dict[str, str] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out = {name: helps.get(name, "") for name in action.choices}
    return out


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups, prefix="")
    return "```text\n" + formatter.format_help().strip() + "\n```"


def _group_title(title: str | None) -> str:
    if title in (None, "options", "optional arguments"):
        return "Options"
    if title == "positional arguments":
        return "Arguments"
    return title[:1].upper() + title[1:]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _action_item(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """One flag as a list item: its spellings with their metavar, then its help."""
    formatter = parser._get_formatter()
    if action.option_strings:
        metavar = "" if action.nargs == 0 else " " + formatter._format_args(action, action.dest.upper())
        names = ", ".join(f"`{opt}{metavar}`" for opt in action.option_strings)
    else:
        names = f"`{action.metavar or action.dest.upper()}`"
    text = formatter._expand_help(action) if action.help else ""
    if action.choices is not None and "{" not in names:
        shown = ", ".join(f"`{c}`" for c in action.choices)
        text = f"{text} (one of {shown})" if text else f"one of {shown}"
    return f"- {names}: {_escape(' '.join(text.split()))}" if text else f"- {names}"


def _prose(text: str | None) -> list[str]:
    """A description or epilog as Markdown: indented blocks become code blocks, ``* ``/``- `` lines a list,
    the rest paragraphs (docstrings used as descriptions may carry reStructuredText markup)."""
    if not text:
        return []
    out: list[str] = []
    for block in re.split(r"\n\s*\n", textwrap.dedent(_from_rst(text)).strip("\n")):
        lines = block.splitlines()
        if all(line.startswith(" ") for line in lines if line.strip()):
            out += ["", "```text", textwrap.dedent(block).rstrip(), "```"]
        elif len(lines) > 1 and lines[0].rstrip().endswith(":") and all(line.startswith(" ") for line in lines[1:]):
            code = textwrap.dedent("\n".join(lines[1:])).rstrip()
            out += ["", _escape(lines[0].strip()), "", "```text", code, "```"]
        elif re.match(r"[*-] ", lines[0]):
            items = re.split(r"\n(?=[*-] )", block)
            out += [""] + [f"- {_escape(' '.join(item[2:].split()))}" for item in items]
        else:
            out += ["", _escape(" ".join(block.split()))]
    return out


def _from_rst(text: str) -> str:
    """``code`` and Sphinx roles (:func:`~a.b`) as Markdown code spans."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", lambda m: "`" + m.group(1).rsplit(".", 1)[-1] + "`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _escape(text: str) -> str:
    """Markdown-escape help text outside its `code` spans (argparse help is plain text)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside backticks
        parts[i] = re.sub(r"([\\*_\[\]<>#|])", r"\\\1", parts[i])
    return "`".join(parts) if len(parts) % 2 == 1 else _escape(text.replace("`", "'"))


def _escape_cell(text: str) -> str:
    return _escape(" ".join(text.split()))
