"""``turnbench record``: a Responses proxy that writes an agent's shape as a trace."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from loadtests.cli.common import lazy

DESCRIPTION = """\
A Responses-API proxy for a real agent app: point its base_url at http://HOST:PORT/v1; everything is forwarded
unchanged to --upstream (HTTPS+SSE and WebSocket mode) while one trace line per request is written: input
items' kinds, sizes, token counts and hashes (content only with --keep-content), the new tool outputs, the
client's gap since the previous response, the answer's kind and output tokens, TTFT and duration upstream.
Stop it with Ctrl-C; replay the trace over every transport with `turnbench run --trace FILE`.

  turnbench record --upstream https://127.0.0.1:8443/v1 --ca /tmp/turnbench-ca.pem --listen 127.0.0.1:8800
"""


def register(sub: Any) -> None:
    rec = sub.add_parser(
        "record",
        help="a Responses proxy that writes your agent's shape as a trace (replay it with run --trace)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rec.add_argument(
        "--upstream",
        required=True,
        metavar="URL",
        help="the Responses server's base URL, e.g. https://127.0.0.1:8443/v1",
    )
    rec.add_argument(
        "--listen",
        default="127.0.0.1:8800",
        metavar="HOST:PORT",
        help="where the agent connects, plain HTTP (default 127.0.0.1:8800; port 0 picks one and prints PORT=N)",
    )
    rec.add_argument("--ca", metavar="PATH", help="CA certificate (PEM) of an upstream with a private certificate")
    rec.add_argument(
        "--trace", type=Path, metavar="FILE", help="trace to write (default reports/traces/<UTC stamp>.jsonl)"
    )
    rec.add_argument(
        "--keep-content", action="store_true", help="keep each input item's content (default: sizes and hashes)"
    )
    rec.set_defaults(func=lazy("loadtests.workload.record_proxy", "cmd_record"))
