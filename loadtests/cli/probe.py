"""``turnbench probe``: what a Responses endpoint offers, found by trying it."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from loadtests.cli.common import lazy

DESCRIPTION = """\
Try what a Responses endpoint offers and print a table (capability, offered yes/no/partial, evidence):
streamed and non-streamed responses, store + GET /v1/responses/{id}, previous_response_id continuations
(a made-up parent must be refused), forks, POST /v1/responses/compact, WebSocket mode, lanes (stream_id) and
whether they run concurrently (their events interleave), how many response.create one connection takes at
once and what comes past it, generate: false, response.steer, turnbench's stage timings, usage, a health
route. Each attempt is bounded in time. With no --target, turnbench's own https and ws servers are started
and probed. With --target https=URL alone, WebSocket mode is tried at the same address."""

EPILOG = """\
examples:
  turnbench probe                                            # turnbench's own servers
  turnbench probe --target https=http://127.0.0.1:8000/v1 --target ws=ws://127.0.0.1:8000/v1
  turnbench probe --target https=https://gw.example.com/v1 --api-key "$KEY" --json probe.json

exit status: 0 when the endpoint answers streamed responses or WebSocket mode, 2 when it answers neither."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "probe",
        help="what a Responses endpoint offers (streaming, store, lanes, steer …), found by trying it",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_target_arguments(p)
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the findings and raw observations here")
    p.add_argument(
        "--timeout-s",
        type=float,
        default=20.0,
        metavar="S",
        help="the most one attempt may take (default 20)",
    )
    p.add_argument(
        "--inflight-bound",
        type=int,
        default=256,
        metavar="N",
        help="response.create sent at once on one connection to find its limit (default 256; each is a short "
        "request, but a paid endpoint bills them)",
    )
    p.add_argument(
        "--profile",
        default="fast",
        metavar="NAME",
        help="sim profile of the servers started when there is no --target (default fast)",
    )
    p.set_defaults(func=lazy("loadtests.cli.probe", "cmd_probe"))


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    """``--target``, ``--ca``, ``--api-key``: the endpoint, as ``turnbench run`` names one."""
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="TRANSPORT=URL",
        help="the endpoint: https=http(s)://HOST:PORT/v1 and/or ws=ws(s)://HOST:PORT/v1; repeatable",
    )
    p.add_argument("--ca", metavar="PATH", help="CA certificate (PEM) of a TLS target with a private certificate")
    p.add_argument("--api-key", metavar="KEY", help="bearer key for the target")


def cmd_probe(args: argparse.Namespace) -> int:
    """Probe, print the table, write ``--json``; 2 when neither streaming nor WebSocket mode answered."""
    from loadtests.execution import probe as pr

    if args.inflight_bound < 1:
        raise ValueError("--inflight-bound must be at least 1")
    targets = pr.parse_targets(args.target)
    kwargs = {"timeout_s": args.timeout_s, "inflight_bound": args.inflight_bound}
    if targets:
        eps = pr.target_endpoints(targets, ca_path=args.ca, api_key=args.api_key)
        print(f"probe: {', '.join(f'{k}={v}' for k, v in targets.items())}", file=sys.stderr)
        result = pr.probe(eps, **kwargs)
    else:
        with tempfile.TemporaryDirectory(prefix="turnbench-probe-") as tmp:
            print(f"probe: starting turnbench's https and ws servers ({args.profile} profile)", file=sys.stderr)
            with pr.own_servers(Path(tmp), args.profile) as eps:
                result = pr.probe(eps, **kwargs)
    print(pr.format_table(result))
    print(f"({result.wall_s:.1f} s; targets: {', '.join(f'{k} {v}' for k, v in result.targets.items())})")
    if args.json is not None:
        pr.write_json(result, args.json)
        print(f"findings written: {args.json}", file=sys.stderr)
    return 0 if result.offers("https_stream") or result.offers("ws") else 2
