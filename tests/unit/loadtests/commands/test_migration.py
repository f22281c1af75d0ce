"""Migration cost is computed from the code: the counters react to the files they read, and the runtime
probe really drops a connection and recovers (in process, no sockets)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtests.cli import main
from loadtests.commands import migration
from loadtests.commands.migration import STRATEGIES, measure_recovery

SOURCE = '''"""Module docstring."""
import os  # a comment


def f(x):
    """Docstring of f."""
    # a whole-line comment

    return os.sep + x  # trailing
'''


def test_normalized_lines_drop_comments_docstrings_blank_lines() -> None:
    assert migration.normalized_lines(SOURCE) == ["import os", "def f(x):", "return os.sep + x"]


def test_diff_counts() -> None:
    old, new = ["a", "b", "c"], ["a", "x", "c", "d"]
    assert migration.diff_counts(old, new) == {"old": 3, "new": 4, "kept": 2, "written": 2, "deleted": 1}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the clients, the examples and the proto/generated files, to edit."""
    for rel in ("clients", "loadtests/examples", "protos", "turnbench"):
        src = migration.ROOT / rel
        if src.exists():
            shutil.copytree(src, tmp_path / rel, ignore=shutil.ignore_patterns("__pycache__", "data"))
    return tmp_path


def test_counts_come_from_the_files(tree: Path) -> None:
    before = migration.client_cost("ws", tree)
    assert before["file"] == "clients/ws_client.py"  # the transport table names the client file
    assert before["new_dependencies"] == ["websockets"] and not before["codegen"]
    ws = tree / "clients" / "ws_client.py"
    ws.write_text(ws.read_text() + "\n\nEXTRA_SETTING = 1  # one more line a user writes\n")
    after = migration.client_cost("ws", tree)
    assert after["written"] == before["written"] + 1 and after["deleted"] == before["deleted"]
    ws.write_text(ws.read_text() + '\n"""a docstring is not code"""\n# nor a comment\n')
    assert migration.client_cost("ws", tree)["written"] == after["written"]


def test_new_dependencies_follow_imports(tree: Path) -> None:
    ws = tree / "clients" / "ws_client.py"
    ws.write_text(ws.read_text() + "\nimport yaml_not_installed_anywhere\n")
    deps = migration.client_cost("ws", tree)["new_dependencies"]
    assert "yaml_not_installed_anywhere" in deps and "websockets" in deps


def test_grpc_needs_codegen_and_schema(tree: Path) -> None:
    cost = migration.client_cost("grpc", tree)
    assert cost["codegen"] and cost["proto_lines"] > 0 and cost["generated_lines"] > 0
    assert {"grpcio", "protobuf"} <= set(cost["new_dependencies"])
    proto = next((tree / "protos").rglob("*.proto"))
    proto.write_text(proto.read_text() + "\nmessage Extra { string x = 1; }\n// a comment\n\n")
    assert migration.client_cost("grpc", tree)["proto_lines"] == cost["proto_lines"] + 1


def test_sdk_diff_is_counted_from_the_examples(tree: Path) -> None:
    before = migration.sdk_cost(tree)
    assert 0 < before["written"] < before["new"]
    ws = tree / migration.SDK_EXAMPLES[1]
    ws.write_text(ws.read_text().replace("store=False,", "store=False, max_output_tokens=99,"))
    assert migration.sdk_cost(tree)["written"] == before["written"]  # that line already differed from HTTP
    ws.write_text(ws.read_text() + "\nX = 1\n")
    assert migration.sdk_cost(tree)["written"] == before["written"] + 1


def test_body_identity() -> None:
    bodies = migration.wire_bodies()
    ident = migration.body_identity(bodies)
    assert ident["https"]["identical"] and ident["ws"]["identical"]
    assert orjson.loads(bodies["ws"] or b"")["type"] == "response.create"
    assert ident["grpc"]["identical"] is False and "protobuf" in ident["grpc"]["note"]
    assert ident["grpc-json"]["identical"]
    broken = {**bodies, "ws": orjson.dumps({"type": "response.create", "model": "other"})}
    assert migration.body_identity(broken)["ws"]["identical"] is False


def test_migration_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["migration", "--json", str(tmp_path / "m.json")]) == 0
    out = capsys.readouterr().out
    assert "## Migration cost" in out and "Official SDK user" in out
    data = orjson.loads((tmp_path / "m.json").read_bytes())
    assert [c["transport"] for c in data["clients"]] == ["ws", "grpc", "grpc-json", "ws-long"]
    assert data["runtime"] is None and "not measured" in out.lower()


async def test_recovery_after_a_dropped_connection_inproc() -> None:
    result = await measure_recovery("inproc", profile="instant", rollouts=1, drop_at=2, tool_calls=4)
    dropped = [s for s in result["samples"] if s["dropped"]]
    assert all(s["success"] and s["recoveries"] == 1 for s in dropped)
    assert all(s["recoveries"] == 0 for s in result["samples"] if not s["dropped"])
    by = {s["state"]: s for s in dropped}
    # a full resend carries the whole history; store hydration only the new item
    assert by["connection"]["resumed_bytes_up"] > by["store"]["resumed_bytes_up"]
    assert [row["strategy"] for row in result["strategies"]] == list(STRATEGIES.values())


@pytest.mark.parametrize(("transport", "module"), [("https", "sdk_http_loop"), ("ws", "sdk_ws_loop")])
async def test_sdk_examples_run_against_the_servers(serve: Any, transport: str, module: str) -> None:
    """The two SDK loops the migration diff counts are working code, not prose."""
    import asyncio
    import importlib

    server = await serve(transport, tls=False)
    agent = importlib.import_module(f"loadtests.examples.{module}").agent
    base_url = server.url.replace("ws://", "http://")
    answer = await asyncio.wait_for(asyncio.to_thread(agent, base_url), 60)
    assert isinstance(answer, str) and answer.endswith(".")
