"""``python -m servers {https,ws,grpc,https-h2} [flags]`` — the same as ``turnbench serve``."""

from __future__ import annotations

from servers.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
