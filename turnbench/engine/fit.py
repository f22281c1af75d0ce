"""Fit the sim cost model to a prefill/decode anchor: ``python -m turnbench.engine.fit ANCHOR.json``.

Model (per model size): ``prefill_ms = base + a·n + b·n·ctx/1000 + c·ctx`` over the anchor's full prefills
(n = ctx) and incremental ones (n new tokens onto a cached ctx), by least squares weighted by 1/measured
(relative error), and ``decode_ms/token = d0 + d1·ctx/1000``. Prints the coefficients and the residuals.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np


def fit(rows: list[dict[str, Any]]) -> dict[str, Any]:
    a_rows, y = [], []
    for r in rows:
        ctx, n = r["context"], r["new"]
        a_rows.append([1.0, ctx, ctx * ctx / 1e3, ctx])
        y.append(r["full_prefill_ms"])
        a_rows.append([1.0, n, n * ctx / 1e3, ctx])
        y.append(r["incremental_prefill_ms"])
    a, yv = np.array(a_rows), np.array(y)
    w = 1.0 / yv
    coef, *_ = np.linalg.lstsq(a * w[:, None], yv * w, rcond=None)
    resid = (a @ coef - yv) / yv
    dx = np.array([[1.0, r["context"] / 1e3] for r in rows])
    dy = np.array([1000.0 / r["decode_tok_s"] for r in rows])
    dcoef, *_ = np.linalg.lstsq(dx, dy, rcond=None)
    return {
        "prefill_base_ms": coef[0],
        "prefill_ms_per_token": coef[1],
        "prefill_ms_per_token_kctx": coef[2],
        "prefill_ms_per_ctx_token": coef[3],
        "decode_ms_per_token": dcoef[0],
        "decode_ms_per_token_kctx": dcoef[1],
        "max_abs_residual_pct": float(np.max(np.abs(resid)) * 100),
    }


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
