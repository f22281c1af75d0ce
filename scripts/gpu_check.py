#!/usr/bin/env python3
"""GPU check of the ``torch`` engine: what a real model core costs per agent turn, with and without KV reuse.

Self-contained (installs nothing). Sections, each recorded even when another fails:

1. ``env``: torch, CUDA, the card.
2. ``engine``: for each context n (tokens; 1k/8k/32k on CUDA): full prefill of n+new tokens with no cache,
   incremental prefill of ``new`` tokens onto a conversation's KV handle, the same ``new`` tokens for a new
   conversation served by the prefix cache, and batch-1 decode tok/s at n+new. Times are the engine's own
   measured ``modeled_ms`` (synchronized), the median of ``--reps``. The incremental logits are checked
   against the full recompute (cosine similarity).
3. ``e2e``: ``ResponsesService(Settings(engine="torch"))`` + the in-process client + the agent loop
   (``run_rollout``, ``Toolbox()``, metadata tool_calls=N) for state ``connection`` vs ``full`` (prefix cache
   on) vs ``full`` with the prefix cache off: rollout_ms and the prefill tokens computed.

Shape of the output matches anchors/gpu_prefill_decode_h200.json (context, new, full_prefill_ms,
incremental_prefill_ms, decode_tok_s). A JSON summary is printed last and written to ``--json``.

    python scripts/gpu_check.py --json gpu_check.json          # a GPU machine, < 4 minutes
    python scripts/gpu_check.py --device cpu --quick           # smoke test of the script itself
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import platform
import random
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, installed or not

import torch

from turnbench.engine.torch_engine import CONFIGS, TorchEngine
from turnbench.settings import Settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--config", default=None, choices=sorted(CONFIGS), help="default: the device's")
    p.add_argument(
        "--contexts",
        default=None,
        help="comma-separated context lengths in tokens (default 1024,8192,32768; quick 512,2048)",
    )
    p.add_argument("--new", type=int, default=256, help="tokens appended by an incremental prefill")
    p.add_argument("--decode-tokens", type=int, default=64, help="tokens decoded for tok/s")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions (median)")
    p.add_argument("--tool-calls", type=int, default=20, help="tool calls per e2e rollout")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test (CPU)")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the summary here")
    a = p.parse_args(argv)
    if a.quick:
        a.new, a.decode_tokens, a.reps, a.tool_calls = min(a.new, 128), min(a.decode_tokens, 16), 2, 3
    default = "512,2048" if a.quick else "1024,8192,32768"
    a.context_list = [int(x) for x in (a.contexts or default).split(",") if x.strip()]
    return a


def env_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": torch.cuda.get_device_name(0),
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "sms": props.multi_processor_count,
            "cuda": torch.version.cuda,
        }
    return info


def settings(device: str, config: str | None, **kw: Any) -> Settings:
    return Settings(engine="torch", device=device, profile=config or "fast", usage_db=":memory:", **kw)


def tokens(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(1, vocab) for _ in range(n)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.cosine_similarity(a.float(), b.float(), dim=0).item())


async def bench_context(e: TorchEngine, n: int, new: int, decode_tokens: int, reps: int) -> dict[str, Any]:
    """One row: full vs incremental vs prefix-cache prefill at context ``n`` (ms), decode tok/s."""
    rng = random.Random(n)
    prefix = tokens(rng, n, e.vocab)
    suffixes = [tokens(rng, new, e.vocab) for _ in range(2 * reps + 1)]
    ctx = prefix + suffixes[0]
    await e.prefill(ctx[: min(len(ctx), 512)], None, use_cache=False)  # warm-up (kernels, allocator)
    full_ms: list[float] = []
    for _ in range(reps + 1):  # the first is a warm-up; each result's KV is dropped before the next
        r = await e.prefill(ctx, None, use_cache=False)
        full_ms.append(r.modeled_ms)
        ref = r.kv.payload.logits
    del r
    kv = (await e.prefill(prefix, None, use_cache=False)).kv
    inc_ms: list[float] = []
    computed: set[int] = set()
    check = 0.0
    for i, suffix in enumerate(suffixes[: reps + 1]):  # each suffix replaces the last: exactly `new` tokens
        r = await e.prefill(prefix + suffix, kv, use_cache=True)
        kv, computed = r.kv, computed | {r.computed_tokens}
        if i == 0:
            check = cosine(r.kv.payload.logits, ref)
        else:  # the first one also filled the prefix cache (n/64 block copies): a warm-up
            inc_ms.append(r.modeled_ms)
    pc_ms, pc_cached = [], 0
    for suffix in suffixes[reps + 1 :]:  # a new conversation: the prefix from the cache, new tokens computed
        r = await e.prefill(prefix + suffix, None, use_cache=True)
        pc_ms.append(r.modeled_ms)
        pc_cached = r.cached_tokens
    del r
    pieces = [(t, "") for t in tokens(rng, decode_tokens, e.vocab)]
    async for _ in e.decode(kv, pieces[:4], tokens_per_chunk=1):  # warm-up
        pass
    d0 = e.stats.extra.get("decode_ms", 0.0)
    t0 = time.perf_counter()
    async for _ in e.decode(kv, pieces, tokens_per_chunk=1):
        pass
    wall_s = time.perf_counter() - t0
    compute_s = (e.stats.extra["decode_ms"] - d0) / 1e3
    full_again = await e.prefill(kv.payload.ids, None, use_cache=False)  # the grown KV equals a recompute
    check_decode = cosine(kv.payload.logits, full_again.kv.payload.logits)
    del kv, full_again
    gc.collect()
    row = dict(
        model=e.name,
        params_b=round(e.params / 1e9, 3),
        context=n,
        new=new,
        full_prefill_ms=round(statistics.median(full_ms[1:]), 2),
        incremental_prefill_ms=round(statistics.median(inc_ms), 2),
        prefix_cache_prefill_ms=round(statistics.median(pc_ms), 2),
        incremental_computed_tokens=sorted(computed),
        prefix_cache_cached_tokens=pc_cached,
        incremental_logits_cosine=round(check, 6),
        decode_logits_cosine=round(check_decode, 6),
        decode_tok_s=round(decode_tokens / wall_s, 1),
        decode_compute_tok_s=round(decode_tokens / compute_s, 1),
    )
    if torch.cuda.is_available() and e.device.type == "cuda":
        row["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


async def bench_engine(a: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    e = TorchEngine(settings(device, a.config))
    rows: list[dict[str, Any]] = []
    try:
        print(f"# {e.name}: {e.params / 1e9:.3f}B params on {e.device}", flush=True)
        for n in a.context_list:
            if n + a.new + a.decode_tokens + 4 > e.config.max_ctx:
                print(f"# skip context {n}: over max_ctx {e.config.max_ctx}", flush=True)
                continue
            try:
                rows.append(await bench_context(e, n, a.new, a.decode_tokens, a.reps))
            except Exception as exc:  # e.g. out of memory: keep what was measured
                rows.append({"context": n, "error": f"{type(exc).__name__}: {exc}"})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        e.close()
    return rows


async def e2e(a: argparse.Namespace, device: str) -> list[dict[str, Any]]:
    """The agent loop through the real service, per state strategy."""
    from clients.agent import Toolbox, run_rollout  # here: an import error leaves the engine section intact
    from clients.base import ClientConfig
    from clients.inproc_client import InProcClient
    from turnbench.service import ResponsesService

    out: list[dict[str, Any]] = []
    for state, prefix_cache in (("connection", True), ("full", True), ("full", False)):
        service = ResponsesService(settings(device, a.config, prefix_cache=prefix_cache))
        client = InProcClient(ClientConfig(url="inproc", options={"service": service}))
        try:
            r = await run_rollout(client, state=state, toolbox=Toolbox(), metadata={"tool_calls": str(a.tool_calls)})
            x = service.engine.stats.extra
            row = dict(
                state=state,
                prefix_cache=prefix_cache,
                success=r.success,
                error=r.error,
                turns=len(r.turns),
                tool_calls=len(r.tool_calls),
                rollout_ms=round(r.rollout_ms, 1),
                tool_ms=round(r.tool_ms, 1),
                final_context_tokens=r.turns[-1].input_tokens if r.turns else 0,
                prefill_tokens=service.engine.stats.prefill_tokens,
                cached_tokens=service.engine.stats.cached_tokens,
                engine_prefill_ms=round(x.get("prefill_ms", 0.0), 1),
                engine_decode_ms=round(x.get("decode_ms", 0.0), 1),
                decoded_tokens=service.engine.stats.decoded_tokens,
                final_output=(r.final_output or "")[:60],
            )
        except Exception as exc:
            row = dict(state=state, prefix_cache=prefix_cache, error=f"{type(exc).__name__}: {exc}")
            traceback.print_exc()
        finally:
            await client.close()
            await service.drain()
            service.close()
            del service, client
            gc.collect()
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


async def amain(a: argparse.Namespace) -> dict[str, Any]:
    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"env": env_info(device)}
    print(json.dumps(summary["env"]), flush=True)
    if device == "cuda" and not torch.cuda.is_available():
        summary["error"] = "CUDA requested but torch.cuda.is_available() is False"
        return summary
    for name, fn in (("engine", bench_engine), ("e2e", e2e)):
        if name == "e2e" and a.skip_e2e:
            continue
        s0 = time.perf_counter()
        try:
            summary[name] = await fn(a, device)
        except Exception as exc:
            summary[name] = {"error": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc()
        summary[f"{name}_s"] = round(time.perf_counter() - s0, 1)
    summary["total_s"] = round(time.perf_counter() - t0, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    summary = asyncio.run(amain(a))
    text = json.dumps(summary, indent=1)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    failed = "error" in summary or any(
        (isinstance(v, dict) and "error" in v) or (isinstance(v, list) and any(r.get("error") for r in v))
        for v in summary.values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
