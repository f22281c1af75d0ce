"""``python -m servers {https,ws,grpc} [flags]`` — the same as ``turnbench serve``."""

from __future__ import annotations

import sys

from loadtests.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["serve", *sys.argv[1:]]))
