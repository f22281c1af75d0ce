"""Regenerate (or check) the committed protobuf/gRPC code from ``protos/turnbench/v1/responses.proto``.

``python -m turnbench.v1.codegen`` writes ``responses_pb2.py``, ``responses_pb2.pyi`` and
``responses_pb2_grpc.py`` under ``turnbench/v1/`` (``make proto`` runs exactly this). The stubs come from
mypy-protobuf (``--mypy_out``), not protoc's ``--pyi_out``, whose bare ``Mapping`` annotations fail
``mypy --strict`` in every module that imports the messages. The proto sits under a
folder that mirrors its import path, so protoc run with ``-I protos`` from the repository root emits
``from turnbench.v1 import responses_pb2`` imports. ``--check`` generates into a temporary folder and exits 1
if anything differs from what is committed; ``--out DIR`` writes elsewhere (the tree ``turnbench/v1/...`` is
created under ``DIR``).
"""

from __future__ import annotations

import argparse
import difflib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
PROTO = Path("turnbench/v1/responses.proto")
GENERATED = ("responses_pb2.py", "responses_pb2.pyi", "responses_pb2_grpc.py")


def generate(out: Path) -> list[Path]:
    """Run grpc_tools.protoc for the proto into ``out``.

    Returns: the generated files, under ``out / "turnbench/v1"``.
    Raises: ``RuntimeError`` if protoc fails.
    """
    import grpc_tools
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    plugin = shutil.which("protoc-gen-mypy") or shutil.which("protoc-gen-mypy", path=str(Path(sys.executable).parent))
    if plugin is None:
        raise RuntimeError("protoc-gen-mypy not found: install the dev extras (mypy-protobuf)")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={plugin}",
        f"--python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--grpc_python_out={out}",
        str(PROTO_ROOT / PROTO),
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise RuntimeError(f"protoc failed with exit status {rc}: {' '.join(args)}")
    return [out / PROTO.parent / name for name in GENERATED]


def check() -> list[str]:
    """Generate into a temporary folder and diff against the committed files.

    Returns: one unified diff (or "missing" line) per file that differs; empty when all match.
    """
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="turnbench-codegen-") as tmp:
        for fresh in generate(Path(tmp)):
            committed = ROOT / PROTO.parent / fresh.name
            if not committed.exists():
                problems.append(f"{committed.relative_to(ROOT)}: missing (run `make proto`)")
                continue
            want, have = fresh.read_text(), committed.read_text()
            if want != have:
                diff = difflib.unified_diff(
                    have.splitlines(keepends=True),
                    want.splitlines(keepends=True),
                    fromfile=f"committed/{fresh.name}",
                    tofile=f"generated/{fresh.name}",
                    n=1,
                )
                problems.append("".join(list(diff)[:40]))
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m turnbench.v1.codegen", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository root)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed code is stale")
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        print("generated code is up to date" if not problems else "generated code is STALE: run `make proto`")
        return 1 if problems else 0
    for path in generate(args.out):
        print(os.path.relpath(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
