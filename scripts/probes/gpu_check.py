#!/usr/bin/env python3
"""The GPU check of the ``torch`` engine: one script, run once on a device machine, JSON to ``--out``.

Parts, in this order, each in its own process (its own process group) with a time limit cut from one budget
(``--budget-s``), so that a slow compile or an out-of-memory costs that part only; each part's results are
merged into ``summary.json`` as they arrive, and a part that runs out of time keeps what it measured:

1. ``model:cuda-1b`` — **decode at batch 1** (context 1024, 256 tokens): ``served_tok_s`` (through the engine:
   scheduler, event loop, device-synchronised delivery), ``step_tok_s`` (the same decode step replayed back
   to back, device time; as the decode anchor was timed: a captured CUDA graph) and the memory-bandwidth
   limit ``4.8 TB/s / weight bytes``; then the **calibration** (full vs incremental prefill at 1k, 8k and 32k
   context, decode by context; writes ``calibrated-cuda-1b.json``, a sim profile for ``--profile file:…``);
   then **batching**: 1 vs 4 concurrent decodes, the batched step vs the dynamic path (interleaved).
2. ``transports`` — ``turnbench run`` starts the https, ws and grpc servers with the torch engine
   (cuda-1b) and runs ``agent-20`` over them, states full and connection, with cache reuse (prefix cache and
   the connection's KV on) and without (``prefix_cache=false``: every turn recomputes its whole context);
   per cell TTFT, turn and rollout time and the server's prefill/decode stage times (``transports-*.json``
   hold the runs' summaries).
3. ``model:cuda-8b`` (decode and calibration) and ``model:cuda-0.2b`` (decode).
4. ``compare:cuda-1b`` — the same decode without ``torch.compile`` (graph of eager kernels), on the dynamic
   path (a forward per token: the engine before this issue), and compiled with max-autotune.

Files in ``--out`` (at most 8, as the device tool returns): ``summary.json``, ``log.txt``,
``calibrated-<config>.json``, ``transports-reuse.json``, ``transports-no-reuse.json``. The last lines printed
are a short table.

    bash scripts/gpu_transport_check.sh                       # on the device machine (wheels installed first)
    .venv/bin/python scripts/probes/gpu_check.py --device cpu --quick --out /tmp/gpu_check    # CPU dry run, ~3 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run from a checkout, installed or not

HBM_TB_S = 4.8  # H200 datasheet bandwidth: the anchors' limit uses the same figure
CUDA_PARTS = ("model:cuda-1b", "transports", "model:cuda-8b", "model:cuda-0.2b", "compare:cuda-1b")
CPU_PARTS = ("model:cpu-tiny", "transports", "compare:cpu-tiny")
MIN_PART_S = 30  # a part is not started with less time left


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"), help="default $OUT")
    p.add_argument("--budget-s", type=float, default=540.0, help="all parts together, seconds (default 540)")
    p.add_argument("--parts", default=None, help="comma-separated parts to run (default: all, in order)")
    p.add_argument(
        "--compile", default="auto", help="torch.compile mode of the decode step (auto|none|default|max-autotune)"
    )
    p.add_argument("--scenario", default=None, help="transports: scenario (default agent-20; --quick: agent-5)")
    p.add_argument("--rollouts", type=int, default=None, help="transports: measured rollouts per cell (default 3)")
    p.add_argument("--quick", action="store_true", help="small sizes: the CPU dry run")
    p.add_argument("--part", default=None, help=argparse.SUPPRESS)  # child: run this part here
    p.add_argument("--part-out", type=Path, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.device == "auto":
        import torch

        a.device = "cuda" if torch.cuda.is_available() else "cpu"
    a.scenario = a.scenario or ("agent-5" if a.quick else "agent-20")
    a.rollouts = a.rollouts or (1 if a.quick else 3)
    return a


# ------------------------------------------------------------------------------------------ measurements


def ids(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(1, vocab) for _ in range(n)]


def step_only(e: Any, kv: Any, n: int) -> dict[str, float]:
    """On the engine's worker: ``n`` decode steps of one conversation back to back, device time (no scheduler,
    no event loop): the static step (graph replays on CUDA), or the dynamic forward per token. The same
    ``n`` steps run once untimed first, so every key length they cross is compiled and captured."""
    import torch

    state = kv.payload
    with torch.inference_mode():
        seconds = 0.0
        for timed in (False, True):
            if e.decoder is None:
                e._reserve(state, len(state.ids) + n)
                tok = torch.ones(1, dtype=torch.long, device=e.device)
                e._sync()
                t0 = time.perf_counter()
                for i in range(n):  # writes past the conversation's ids: never read, overwritten later
                    e.model(tok, state.kv, len(state.ids) + i)
            else:
                dec = e.decoder
                dec.load(0, state.kv, state.ids, [1] * n)
                e._sync()
                t0 = time.perf_counter()
                for _ in range(n):
                    dec.step([1])
            e._sync()
            seconds = time.perf_counter() - t0 if timed else 0.0
    return {"step_tok_s": round(n / seconds, 1), "step_ms": round(seconds / n * 1e3, 4)}


async def decode_probe(e: Any, ctx: int, n: int) -> dict[str, Any]:
    """Batch-1 decode of ``n`` tokens onto a ``ctx``-token conversation: served and step-only, vs the limit."""
    rng = random.Random(ctx)
    kv = (await e.prefill(ids(rng, ctx, e.vocab), None, use_cache=False)).kv
    t0 = time.perf_counter()
    async for _ in e.decode(kv, [(t, "") for t in ids(rng, 8, e.vocab)], tokens_per_chunk=1):
        pass  # warm-up: compile and capture at this length
    first_s = time.perf_counter() - t0
    pieces = [(t, "") for t in ids(rng, n, e.vocab)]
    device_ms = 0.0
    t0 = time.perf_counter()
    async for chunk in e.decode(kv, pieces, tokens_per_chunk=1):
        device_ms += chunk.device_ms
    wall = time.perf_counter() - t0
    step = await e.on_worker(step_only, e, kv, n)
    limit = HBM_TB_S * 1e12 / e.weight_bytes
    return {
        "context": ctx,
        "tokens": n,
        "served_tok_s": round(n / wall, 1),
        "device_tok_s": round(n / (device_ms / 1e3), 1) if device_ms else None,
        **step,
        "bandwidth_limit_tok_s": round(limit, 0),
        "step_vs_limit": round(step["step_tok_s"] / limit, 3),
        "served_vs_limit": round(n / wall / limit, 3),
        "effective_tb_s": round(step["step_tok_s"] * e.weight_bytes / 1e12, 2),
        "first_decode_s": round(first_s, 2),  # includes compile and graph capture
        "graph_captures": e.stats.extra.get("decode_graph_captures"),
        "compile_failed": bool(e.stats.extra.get("decode_compile_failed")),
    }


async def batching_probe(e: Any, ctx: int, n: int, concurrency: tuple[int, ...] = (1, 4)) -> list[dict[str, Any]]:
    """Aggregate and per-request tok/s of ``c`` concurrent decodes (each its own conversation)."""
    rows = []
    for c in concurrency:
        rng = random.Random(1000 + c)
        kvs = [(await e.prefill(ids(rng, ctx, e.vocab), None, use_cache=False)).kv for _ in range(c)]

        async def one(kv: Any, k: int, rng: random.Random = rng) -> float:
            t0 = time.perf_counter()
            async for _ in e.decode(kv, [(t, "") for t in ids(rng, k, e.vocab)], tokens_per_chunk=1):
                pass
            return time.perf_counter() - t0

        await asyncio.gather(*(one(kv, 4) for kv in kvs))  # warm-up: graphs of these batch sizes
        x = e.stats.extra
        steps0, rows0 = x.get("decode_steps", 0.0), x.get("decode_rows", 0.0)
        t0 = time.perf_counter()
        walls = await asyncio.gather(*(one(kv, n) for kv in kvs))
        wall = time.perf_counter() - t0
        steps = x["decode_steps"] - steps0
        rows.append(
            {
                "decode": e.decode_mode,
                "concurrent": c,
                "tokens_each": n,
                "aggregate_tok_s": round(c * n / wall, 1),
                "per_request_tok_s": [round(n / w, 1) for w in walls],
                "mean_rows_per_step": round((x["decode_rows"] - rows0) / steps, 2) if steps else None,
            }
        )
        del kvs
    return rows


def engine_settings(a: argparse.Namespace, config: str) -> Any:
    from turnbench.settings import Settings

    return Settings(engine="torch", device=a.device, torch_config=config, torch_compile=a.compile, usage_db=":memory:")


class Part:
    """A part's results, rewritten to ``--part-out`` after every step (a killed part keeps what it got)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, Any] = {}

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        print(f"# {key}: {json.dumps(value)[:2000]}", flush=True)
        if self.path is not None:
            self.path.write_text(json.dumps(self.data, indent=1))


async def part_model(a: argparse.Namespace, config: str, out: Part) -> None:
    """Decode at batch 1; then (1B, 8B, the CPU config) the calibration; then (1B, CPU) batching."""
    from turnbench.engine.calibrate import document, engine_info, measure
    from turnbench.engine.torch_engine import TorchEngine

    e = TorchEngine(engine_settings(a, config))
    try:
        out.put("engine", engine_info(e) | {"weight_gb": round(e.weight_bytes / 1e9, 3)})
        out.put("decode", await decode_probe(e, 128 if a.quick else 1024, 16 if a.quick else 256))
        if config in ("cuda-1b", "cuda-8b", "cpu-tiny"):
            contexts = [64, 256] if a.quick else ([1024, 8192, 32768] if a.device == "cuda" else [256, 1024, 2048])
            rows = await measure(
                e, contexts, [32 if a.quick else 256], 8 if a.quick else 64, 1 if a.quick else 3, vocab=e.vocab
            )
            doc = document(rows, engine_info(e), name=f"{'h200' if a.device == 'cuda' else 'cpu'}-{config}")
            (a.out / f"calibrated-{config}.json").write_text(json.dumps(doc, indent=1) + "\n")
            out.put("calibration", {"rows": rows, "profile": doc["profile"], "fit": doc["fit"]})
        if config in ("cuda-1b", "cpu-tiny"):
            ctx, n = (128, 16) if a.quick else (1024, 128)
            got = await batching_probe(e, ctx, n)
            out.put("stats", dict(e.stats.extra))
            e.close()
            e = TorchEngine(engine_settings(a, config), decode="dynamic")
            out.put("batching", got + await batching_probe(e, ctx, n))
        else:
            out.put("stats", dict(e.stats.extra))
    finally:
        e.close()


async def part_compare(a: argparse.Namespace, config: str, out: Part) -> None:
    """The same batch-1 decode without torch.compile, on the dynamic path, and (CPU, not quick) compiled."""
    from turnbench.engine.torch_engine import TorchEngine

    ctx, n = (256, 32) if a.quick else (1024, 256)
    variants: list[tuple[str, str | None, str]] = [("no-compile", None, "none"), ("dynamic", "dynamic", "none")]
    if a.device == "cpu" and not a.quick:
        variants.append(("compile-default", None, "default"))
    if a.device == "cuda":  # last: its autotuning may take minutes, and a part out of time keeps the others
        variants.append(("max-autotune", None, "max-autotune"))
    for label, decode, mode in variants:
        e = TorchEngine(engine_settings(a, config), decode=decode, compile=mode)
        try:
            out.put(label, {"decode": e.decode_mode, "compile": e.compile_mode} | await decode_probe(e, ctx, n))
        except Exception as exc:
            out.put(label, {"error": f"{type(exc).__name__}: {exc}"})
        finally:
            e.close()


def _p50(values: list[Any]) -> float | None:
    vals = sorted(v for v in values if isinstance(v, int | float))
    return round(vals[len(vals) // 2], 2) if vals else None


def condense_run(run_dir: Path) -> dict[str, Any]:
    """Per cell of a ``turnbench run``: TTFT, turn and rollout time, server prefill/decode stage times."""
    summary = json.loads((run_dir / "summary.json").read_text())
    turns: list[dict[str, Any]] = []
    path = run_dir / "turns.jsonl"
    if path.exists():
        turns = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    cells: dict[str, Any] = {}
    for key, c in summary.get("cells", {}).items():
        m = c.get("metrics", {})
        mine = [t for t in turns if t.get("cell") == key and not t.get("warmup")]
        cells[key] = {
            "transport": c.get("transport"),
            "state": c.get("state"),
            "variant": c.get("variant"),
            "rollouts": c.get("n_rollouts"),
            "failed": c.get("failed_rollouts"),
            "first_error": c.get("first_error"),
            **{f"{k}_p50": (m.get(k) or {}).get("p50") for k in ("ttft_ms", "turn_ms", "rollout_ms")},
            "server_prefill_ms_p50": _p50([t.get("stage_prefill_wall_ms") for t in mine]),
            "server_decode_ms_p50": _p50([t.get("stage_decode_wall_ms") for t in mine]),
            "cached_tokens_p50": _p50([t.get("cached_tokens") for t in mine]),
            "input_tokens_p50": _p50([t.get("input_tokens") for t in mine]),
        }
    return cells


def part_transports(a: argparse.Namespace, out: Part) -> None:
    """agent-20 over https, ws, grpc against servers running the torch engine, with and without reuse."""
    config = "cuda-1b" if a.device == "cuda" else "cpu-tiny"
    runs = Path("/tmp/gpu_check_runs")
    for variant, reuse in (("reuse", True), ("no-reuse", False)):
        run_dir = runs / variant
        cmd = [
            sys.executable,
            "-m",
            "loadtests.cli",
            "run",
            "--scenario",
            a.scenario,
            "--transports",
            "https,ws,grpc",
            "--states",
            "full,connection",
            "--concurrency",
            "1",
            "--rollouts",
            str(a.rollouts),
            "--warmup",
            "1",
            "--no-tls",
            "--quiet",
            "--server-timeout-s",
            "300",
            "--variant",
            variant,
            "--out",
            str(run_dir),
        ]
        for kv in (
            "engine=torch",
            f"device={a.device}",
            f"torch_config={config}",
            f"prefix_cache={str(reuse).lower()}",
        ):
            cmd += ["--set", kv]
        cmd += ["--set", f"torch_compile={a.compile}"]
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT).returncode
        row: dict[str, Any] = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "argv": cmd[2:]}
        if (run_dir / "summary.json").exists():
            (a.out / f"transports-{variant}.json").write_text((run_dir / "summary.json").read_text())
            row["cells"] = condense_run(run_dir)
        out.put(variant, row)


def run_part(a: argparse.Namespace) -> int:
    out = Part(a.part_out)
    kind, _, config = a.part.partition(":")
    try:
        if kind == "model":
            asyncio.run(part_model(a, config, out))
        elif kind == "compare":
            asyncio.run(part_compare(a, config, out))
        elif kind == "transports":
            part_transports(a, out)
        else:
            raise ValueError(f"unknown part {a.part!r}")
    except Exception as exc:
        traceback.print_exc()
        out.put("error", f"{type(exc).__name__}: {exc}")
        return 1
    return 0


# ----------------------------------------------------------------------------------------- orchestration


def env_info(device: str) -> dict[str, Any]:
    import platform
    from importlib.metadata import version

    info: dict[str, Any] = {"python": platform.python_version(), "torch": version("torch"), "device": device}
    if device == "cuda":  # the orchestrator imports torch only here: its parts run in their own processes
        import torch

        info["torch"] = torch.__version__
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
            "cuda": torch.version.cuda,
        }
    try:
        info["triton"] = version("triton")
    except ImportError:
        info["triton"] = None
    return info


def run_child(a: argparse.Namespace, part: str, limit_s: float, log: Any) -> dict[str, Any]:
    """Run one part in its own process group; kill the group at ``limit_s``; return what it wrote."""
    part_out = Path(f"/tmp/gpu_check_part_{part.replace(':', '_')}.json")
    part_out.unlink(missing_ok=True)
    argv = [sys.executable, __file__, "--part", part, "--part-out", str(part_out), "--device", a.device]
    argv += ["--out", str(a.out), "--compile", a.compile, "--scenario", a.scenario, "--rollouts", str(a.rollouts)]
    argv += ["--quick"] if a.quick else []
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
    status = "ok"
    try:
        rc = proc.wait(timeout=limit_s)
        status = "ok" if rc == 0 else f"exit {rc}"
    except subprocess.TimeoutExpired:
        status = f"timed out after {limit_s:.0f} s"
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)  # the part, and the servers and runs it started
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
    result: dict[str, Any] = json.loads(part_out.read_text()) if part_out.exists() else {}
    return result | {"status": status, "seconds": round(time.perf_counter() - t0, 1)}


def _r(x: Any) -> Any:
    return round(x, 1) if isinstance(x, float) else x


def table(summary: dict[str, Any]) -> list[str]:
    lines = [f"device: {summary['env'].get('gpu', summary['env']['device'])}, torch {summary['env']['torch']}"]
    for name, part in summary["parts"].items():
        lines.append(f"[{name}] {part.get('status')} in {part.get('seconds')} s")
        d = part.get("decode")
        if isinstance(d, dict):
            lines.append(
                f"  decode b=1 ctx {d['context']}: served {d['served_tok_s']} tok/s, step {d['step_tok_s']} tok/s, "
                f"limit {d['bandwidth_limit_tok_s']} ({d['step_vs_limit']:.0%} of it)"
            )
        for label in ("no-compile", "dynamic", "compile-default", "max-autotune"):
            v = part.get(label)
            if isinstance(v, dict) and "step_tok_s" in v:
                lines.append(f"  {label}: served {v['served_tok_s']} tok/s, step {v['step_tok_s']} tok/s")
        cal = part.get("calibration")
        if isinstance(cal, dict):
            for r in cal["rows"]:
                if "error" in r:
                    lines.append(f"  ctx {r['context']}: {r['error']}")
                else:
                    lines.append(
                        f"  prefill ctx {r['context']}+{r['new']}: full {r['full_prefill_ms']} ms, "
                        f"incremental {r['incremental_prefill_ms']} ms; decode {r['decode_tok_s']} tok/s"
                    )
        for r in part.get("batching") or []:
            lines.append(
                f"  {r['decode']} x{r['concurrent']}: {r['aggregate_tok_s']} tok/s aggregate, "
                f"{r['per_request_tok_s']} per request"
            )
        for variant in ("reuse", "no-reuse"):
            v = part.get(variant)
            if isinstance(v, dict):
                for c in (v.get("cells") or {}).values():
                    lines.append(
                        f"  {variant:8} {c['transport']:5} {c['state']:10} ttft p50 {_r(c['ttft_ms_p50'])} ms, "
                        f"rollout p50 {_r(c['rollout_ms_p50'])} ms, server prefill p50 "
                        f"{_r(c['server_prefill_ms_p50'])} ms, cached p50 {c['cached_tokens_p50']}, "
                        f"failed {c['failed']}"
                    )
        if part.get("error"):
            lines.append(f"  error: {part['error']}")
    return lines


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.part:
        return run_part(a)
    a.out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + a.budget_s
    parts = a.parts.split(",") if a.parts else list(CUDA_PARTS if a.device == "cuda" else CPU_PARTS)
    summary: dict[str, Any] = {"env": env_info(a.device), "argv": sys.argv[1:], "parts": {}}
    print(json.dumps(summary["env"]), flush=True)
    with (a.out / "log.txt").open("a") as log:
        for part in parts:
            left = deadline - time.perf_counter()
            if left < MIN_PART_S:
                summary["parts"][part] = {"status": f"skipped: {left:.0f} s of the budget left"}
                continue
            print(f"# {part}: up to {left:.0f} s", flush=True)
            log.write(f"\n===== {part} =====\n")
            log.flush()
            summary["parts"][part] = run_child(a, part, left, log)
            (a.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    summary["total_s"] = round(a.budget_s - (deadline - time.perf_counter()), 1)
    (a.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(table(summary)), flush=True)
    failed = [p for p, r in summary["parts"].items() if r.get("status") != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
