"""``turnbench conform``: the conformance cases (:mod:`loadtests.conform`) against any Responses endpoint, or by
default against turnbench's own HTTPS and WebSocket-mode servers, started for the run and stopped after it.

It prints a line per case as it ends, then the summary table; ``--json PATH`` writes the record; the exit status
is 1 when a case failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.conform.cases import CASES
from loadtests.conform.run import exit_status, render_line, render_table, report_json, run_cases, select
from loadtests.conform.spec import load_spec
from loadtests.conform.wire import Target
from loadtests.execution import procs
from loadtests.execution.procs import Endpoint, start_server_process
from turnbench.tls import load_ca

__all__ = ["GRPC_NOTE", "cmd_conform", "list_cases", "parse_targets"]

SPEC_TRANSPORTS = ("https", "ws")
GRPC_NOTE = "grpc: the specification defines no gRPC transport, so its cases are not applicable there"


def parse_targets(values: Sequence[str] | None) -> dict[str, str]:
    """``https=URL``, ``ws=URL``, ``grpc=HOST:PORT`` (repeatable, or comma lists) → {transport: URL}."""
    return procs.parse_targets(
        values, allowed=(*SPEC_TRANSPORTS, "grpc"), refusal="conform checks https and ws (grpc has no spec cases)"
    )


def list_cases() -> str:
    lines = [f"{'case':<32} {'transport':<9} {'from':<9} required"]
    for c in CASES:
        lines.append(
            f"{c.id:<32} {c.transport:<9} {c.source:<9} {'required' if c.required else 'optional: ' + str(c.feature)}"
        )
    return "\n".join(lines)


def _target(ep: Endpoint, transport: str, args: argparse.Namespace) -> Target:
    return Target(
        transport=transport,
        url=ep.url,
        ssl_context=load_ca(ep.ca_path) if ep.tls and ep.ca_path else None,
        api_key=ep.api_key,
        model=args.model,
        timeout_s=args.timeout,
    )


def cmd_conform(args: argparse.Namespace) -> int:
    if args.list:
        print(list_cases())
        return 0
    cases = select(args.only, args.skip)
    spec = load_spec(Path(args.spec) if args.spec else None)
    urls = parse_targets(args.target)
    notes: list[str] = []
    started: list[Endpoint] = []
    with tempfile.TemporaryDirectory(prefix="turnbench-conform-") as tmp:
        try:
            targets: dict[str, Target] = {}
            if urls:
                trust = load_ca(args.ca) if args.ca else None  # None: the system's CAs, as for a public API
                for name, url in urls.items():
                    if name == "grpc":
                        notes.append(GRPC_NOTE)
                        continue
                    scheme = url.split("://", 1)[0]
                    if scheme not in ("http", "https", "ws", "wss"):
                        raise ValueError(f"--target {name}={url}: expected an http(s):// or ws(s):// URL")
                    targets[name] = Target(name, url.rstrip("/"), trust, args.api_key, args.model, args.timeout)
            else:
                needed = sorted({c.transport for c in cases})
                print(
                    f"conform: starting turnbench's {' and '.join(needed)} servers (profile {args.profile})", flush=True
                )
                for name in needed:
                    ep = start_server_process(
                        name, workdir=Path(tmp) / name, profile=args.profile, tls=not args.no_tls, api_key=args.api_key
                    )
                    started.append(ep)
                    targets[name] = _target(ep, name, args)
                notes.append(GRPC_NOTE)
            for name, t in targets.items():
                print(f"conform: {name} target {t.url}", flush=True)
            print(
                f"conform: {len(cases)} cases against {spec.title} {spec.version} (schemas: {spec.source})", flush=True
            )
            outcomes = asyncio.run(run_cases(cases, spec, targets, lambda o: print(render_line(o), flush=True)))
        finally:
            codes = [ep.process.stop() for ep in started if ep.process is not None]
    record: dict[str, Any] = report_json(outcomes, spec, targets, notes)
    print()
    print(render_table(outcomes, spec))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        print(f"conform: wrote {args.json}")
    if any(code not in (0, None) for code in codes):
        print(f"conform: a server exited badly: {codes}", file=sys.stderr)
        return 1
    return exit_status(outcomes)
