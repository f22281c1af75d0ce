"""The proto is self-contained: a client generated from ``protos/`` alone, in a fresh folder, calls a server
started from the command line (``python -m servers grpc --no-tls --port 0``), both in subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CLIENT = r"""
import json, queue, sys
sys.path.insert(0, sys.argv[1])
import grpc
from turnbench.v1 import responses_pb2 as pb, responses_pb2_grpc
import turnbench
assert list(turnbench.__path__) == [sys.argv[1] + "/turnbench"], turnbench.__path__  # only generated code

out = {"module": pb.__file__}
channel = grpc.insecure_channel(sys.argv[2])
stub = responses_pb2_grpc.ResponsesStub(channel)
tool = pb.FunctionTool(name="lookup", parameters='{"type":"object","properties":{"q":{"type":"string"}}}')
meta = {"tool_calls": "1", "answer_tokens": "4", "seed": "3"}

events = list(stub.Create(pb.CreateRequest(model="m", text="hi", tools=[tool], metadata=meta)))
out["create"] = [e.WhichOneof("event") for e in events]

requests = queue.Queue()
requests.put(pb.ClientEvent(create=pb.CreateRequest(model="m", text="hi", tools=[tool], store=False,
                                                    metadata=meta)))
turns = []
for ev in stub.Connect(iter(requests.get, None)):
    if ev.WhichOneof("event") != "completed":
        continue
    resp = ev.completed.response
    turns.append([resp.turnbench.state, resp.output[-1].WhichOneof("item")])
    if len(turns) == 1:
        call = resp.output[-1].function_call
        requests.put(pb.ClientEvent(create=pb.CreateRequest(
            model="m", previous_response_id=resp.id, store=False, tools=[tool], metadata=meta,
            items=pb.InputItems(items=[pb.InputItem(function_call_output=pb.FunctionCallOutput(
                call_id=call.call_id, text="42"))]))))
    else:
        requests.put(None)
out["connect"] = turns
print(json.dumps(out))
"""


@pytest.fixture
def server_port() -> Iterator[int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "servers", "grpc", "--no-tls", "--port", "0", "--profile", "instant"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("PORT="):
                port = int(line.split("=", 1)[1])
                break
        else:
            raise AssertionError(f"server exited ({proc.wait()}) without printing PORT=")
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0  # SIGTERM drains and exits cleanly
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def test_client_generated_from_the_proto_alone_calls_the_server(tmp_path: Path, server_port: int) -> None:
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    gen = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            "protos",
            "--python_out=.",
            "--grpc_python_out=.",
            "protos/turnbench/v1/responses.proto",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert gen.returncode == 0, gen.stderr
    assert (tmp_path / "turnbench/v1/responses_pb2_grpc.py").exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run = subprocess.run(
        [sys.executable, "-I", "-c", CLIENT, str(tmp_path), f"127.0.0.1:{server_port}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["module"].startswith(str(tmp_path))
    assert out["create"][:2] == ["created", "in_progress"] and out["create"][-1] == "completed"
    assert "function_call_arguments_delta" in out["create"]
    assert out["connect"] == [["full", "function_call"], ["connection", "message"]]
