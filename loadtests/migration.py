"""Migration cost, computed from the code (DESIGN §7), and the runtime cost of losing a connection mid-rollout.

Static part, for each transport client against ``clients/https_client.py`` (the agent loop is
``clients/agent.py`` for all of them, so it changes by zero lines by construction):

- lines a client must write or delete: :mod:`difflib` over *normalized* source (comments, docstrings and
  blank lines removed with :mod:`tokenize`/:mod:`ast`, indentation stripped);
- schema artefacts: ``.proto`` lines under ``protos/``, generated lines in ``turnbench/v1/*_pb2*.py``, and
  whether a codegen step is needed (the client imports generated code);
- new dependencies: third-party imports reachable from the client module (following imports into the
  project), mapped to distributions with :func:`importlib.metadata.packages_distributions`, minus HTTPS's;
- whether the request body stays byte-identical on the wire (:func:`wire_bodies`);
- the same line count for a user of the official SDK: ``examples/sdk_http_loop.py`` →
  ``examples/sdk_ws_loop.py`` (``client.responses.create(stream=True)`` → ``client.responses.connect()``).

The runtime part is measured by :func:`loadtests.bench.measure_recovery` and rendered here.
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
from typing import Any

import orjson

from loadtests.plots import Doc, round_frame

__all__ = ["ROOT", "client_cost", "diff_counts", "migration_report", "normalized_lines", "wire_bodies"]

ROOT = Path(__file__).resolve().parent.parent
CLIENT_FILES = {"https": "clients/https_client.py", "ws": "clients/ws_client.py",
                "grpc": "clients/grpc_client.py", "grpc-json": "clients/grpc_client.py",
                "sdk": "clients/sdk_client.py"}
SDK_EXAMPLES = ("loadtests/examples/sdk_http_loop.py", "loadtests/examples/sdk_ws_loop.py")
PROJECT_PACKAGES = frozenset({"turnbench", "servers", "clients", "loadtests"})
SAMPLE_BODY: dict[str, Any] = {
    "model": "turnbench-sim", "previous_response_id": "resp_0123456789abcdef",
    "input": [{"type": "function_call_output", "call_id": "call_0_0_0badf00d", "output": "12 lines, 80 words"}],
    "tools": [{"type": "function", "name": "word_count", "description": "Count lines, words, bytes of a file.",
               "parameters": {"type": "object", "properties": {"path": {"type": "string"}},
                              "required": ["path"]}}],
    "store": False, "metadata": {"tool_calls": "20"},
}
"""A continuation turn as the agent loop sends it: what the byte-identity check encodes."""


def normalized_lines(source: str) -> list[str]:
    """Source lines without comments, docstrings (any bare string statement), blank lines or indentation."""
    tree = ast.parse(source)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)):
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
    """What moving from the HTTPS client to ``transport``'s client takes, measured on the files in ``root``."""
    rel, base = CLIENT_FILES[transport], CLIENT_FILES["https"]
    if not (root / rel).is_file() or not (root / base).is_file():
        missing = rel if not (root / rel).is_file() else base
        return {"transport": transport, "built": False, "note": f"not built ({missing} missing)"}
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
    return {"transport": transport, "built": True, "file": rel, **counts, "codegen": codegen, **art,
            "support_lines": sum(extra.values()), "support_modules": extra,
            "new_dependencies": distributions(third - base_third)}


def sdk_cost(root: Path = ROOT) -> dict[str, Any]:
    """Lines an official-SDK user changes to go from ``responses.create(stream=True)`` to
    ``responses.connect()`` (the two example loops)."""
    http, ws = (root / p for p in SDK_EXAMPLES)
    if not http.is_file() or not ws.is_file():
        return {"built": False, "note": "SDK examples missing"}
    return {"built": True, "files": list(SDK_EXAMPLES),
            **diff_counts(normalized_lines(http.read_text()), normalized_lines(ws.read_text()))}


def wire_bodies(body: Mapping[str, Any] = SAMPLE_BODY) -> dict[str, bytes | None]:
    """The request of one turn as each client puts it on the wire (mirroring ``clients/*_client.py``): JSON
    for ``https`` (``stream`` added), ``ws`` and ``grpc-json`` (``type`` added), protobuf for ``grpc``
    (None when the converter is not built)."""
    out: dict[str, bytes | None] = {"https": orjson.dumps({**body, "stream": True}),
                                    "ws": orjson.dumps({"type": "response.create", **body})}
    out["grpc"] = grpc_request_bytes(dict(body))
    out["grpc-json"] = out["ws"]  # the json codec sends the WebSocket frame as the message
    return out


def body_identity(bodies: Mapping[str, bytes | None]) -> dict[str, dict[str, Any]]:
    """Per transport: is the body byte-identical to the HTTPS body once the transport-only member
    (``stream`` on HTTPS, ``type`` on WS) is taken out? Also the sizes in bytes."""
    ref = orjson.loads(bodies["https"] or b"{}")
    ref.pop("stream", None)
    ref_bytes = orjson.dumps(ref)
    out: dict[str, dict[str, Any]] = {}
    for name, raw in bodies.items():
        if raw is None:
            out[name] = {"identical": None, "bytes": None, "note": "not built"}
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[name] = {"identical": False, "bytes": len(raw),
                         "note": f"binary protobuf, {len(raw)} B vs {len(ref_bytes)} B of JSON"}
            continue
        extra = "stream" if name == "https" else "type"
        obj.pop(extra, None)
        same = orjson.dumps(obj) == ref_bytes
        out[name] = {"identical": same, "bytes": len(raw),
                     "note": f"same JSON bytes plus the `{extra}` member" if same else "JSON differs"}
    return out


def migration_report(root: Path = ROOT, runtime: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything the migration section shows, as JSON-able data (``runtime``: from :func:`measure_recovery`)."""
    identity = body_identity(wire_bodies())
    clients = []
    for t in ("ws", "grpc", "grpc-json"):
        cost = client_cost(t, root)
        cost["body"] = identity.get(t, {})
        clients.append(cost)
    _, agent_project = reachable_imports(root, "clients/agent.py")
    transport_mods = {m for m in agent_project if m.endswith(("_client", "_server"))}
    return {"agent_loop": {"file": "clients/agent.py", "lines_changed": 0,
                           "transport_modules_imported": sorted(transport_mods)},
            "clients": clients, "sdk": sdk_cost(root), "runtime": dict(runtime) if runtime else None}


def _yn(v: Any) -> str:
    return "n/a" if v is None else ("yes" if v else "no")


def add_migration_section(d: Doc, data: Mapping[str, Any]) -> None:
    """The report's migration-cost section (tables from :func:`migration_report`)."""
    import pandas as pd

    d.h2("Migration cost (computed from the code)")
    d.p("Lines are normalized source lines (no comments, docstrings, blank lines). *written* = lines of the "
        "new client not found in `clients/https_client.py` (added or changed); the agent loop "
        f"(`{data['agent_loop']['file']}`) is shared by every transport and changes by 0 lines.")
    rows = []
    for c in data["clients"]:
        if not c.get("built"):
            rows.append({"transport": c["transport"], "client lines written": c.get("note", "not built")})
            continue
        body = c.get("body", {})
        rows.append({"transport": c["transport"], "client lines written": c["written"], "deleted": c["deleted"],
                     "kept": c["kept"], "+ support modules": c.get("support_lines", 0),
                     "codegen step": _yn(c["codegen"]), "proto lines": c["proto_lines"],
                     "generated lines": c["generated_lines"],
                     "new dependencies": ", ".join(c["new_dependencies"]) or "none",
                     "body byte-identical": f"{_yn(body.get('identical'))} ({body.get('note', '')})"})
    d.table(pd.DataFrame(rows).astype(object).fillna(""))
    support: dict[str, list[str]] = {}  # one paragraph per distinct module list (grpc and grpc-json share)
    for c in data["clients"]:
        if c.get("support_modules"):
            mods = ", ".join(f"`{k}` ({v})" for k, v in c["support_modules"].items())
            support.setdefault(mods, []).append(f"`{c['transport']}`")
    for mods, names in support.items():
        d.p(f"{' and '.join(names)} also import hand-written modules the HTTPS client does not: {mods} "
            "normalized lines.")
    sdk = data.get("sdk") or {}
    if sdk.get("built"):
        d.p(f"Official SDK user (`{sdk['files'][0]}` → `{sdk['files'][1]}`): **{sdk['written']} lines written, "
            f"{sdk['deleted']} deleted**, {sdk['kept']} kept of {sdk['old']}.")
    _runtime_section(d, data.get("runtime"))


# ------------------------------------------------------------------------------------------------ runtime


def grpc_request_bytes(body: dict[str, Any]) -> bytes | None:
    """The protobuf ``CreateRequest`` bytes the typed gRPC client sends for ``body``; None if not built."""
    try:
        from turnbench.v1.convert import body_to_proto
    except ImportError:
        return None
    return bytes(body_to_proto(body).SerializeToString())


def _runtime_section(d: Doc, runtime: Mapping[str, Any] | None) -> None:
    import pandas as pd

    d.p("**Runtime cost of migrating mid-rollout** (the connection drops, the loop reconnects and continues):")
    if not runtime:
        d.p("*Not measured in this run (`turnbench migration --runtime` measures it).*")
        return
    if not runtime.get("built"):
        d.p(f"*{runtime.get('transport')}: {runtime.get('note', 'not built')}.*")
        return
    d.p(f"`{runtime['transport']}` at `{runtime['profile']}`, {runtime['tool_calls']}-tool-call rollouts, connection "
        f"dropped before turn {runtime['drop_at']}, {runtime['rollouts']} rollouts per strategy, each interleaved "
        "with an undisturbed one. *recovery* = reconnect + the failed turn; the resumed turn pays the rest.")
    table = pd.DataFrame(runtime["strategies"])
    table["ratio [95% CI]"] = [f"{r:.3f} [{lo:.3f}, {hi:.3f}]" for r, lo, hi in
                               zip(table.pop("ratio"), table.pop("ratio_lo"), table.pop("ratio_hi"), strict=True)]
    d.table(round_frame(table))


def cmd_migration(args: Any) -> int:
    """``turnbench migration [--runtime] [--json OUT]``: print the migration-cost tables (Markdown)."""
    import asyncio
    import json
    import tempfile

    from loadtests.bench import measure_recovery

    runtime = asyncio.run(measure_recovery(args.transport, rollouts=args.rollouts)) if args.runtime else None
    data = migration_report(runtime=runtime)
    d = Doc("turnbench migration cost")
    add_migration_section(d, data)
    print(d.markdown(Path(tempfile.gettempdir())))
    if args.json is not None:
        args.json.write_text(json.dumps(data, indent=2, default=str))
    return 0
