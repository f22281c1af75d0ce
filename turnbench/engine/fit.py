"""Fit the sim cost model to a prefill/decode anchor: ``python -m turnbench.engine.fit ANCHOR.json``.

Model (per model size): ``prefill_ms = base + a·n + b·n·ctx/1000 + c·ctx`` over the anchor's full prefills
(n = ctx) and incremental ones (n new tokens onto a cached ctx), by least squares weighted by 1/measured
(relative error), and ``decode_ms/token = d0 + d1·ctx/1000``. Prints the coefficients and the residuals.
``turnbench calibrate`` fits measured points with :func:`fit_points` (``nonnegative``: a cost model's
coefficients are costs, so a term the data pull below zero is dropped and the rest refitted).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

PrefillPoint = tuple[int, int, float]  # (uncached tokens n, context tokens ctx, measured ms)
DecodePoint = tuple[int, float]  # (context tokens, measured tok/s)


def _lstsq(a: Any, y: Any, *, weighted: bool, nonnegative: bool) -> Any:
    """Least squares (rows weighted by 1/y when ``weighted``); with ``nonnegative``, the most negative
    coefficient is fixed at 0 and the rest refitted until none is negative."""
    w = 1.0 / np.maximum(y, 1e-3) if weighted else np.ones_like(y)  # a point measured at 0 ms: weight 1000
    cols = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while cols:
        sol, *_ = np.linalg.lstsq(a[:, cols] * w[:, None], y * w, rcond=None)
        if not nonnegative or (sol >= 0).all():
            coef[cols] = sol
            break
        del cols[int(np.argmin(sol))]
    return coef


def fit_points(
    prefill: Sequence[PrefillPoint], decode: Sequence[DecodePoint], *, nonnegative: bool = False
) -> dict[str, Any]:
    """The sim profile's cost coefficients (``SimProfile`` field names) fitted to measured points, and
    ``max_abs_residual_pct`` of the prefill fit."""
    a = np.array([[1.0, n, n * ctx / 1e3, ctx] for n, ctx, _ in prefill])
    yv = np.array([ms for *_, ms in prefill], dtype=float)
    coef = _lstsq(a, yv, weighted=True, nonnegative=nonnegative)
    resid = (a @ coef - yv) / np.maximum(yv, 1e-3)
    dx = np.array([[1.0, ctx / 1e3] for ctx, _ in decode])
    dy = np.array([1000.0 / tok_s for _, tok_s in decode])
    dcoef = _lstsq(dx, dy, weighted=False, nonnegative=nonnegative)
    return {
        "prefill_base_ms": coef[0],
        "prefill_ms_per_token": coef[1],
        "prefill_ms_per_token_kctx": coef[2],
        "prefill_ms_per_ctx_token": coef[3],
        "decode_ms_per_token": dcoef[0],
        "decode_ms_per_token_kctx": dcoef[1],
        "max_abs_residual_pct": float(np.max(np.abs(resid)) * 100),
    }


def fit(rows: list[dict[str, Any]], *, nonnegative: bool = False) -> dict[str, Any]:
    """:func:`fit_points` over anchor rows ``{context, new, full_prefill_ms, incremental_prefill_ms,
    decode_tok_s}``."""
    prefill: list[PrefillPoint] = []
    for r in rows:
        ctx, n = r["context"], r["new"]
        prefill.append((ctx, ctx, r["full_prefill_ms"]))
        prefill.append((n, ctx, r["incremental_prefill_ms"]))
    return fit_points(prefill, [(r["context"], r["decode_tok_s"]) for r in rows], nonnegative=nonnegative)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "anchor", help="JSON list of {model, context, new, full_prefill_ms, incremental_prefill_ms, decode_tok_s}"
    )
    ap.add_argument("--model", default=None, help="fit only this model (default: each model in the file)")
    args = ap.parse_args(argv)
    with open(args.anchor) as fh:
        data = json.load(fh)
    for model in sorted({r["model"] for r in data}):
        if args.model and model != args.model:
            continue
        coef = fit([r for r in data if r["model"] == model])
        print(model, json.dumps({k: round(float(v), 7) for k, v in coef.items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
