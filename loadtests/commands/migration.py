"""Migration cost (docs/guides/migration.md): what moving a client off HTTPS takes, computed from the code, and what
losing
a connection mid-rollout costs, measured. Both end up as JSON (:func:`migration_report`); the report
renders it (:func:`loadtests.report.add_migration_section`).

Static part, for each transport client against the HTTPS client (files from the transport table; the agent
loop is ``clients/agent.py`` for all of them, so it changes by zero lines by construction):

- lines a client must write or delete: :mod:`difflib` over *normalized* source (comments, docstrings and
  blank lines removed with :mod:`tokenize`/:mod:`ast`, indentation stripped);
- schema artefacts: ``.proto`` lines under ``protos/``, generated lines in ``turnbench/v1/*_pb2*.py``, and
  whether a codegen step is needed (the client imports generated code);
- new dependencies: third-party imports reachable from the client module (following imports into the
  project), mapped to distributions with :func:`importlib.metadata.packages_distributions`, minus HTTPS's;
- whether the request body stays byte-identical on the wire (:func:`wire_bodies`);
- the same line count for a user of the official SDK: ``examples/sdk_http_loop.py`` →
  ``examples/sdk_ws_loop.py`` (``client.responses.create(stream=True)`` → ``client.responses.connect()``).

Runtime part (:func:`measure_recovery`): the connection drops before one turn of a rollout, the agent loop
reconnects and goes on, hydrating from the store or resending the full context; against undisturbed
rollouts on the same server.
"""

from __future__ import annotations

import ast
import difflib
import importlib.metadata
import io
import sys
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import orjson
import pandas as pd

from clients.agent import Toolbox, run_rollout
from clients.base import ClientConfig, ResponsesClient, TurnRecorder, make_client
from loadtests.analysis.estimators import ratio_ci
from loadtests.runs.runner import TASK
from servers.base import start_server
from turnbench.service import ResponsesService
from turnbench.settings import Settings
from turnbench.transports import get_transport
from turnbench.v1.convert import body_to_proto

__all__ = [
    "ROOT",
    "STRATEGIES",
    "client_cost",
    "cmd_migration",
    "diff_counts",
    "measure_recovery",
    "migration_report",
    "normalized_lines",
    "sdk_cost",
    "wire_bodies",
]

ROOT = Path(__file__).resolve().parents[2]
MIGRATED = ("ws", "grpc", "grpc-json", "ws-long")
"""The transports whose migration from ``https`` is costed."""
SDK_EXAMPLES = ("loadtests/examples/sdk_http_loop.py", "loadtests/examples/sdk_ws_loop.py")
PROJECT_PACKAGES = frozenset({"turnbench", "servers", "clients", "loadtests"})
SAMPLE_BODY: dict[str, Any] = {
    "model": "turnbench-sim",
    "previous_response_id": "resp_0123456789abcdef",
    "input": [{"type": "function_call_output", "call_id": "call_0_0_0badf00d", "output": "12 lines, 80 words"}],
    "tools": [
        {
            "type": "function",
            "name": "word_count",
            "description": "Count lines, words, bytes of a file.",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
        }
    ],
    "store": False,
    "metadata": {"tool_calls": "20"},
}
"""A continuation turn as the agent loop sends it: what the byte-identity check encodes."""


def normalized_lines(source: str) -> list[str]:
    """Source lines without comments, docstrings (any bare string statement), blank lines or indentation."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            skip.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    return [s for i, line in enumerate(lines, 1) if i not in skip and (s := line.strip())]


def diff_counts(old: list[str], new: list[str]) -> dict[str, int]:
    """``written``: lines of ``new`` not matched in ``old`` (added or changed); ``deleted``: lines of ``old``
    not kept; ``kept``: matched lines; ``old``/``new``: sizes. All in normalized lines."""
    written = deleted = kept = 0
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes():
        if op == "equal":
            kept += i2 - i1
        else:
            written += j2 - j1
            deleted += i2 - i1
    return {"old": len(old), "new": len(new), "kept": kept, "written": written, "deleted": deleted}


def _module_file(root: Path, module: str) -> Path | None:
    base = root.joinpath(*module.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def _imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (``from a import b`` gives ``a`` and ``a.b``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def reachable_imports(root: Path, rel: str) -> tuple[set[str], set[str]]:
    """Follow imports from file ``rel`` through project modules under ``root``.

    Returns: (third-party top-level import names, project modules visited).
    """
    seen: set[str] = set()
    third: set[str] = set()
    todo = [root / rel]
    done: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in done:
            continue
        done.add(path)
        for mod in _imports(path):
            top = mod.split(".")[0]
            if top in PROJECT_PACKAGES:
                f = _module_file(root, mod)
                if f is not None:
                    seen.add(mod)
                    todo.append(f)
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.add(top)
    return third, seen


def distributions(import_names: set[str]) -> list[str]:
    """Distributions that provide the given top-level import names (unknown names kept as they are)."""
    table = importlib.metadata.packages_distributions()
    out: set[str] = set()
    for name in import_names:
        out.update(table.get(name, [name]))
    return sorted(out, key=str.lower)


def schema_artefacts(root: Path) -> dict[str, int]:
    """``proto_lines`` (no comments or blank lines) under ``protos/``; ``generated_lines`` in
    ``turnbench/v1/*_pb2*.py``."""
    proto = 0
    for p in sorted(root.glob("protos/**/*.proto")):
        proto += sum(1 for line in p.read_text().splitlines() if line.split("//")[0].strip())
    gen = sum(len(p.read_text().splitlines()) for p in sorted(root.glob("turnbench/v1/*_pb2*.py")))
    return {"proto_lines": proto, "generated_lines": gen}


def client_cost(transport: str, root: Path = ROOT) -> dict[str, Any]:
    """What moving from the HTTPS client to ``transport``'s client takes, measured on the files in ``root``
    (the client files the transport table names)."""
    rel, base = get_transport(transport).client_file, get_transport("https").client_file
    counts = diff_counts(normalized_lines((root / base).read_text()), normalized_lines((root / rel).read_text()))
    third, project = reachable_imports(root, rel)
    base_third, base_project = reachable_imports(root, base)
    codegen = any("_pb2" in m for m in project)
    art = schema_artefacts(root) if codegen else {"proto_lines": 0, "generated_lines": 0}
    extra = {}  # hand-written project modules only the new client needs (e.g. the proto conversion layer)
    for mod in sorted(project - base_project):
        f = _module_file(root, mod)
        if f is not None and "_pb2" not in f.name and (n := len(normalized_lines(f.read_text()))):
            extra[f.relative_to(root).as_posix()] = n
    return {
        "transport": transport,
        "file": rel,
        **counts,
        "codegen": codegen,
        **art,
        "support_lines": sum(extra.values()),
        "support_modules": extra,
        "new_dependencies": distributions(third - base_third),
    }


def sdk_cost(root: Path = ROOT) -> dict[str, Any]:
    """Lines an official-SDK user changes to go from ``responses.create(stream=True)`` to
    ``responses.connect()`` (the two example loops)."""
    http, ws = (root / p for p in SDK_EXAMPLES)
    return {
        "files": list(SDK_EXAMPLES),
        **diff_counts(normalized_lines(http.read_text()), normalized_lines(ws.read_text())),
    }


def wire_bodies(body: Mapping[str, Any] = SAMPLE_BODY) -> dict[str, bytes]:
    """The request of one turn as each client puts it on the wire (mirroring ``clients/*_client.py``): JSON
    for ``https`` (``stream`` added), ``ws`` and ``grpc-json`` (``type`` added), the protobuf
    ``CreateRequest`` for ``grpc``."""
    ws = orjson.dumps({"type": "response.create", **body})
    return {
        "https": orjson.dumps({**body, "stream": True}),
        "ws": ws,
        "grpc": bytes(body_to_proto(dict(body)).SerializeToString()),
        "grpc-json": ws,
    }  # the json codec sends the WebSocket frame as the message


def body_identity(bodies: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    """Per transport: is the body byte-identical to the HTTPS body once the transport-only member
    (``stream`` on HTTPS, ``type`` on WS) is taken out? Also the sizes in bytes."""
    ref = orjson.loads(bodies["https"])
    ref.pop("stream", None)
    ref_bytes = orjson.dumps(ref)
    out: dict[str, dict[str, Any]] = {}
    for name, raw in bodies.items():
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[name] = {
                "identical": False,
                "bytes": len(raw),
                "note": f"binary protobuf, {len(raw)} B vs {len(ref_bytes)} B of JSON",
            }
            continue
        extra = "stream" if name == "https" else "type"
        obj.pop(extra, None)
        same = orjson.dumps(obj) == ref_bytes
        out[name] = {
            "identical": same,
            "bytes": len(raw),
            "note": f"same JSON bytes plus the `{extra}` member" if same else "JSON differs",
        }
    return out


def migration_report(root: Path = ROOT, runtime: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the migration section shows, as JSON-able data (``runtime``: from :func:`measure_recovery`,
    None when it was not measured)."""
    identity = body_identity(wire_bodies())
    clients = []
    for t in MIGRATED:
        cost = client_cost(t, root)
        cost["body"] = identity.get(t, {})
        clients.append(cost)
    _, agent_project = reachable_imports(root, "clients/agent.py")
    transport_mods = {m for m in agent_project if m.endswith(("_client", "_server"))}
    return {
        "agent_loop": {
            "file": "clients/agent.py",
            "lines_changed": 0,
            "transport_modules_imported": sorted(transport_mods),
        },
        "clients": clients,
        "sdk": sdk_cost(root),
        "runtime": dict(runtime) if runtime else None,
    }


# ------------------------------------------------------------------------------------------------ runtime


class _DropOnce(ResponsesClient):
    """Wraps a client; before call ``drop_at`` (0-based) it closes the connection under the loop, so that
    turn fails with ``connection_closed`` and the agent loop's recovery runs, as after a real drop."""

    transport: ClassVar[str] = "migration-probe"

    def __init__(self, inner: ResponsesClient, drop_at: int) -> None:
        super().__init__(inner.config)
        self.inner, self.drop_at, self.calls = inner, drop_at, 0

    async def connect(self) -> float | None:
        return await self.inner.connect()

    async def reconnect(self) -> float | None:
        return await self.inner.reconnect()

    async def close(self) -> None:
        await self.inner.close()

    async def create(self, body: dict[str, Any], *, recorder: TurnRecorder) -> dict[str, Any]:
        self.calls += 1
        if self.calls == self.drop_at + 1:
            await self.inner.close()  # the server sees the connection go, and its cache with it
            recorder.sent(0)
            recorder.fail("connection dropped by the migration probe", "connection_closed")
            return {}
        return await self.inner.create(body, recorder=recorder)


STRATEGIES = {
    "store": "reconnect + hydrate from the store (store=true)",
    "connection": "reconnect + resend the full context (store=false)",
}


async def measure_recovery(
    transport: str = "ws",
    *,
    profile: str = "fast",
    rollouts: int = 3,
    drop_at: int = 10,
    tool_calls: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Drop the connection before turn ``drop_at`` of ``tool_calls``-call rollouts and recover, per strategy
    (:data:`STRATEGIES`), interleaved with undisturbed rollouts on one in-process server.

    Returns: per strategy the median extra rollout time (ms, and the disturbed/undisturbed ratio with its
    95% CI), the loop's ``recovery_ms`` (reconnect + failed turn), and the resumed turn's ``turn_ms`` and
    ``bytes_up`` against the same turn undisturbed; the raw rows under ``samples``.
    """
    settings = Settings(profile=profile, tls=transport != "inproc", usage_db=":memory:")
    server = None
    if transport == "inproc":
        service = ResponsesService(settings)
        config = ClientConfig(url="inproc", options={"service": service})
    else:
        server = await start_server(transport, settings)
        service = server.service
        config = ClientConfig(
            url=server.url,
            ssl_context=server.tls.client_ssl_context() if server.tls else None,
            ca_pem=server.tls.ca_pem_bytes if server.tls else None,
        )
    toolbox = Toolbox(seed=seed)
    meta = {"tool_calls": str(tool_calls), "seed": str(seed), "answer_tokens": "16"}
    rows: list[dict[str, Any]] = []
    try:
        for i in range(rollouts):
            for state in STRATEGIES:
                for dropped in (False, True):
                    async with _DropOnce(make_client(transport, config), drop_at if dropped else -1) as client:
                        r = await run_rollout(
                            client,
                            state=state,
                            toolbox=toolbox,
                            metadata=meta,
                            rollout_id=i,
                            transport=transport,
                            task=f"[{state}:{dropped:d}:{i}] {TASK}",
                        )
                    resumed = (
                        r.turns[drop_at + 1]
                        if dropped and len(r.turns) > drop_at + 1
                        else (r.turns[drop_at] if len(r.turns) > drop_at else None)
                    )
                    rows.append(
                        {
                            "state": state,
                            "dropped": dropped,
                            "success": r.success,
                            "rollout_ms": r.rollout_ms,
                            "recovery_ms": r.recovery_ms,
                            "recoveries": r.recoveries,
                            "resumed_turn_ms": resumed.turn_ms if resumed else None,
                            "resumed_bytes_up": resumed.bytes_up if resumed else None,
                        }
                    )
    finally:
        if server is not None:
            await server.stop()
        service.close()
    return {
        "transport": transport,
        "profile": profile,
        "drop_at": drop_at,
        "tool_calls": tool_calls,
        "rollouts": rollouts,
        "strategies": _recovery_summary(rows),
        "samples": rows,
    }


def _med(df: pd.DataFrame, col: str) -> float:
    return float(np.nanmedian(df[col].astype(float))) if len(df) else float("nan")


def _recovery_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    df = pd.DataFrame(rows)
    out = []
    for state, text in STRATEGIES.items():
        on = df[(df["state"] == state) & df["success"]]
        base, hit = on[~on["dropped"]], on[on["dropped"]]
        ratio, lo, hi = ratio_ci(hit["rollout_ms"], base["rollout_ms"])
        out.append(
            {
                "strategy": text,
                "ok": f"{len(hit)}/{int((df['state'] == state).sum() // 2)}",
                "extra_rollout_ms": _med(hit, "rollout_ms") - _med(base, "rollout_ms"),
                "ratio": ratio,
                "ratio_lo": lo,
                "ratio_hi": hi,
                "recovery_ms": _med(hit, "recovery_ms"),
                **{
                    f"{k} {w}": _med(d, k)
                    for k in ("resumed_turn_ms", "resumed_bytes_up")
                    for w, d in (("dropped", hit), ("undisturbed", base))
                },
            }
        )
    return out


def cmd_migration(args: Any) -> int:
    """``turnbench migration [--runtime] [--json OUT]``: print the migration-cost tables (Markdown)."""
    import asyncio
    import tempfile

    from loadtests.present.doc import Doc
    from loadtests.report.render import add_migration_section
    from loadtests.runs.rundir import write_json

    runtime = asyncio.run(measure_recovery(args.transport, rollouts=args.rollouts)) if args.runtime else None
    data = migration_report(runtime=runtime)
    d = Doc("turnbench migration cost")
    add_migration_section(d, data)
    print(d.markdown(Path(tempfile.gettempdir())))
    if args.json is not None:
        write_json(args.json, data)
    return 0
