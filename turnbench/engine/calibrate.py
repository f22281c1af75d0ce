"""``turnbench calibrate``: measure an engine's prefill and decode, fit a sim profile to the measurements.

For each context length ``ctx`` it measures, through the engine protocol only (any engine works):

* for each ``new`` in ``--new``: ``full_prefill_ms``, the whole ``ctx + new`` tokens with no cache (a
  stateless request), and ``incremental_prefill_ms``, the ``new`` tokens appended to a conversation that holds
  ``ctx`` (its KV handle: a stateful connection), as in ``turnbench/data/anchors/gpu_prefill_decode_h200.json``;
* ``decode_tok_s``: batch-1 decode of ``--decode-tokens`` tokens onto that conversation, wall clock per token
  as the service sees it (``decode_device_tok_s``: the engine's device time, where it reports one).

Prefill times are the engine's ``modeled_ms`` (the torch engine: measured on an idle, synchronized device),
medians of ``--reps``. :func:`turnbench.engine.fit.fit_points` then fits ``prefill_ms = base + a·n +
b·n·ctx/1000 + c·ctx`` (n uncached tokens, ctx the context after the prefill) and ``decode_ms/token = d0 +
d1·ctx/1000`` with non-negative coefficients, and the
profile is written as JSON (``"profile"``: the :class:`~turnbench.engine.sim.SimProfile` fields; ``"rows"``:
the measurements; ``"fit"``: coefficients and the largest residual; ``"engine"``, ``"env"``). Serve it with
``turnbench serve ws --profile file:PATH``.

    turnbench calibrate --engine torch --device cuda --config cuda-1b --out profiles/h200-1b.json
    turnbench calibrate --engine torch --device cpu --quick --out /tmp/cpu-tiny.json     # ~1 minute
    turnbench calibrate --engine sim --profile h200-8b --quick                           # self-check

Nothing heavy is imported until the command runs (the ``turnbench`` parser imports this module).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from turnbench.engine.base import KVHandle, ModelEngine

__all__ = [
    "add_calibrate_arguments",
    "calibrate",
    "cmd_calibrate",
    "document",
    "engine_info",
    "environment",
    "measure",
    "measure_context",
]

DEFAULT_CONTEXTS = {"cuda": (1024, 8192, 32768), "cpu": (256, 1024, 2048), "quick": (128, 512)}


def add_calibrate_arguments(p: argparse.ArgumentParser) -> None:
    """Every ``turnbench calibrate`` flag."""
    p.add_argument("--engine", choices=("torch", "sim"), default="torch", help="engine to measure (default torch)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="torch: device (default auto)")
    p.add_argument("--config", default="auto", help="torch: model config, e.g. cuda-1b (default: the device's)")
    p.add_argument("--compile", default="auto", help="torch: decode compile mode, none|default|max-autotune")
    p.add_argument("--profile", default="fast", help="sim: the profile to measure (a self-check of the fit)")
    p.add_argument(
        "--contexts",
        default=None,
        metavar="LIST",
        help="context lengths in tokens (default 1024,8192,32768 on CUDA, 256,1024,2048 on the CPU)",
    )
    p.add_argument("--new", default="256", metavar="LIST", help="tokens appended by incremental prefills")
    p.add_argument("--decode-tokens", type=int, default=64, metavar="N", help="tokens decoded per context")
    p.add_argument("--reps", type=int, default=3, metavar="N", help="timed repetitions per point (median)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the token ids")
    p.add_argument("--name", default=None, help="profile name (default: measured-<engine>)")
    p.add_argument("--quick", action="store_true", help="small sizes (contexts 128,512; new 64; 2 reps)")
    p.add_argument("--out", type=Path, default=None, metavar="PATH", help="write the profile JSON here")


def _ints(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def _median(xs: Sequence[float]) -> float:
    return round(statistics.median(xs), 3)


def _cosine(a: Any, b: Any) -> float | None:
    """Cosine similarity of two logits tensors (duck-typed: no torch import here), None without logits."""
    if a is None or b is None:
        return None
    a, b = a.float(), b.float()
    return round(float((a * b).sum() / (a.norm() * b.norm())), 6)


def _logits(kv: KVHandle) -> Any:
    return getattr(kv.payload, "logits", None)


async def measure_context(
    engine: ModelEngine, ctx: int, new: Sequence[int], decode_tokens: int, reps: int, *, vocab: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Rows (one per ``new``) in the anchors' format: a full prefill of ``ctx + new`` tokens vs an incremental
    one of ``new`` tokens onto a conversation holding ``ctx``; then batch-1 decode tok/s at that length."""
    rng = random.Random(seed * 1_000_003 + ctx)

    def ids(n: int) -> list[int]:
        return [rng.randrange(1, vocab) for _ in range(n)]

    prefix = ids(ctx)
    await engine.prefill(prefix[: min(ctx, 256)], None, use_cache=False)  # warm-up: kernels, allocator
    rows: list[dict[str, Any]] = []
    for n in new:
        suffixes = [ids(n) for _ in range(reps + 1)]
        full: list[float] = []
        for _ in range(reps + 1):  # the first is a warm-up at this size
            res = await engine.prefill(prefix + suffixes[0], None, use_cache=False)
            full.append(res.modeled_ms)
        ref = _logits(res.kv)
        del res
        inc: list[float] = []
        computed: set[int] = set()
        cosine = None
        for i, suffix in enumerate(suffixes):  # a conversation holding ctx tokens (untimed), continued by n
            held = (await engine.prefill(prefix, None, use_cache=False)).kv
            r = await engine.prefill(prefix + suffix, held, use_cache=True)
            kv = r.kv
            computed.add(r.computed_tokens)
            if i == 0:  # also filled the prefix cache: a warm-up, and the check of exact KV reuse
                cosine = _cosine(_logits(kv), ref)
            else:
                inc.append(r.modeled_ms)
        rows.append(
            {
                "context": ctx,
                "new": n,
                "full_prefill_ms": _median(full[1:]),
                "incremental_prefill_ms": _median(inc),
                "incremental_computed_tokens": sorted(computed),
                "incremental_logits_cosine": cosine,
            }
        )
    # decode onto the conversation (ctx + the last suffix): a warm-up (graphs of this length), then timed
    pieces = [(t, "") for t in ids(decode_tokens + 4)]
    async for _ in engine.decode(kv, pieces[:4], tokens_per_chunk=1):
        pass
    device_ms = 0.0
    t0 = time.perf_counter()
    async for chunk in engine.decode(kv, pieces[4:], tokens_per_chunk=1):
        device_ms += chunk.device_ms
    wall_s = time.perf_counter() - t0
    check = None
    if _logits(kv) is not None:  # the grown KV's last logits against a full recompute of its ids
        again = await engine.prefill(list(kv.payload.ids), None, use_cache=False)
        check = _cosine(_logits(kv), _logits(again.kv))
    for row in rows:
        row["decode_tok_s"] = round(decode_tokens / wall_s, 2)
        row["decode_device_tok_s"] = round(decode_tokens / (device_ms / 1e3), 2) if device_ms else None
        row["decode_logits_cosine"] = check
    return rows


async def measure(
    engine: ModelEngine,
    contexts: Sequence[int],
    new: Sequence[int],
    decode_tokens: int,
    reps: int,
    *,
    vocab: int,
    seed: int = 0,
    log: Any = None,
) -> list[dict[str, Any]]:
    """:func:`measure_context` for each context, largest last; contexts that fail are recorded as errors."""
    rows: list[dict[str, Any]] = []
    for ctx in contexts:
        try:
            got = await measure_context(engine, ctx, new, decode_tokens, reps, vocab=vocab, seed=seed)
        except Exception as exc:  # e.g. out of memory at the longest context: keep what was measured
            got = [{"context": ctx, "error": f"{type(exc).__name__}: {exc}"}]
        rows += got
        if log is not None:
            for r in got:
                log(json.dumps(r))
    return rows


def calibrate(rows: list[dict[str, Any]], *, name: str, description: str) -> dict[str, Any]:
    """The sim profile (its fields) and fit report from measured rows."""
    from turnbench.engine.fit import fit_points
    from turnbench.engine.sim import SimProfile, profile_dict

    ok = [r for r in rows if "error" not in r]
    if not ok:
        raise ValueError("no successful measurement to fit")
    prefill: list[tuple[int, int, float]] = []
    for r in ok:  # the sim charges prefill_ms(uncached, context after the prefill)
        total = r["context"] + r["new"]
        prefill += [(total, total, r["full_prefill_ms"]), (r["new"], total, r["incremental_prefill_ms"])]
    decode = [(r["context"] + r["new"], r["decode_tok_s"]) for r in ok if r is _first(ok, r["context"])]
    coef = fit_points(prefill, decode, nonnegative=True)
    resid = coef.pop("max_abs_residual_pct")
    c = {k: round(float(v), 7) for k, v in coef.items()}
    profile = SimProfile(
        name,
        description,
        prefill_base_ms=c["prefill_base_ms"],
        prefill_ms_per_token=c["prefill_ms_per_token"],
        prefill_ms_per_token_kctx=c["prefill_ms_per_token_kctx"],
        prefill_ms_per_ctx_token=c["prefill_ms_per_ctx_token"],
        decode_ms_per_token=c["decode_ms_per_token"],
        decode_ms_per_token_kctx=c["decode_ms_per_token_kctx"],
    )
    return {"profile": profile_dict(profile), "fit": {"max_abs_residual_pct": round(resid, 2), "points": len(prefill)}}


def _first(rows: list[dict[str, Any]], ctx: int) -> dict[str, Any]:
    return next(r for r in rows if r["context"] == ctx)


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": platform.python_version(), "machine": platform.machine()}
    try:
        import torch
    except ImportError:
        return env
    env["torch"] = torch.__version__
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def make_engine(args: argparse.Namespace) -> tuple[ModelEngine, dict[str, Any], int]:
    """The engine ``args`` name, what to record about it, and its vocabulary."""
    from turnbench.settings import Settings

    if args.engine == "sim":
        from turnbench.engine.sim import SimEngine

        sim = SimEngine(args.profile)
        return sim, {"name": sim.name}, 8192
    from turnbench.engine.torch_engine import TorchEngine

    s = Settings(engine="torch", device=args.device, torch_config=args.config, torch_compile=args.compile)
    eng = TorchEngine(s)
    return eng, engine_info(eng), eng.vocab


def engine_info(eng: Any) -> dict[str, Any]:
    """What a measurement records about a torch engine."""
    return {
        "name": eng.name,
        "device": str(eng.device),
        "params": eng.params,
        "weight_bytes": eng.weight_bytes,
        "decode": eng.decode_mode,
        "compile": eng.compile_mode,
    }


def document(rows: list[dict[str, Any]], info: dict[str, Any], *, name: str | None = None) -> dict[str, Any]:
    """The JSON ``turnbench calibrate`` writes: the fitted profile, the fit, the rows, engine and env."""
    label = str(info.get("name", "engine"))
    desc = f"measured by turnbench calibrate: {label} on {info.get('device', 'the sim engine')}"
    doc = calibrate(rows, name=name or f"measured-{label.replace(':', '-')}", description=desc)
    return doc | {"rows": rows, "engine": info, "env": environment()}


async def run(args: argparse.Namespace, log: Any = print) -> dict[str, Any]:
    """Measure, fit and (with ``--out``) write; returns the JSON document."""
    engine, info, vocab = make_engine(args)
    cuda = info.get("device", "").startswith("cuda")
    contexts = (
        _ints(args.contexts)
        if args.contexts
        else list(DEFAULT_CONTEXTS["quick" if args.quick else ("cuda" if cuda else "cpu")])
    )
    new = _ints(args.new) if not args.quick else [min(64, *_ints(args.new))]
    reps, decode_tokens = (2, min(args.decode_tokens, 16)) if args.quick else (args.reps, args.decode_tokens)
    t0 = time.perf_counter()
    try:
        rows = await measure(engine, contexts, new, decode_tokens, reps, vocab=vocab, seed=args.seed, log=log)
        extra = dict(engine.stats.extra)
    finally:
        engine.close()
    doc = document(rows, info | {"stats": extra}, name=args.name)
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def cmd_calibrate(args: argparse.Namespace) -> int:
    doc = asyncio.run(run(args))
    print(json.dumps({"profile": doc["profile"], "fit": doc["fit"]}, indent=1))
    if args.out:
        print(f"wrote {args.out}; serve it with: turnbench serve ws --profile file:{args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m turnbench.engine.calibrate`` (the same as ``turnbench calibrate``)."""
    p = argparse.ArgumentParser(
        prog="python -m turnbench.engine.calibrate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_calibrate_arguments(p)
    try:
        return cmd_calibrate(p.parse_args(argv))
    except (ValueError, OSError) as exc:
        print(f"calibrate: error: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
