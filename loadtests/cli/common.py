"""What every command module of the CLI shares."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable


def lazy(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """A command imported only when it runs (pandas and matplotlib stay out of ``turnbench serve``)."""

    def cmd(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), name)(args))

    return cmd
