"""``turnbench conform``: the public specification's cases and the API contract's, against any endpoint."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from loadtests.cli.common import lazy

DESCRIPTION = """\
Check a Responses endpoint against the Open Responses specification (its schemas, derived from the
openresponses-types package's models, or an OpenAPI document given with --spec) and against the public-API
cases of turnbench's contract suite. Every response and every streamed event is validated with JSON Schema
against the specification's schemas. One line per case as it runs, then a
summary table; the exit status is 1 when a case failed. A case of an optional feature (image input,
compaction, retrieval, WebSocket mode, stream_id lanes) that the endpoint says it lacks (404, 405, 501, a 400
calling it unsupported, a refused WebSocket handshake) is "not offered", not failed.

Without --target it starts turnbench's own HTTPS and WebSocket-mode servers (TLS with a generated CA) and
checks those."""

EPILOG = """\
examples:
  turnbench conform                                  # turnbench's own servers
  turnbench conform --target https=https://api.example.com/v1 --target ws=wss://api.example.com/v1 \\
      --api-key $KEY --model gpt-4o-mini
  turnbench conform --target https=http://127.0.0.1:8000/v1 --only basic-response,streaming-response
  turnbench conform --spec openapi.json              # a newer OpenAPI document of the specification
  turnbench conform --list
"""


def register(sub: Any) -> None:
    c = sub.add_parser(
        "conform",
        help="check an endpoint against the Open Responses specification",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "--target",
        action="append",
        metavar="NAME=URL",
        help="an endpoint to check: https=URL or ws=URL, the base URL ending in /v1 (repeatable); "
        "grpc=HOST:PORT is accepted and noted (the specification has no gRPC). Default: start turnbench's own",
    )
    c.add_argument("--ca", metavar="PATH", help="CA certificate to trust for https:// and wss:// targets")
    c.add_argument("--api-key", metavar="KEY", help="sent as Authorization: Bearer KEY")
    c.add_argument("--model", default="gpt-4o-mini", help="the model named in every request (default gpt-4o-mini)")
    c.add_argument(
        "--only", action="append", metavar="IDS", help="run only these cases (comma list, repeatable; see --list)"
    )
    c.add_argument("--skip", action="append", metavar="IDS", help="leave these cases out (comma list, repeatable)")
    c.add_argument("--list", action="store_true", help="list the cases (id, transport, source, required) and exit")
    c.add_argument("--json", type=Path, metavar="PATH", help="also write every outcome as JSON to PATH")
    c.add_argument("--timeout", type=float, default=30.0, metavar="S", help="the longest wait for one reply (s)")
    c.add_argument("--profile", default="instant", help="sim profile of the servers it starts (default instant)")
    c.add_argument("--no-tls", action="store_true", help="start its own servers without TLS")
    c.add_argument(
        "--spec",
        type=Path,
        metavar="PATH",
        help="an OpenAPI document (another version of the specification, say) whose components/schemas to check "
        "against instead of those derived from the openresponses-types package",
    )
    c.set_defaults(func=lazy("loadtests.commands.conform", "cmd_conform"))
