"""The ``turnbench`` command line: :mod:`loadtests.cli.main` builds the parser from each command's module."""

from loadtests.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
