"""The streaming figures of a run: tokens/s from the first delta to the last, tokens per delta, server CPU and
bytes per token (loadtests.stats.stream_rates), and the table `turnbench run` prints for long answers."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from loadtests.analysis.cells import stream_rates
from loadtests.cli.run import _stream_block


def turns(rows: list[tuple[int, int, list[float], int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["output_tokens", "chunks", "itl_ms", "bytes_down"])


def test_rates_split_a_turns_tokens_over_its_deltas() -> None:
    # 1000 tokens in 100 deltas 0.1 ms apart: 990 tokens after the first delta in 9.9 ms → 100,000 tok/s;
    # 400 tokens one per delta, 0.05 ms apart: 399 tokens in 19.95 ms → 20,000 tok/s
    t = turns([(1000, 100, [0.1] * 99, 5000), (400, 400, [0.05] * 399, 80000)])
    s = stream_rates(t, server_cpu_s=0.014)
    assert s is not None
    assert s["tok_s_min"] == pytest.approx(20_000) and s["tok_s"] == pytest.approx(60_000)  # median of the two
    assert s["tokens_per_delta"] == pytest.approx(1400 / 500) and s["tokens_per_turn"] == 700
    assert s["server_cpu_us_per_token"] == pytest.approx(10.0) and s["bytes_down_per_token"] == pytest.approx(
        85000 / 1400
    )


def test_no_rate_without_two_deltas_and_no_cpu_without_a_server_process() -> None:
    assert stream_rates(turns([(1, 1, [], 200)]), server_cpu_s=0.001) is None
    s = stream_rates(turns([(1, 1, [], 200), (10, 2, [1.0], 300)]), server_cpu_s=None)
    assert s is not None and s["n"] == 1 and s["tok_s"] == pytest.approx(5000) and s["server_cpu_us_per_token"] is None
    assert stream_rates(turns([]), server_cpu_s=None) is None


def cell(transport: str, tokens_per_turn: float, tok_s: float) -> dict[str, object]:
    stream = {
        "n": 3,
        "tok_s": tok_s,
        "tok_s_min": tok_s / 2,
        "tokens_per_turn": tokens_per_turn,
        "tokens_per_delta": 4.0,
        "server_cpu_us_per_token": 12.5,
        "bytes_down_per_token": math.nan,
    }
    return {
        "profile": "burst",
        "transport": transport,
        "state": "full",
        "variant": "coalesce-64",
        "stream": stream,
        "metrics": {"itl_ms": {"p50": 0.05, "p99": 0.2}},
    }


def test_the_streaming_table_lists_long_answer_cells_only() -> None:
    lines = _stream_block({"a": cell("grpc", 4000, 39_912), "b": cell("ws", 12, 1_000), "c": {"stream": None}})
    body = "\n".join(lines)
    assert "39,912 (19,956)" in body and "grpc" in body and "12.5" in body
    assert "ws" not in body.split("\n", 2)[-1]  # 12 tokens per answer: not a streaming cell
    assert _stream_block({"b": cell("ws", 12, 1_000)}) == []
