"""``turnbench serve`` / ``python -m servers``: run one server on the shared core until SIGTERM or Ctrl-C.

Every flag maps one-to-one onto a :class:`~turnbench.settings.Settings` field, generated from the dataclass so
the two cannot drift. It lives beside the servers (a server never imports the harness); the ``turnbench``
command mounts it as its ``serve`` subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from turnbench.settings import ROLES, Settings, parse_burn_map, parse_stage_map
from turnbench.transports import SERVER_PROTOCOLS, TRANSPORTS

__all__ = ["SERVE_CHOICES", "add_serve_arguments", "add_settings_flags", "cmd_serve", "main", "settings_from_args"]

SERVE_CHOICES: tuple[str, ...] = (*SERVER_PROTOCOLS, *(t.name for t in TRANSPORTS.values() if t.server_settings))
"""The server protocols, and the transports that need a server of their own settings (``https-h2``)."""

HELP = {
    "host": "address to bind (default 127.0.0.1)",
    "port": "port to bind; 0 picks a free one and prints it",
    "tls": "serve TLS with a certificate generated at start-up (default on)",
    "api_key": "require 'Authorization: Bearer KEY' (default: no auth)",
    "ca_out": "write the generated CA certificate (PEM) here, for clients in other shells",
    "http2": "https only: serve HTTP/2 with hypercorn (a variant; HTTP/1.1 on uvicorn is the default)",
    "workers": "server processes sharing the port (SO_REUSEPORT): a connection stays in the worker that accepted "
    "it; store=true uses one SQLite store for all of them (default 1)",
    "reuse_port": "bind with SO_REUSEPORT (each --workers worker does; default off: a port of our own)",
    "role": "what the server stands for: api (an OpenAI-like API server: safety pass, render, state store; the "
    "default) or engine (an inference engine behind a gateway, like vLLM: tokenize the whole prompt, prefix-cache "
    "lookup, prefill of the uncached tail, decode; nothing stored)",
    "engine": "model-serving core: sim (calibrated cost model) or torch (real model, optional extra)",
    "profile": "sim profile: instant, frontier (~65 tok/s), fast (~1000 tok/s), burst (~40,000 tok/s), h200-8b, "
    "calibration",
    "store": "ResponseStore for store=true: memory, sqlite:PATH (one host) or redis://HOST:PORT/DB (shared by "
    "server hosts)",
    "seed": "seed of the scripted model when a request's metadata.seed does not say (default 0)",
    "tool_calls": "tool calls the scripted model makes before answering, when a request's metadata.tool_calls "
    "does not say (default 1: an agent's tool runs once, then it answers)",
    "answer_tokens": "words in the final answer when metadata.answer_tokens does not say (default 64)",
    "arg_words": "words per free-text tool argument when metadata.arg_words does not say (default 3)",
    "usage_db": "SQLite file for durable usage records (auto: a temp file)",
    "tokens_per_chunk": "tokens per delta event (framing knob, the same on every transport)",
    "coalesce_tokens": "adaptive coalescing: when the client or the transport lags, the tokens already generated "
    "travel in one delta event, up to N (0: off)",
    "inject_ms": "injected latency in ms (asyncio sleep): N adds a synthetic regression of N ms to every model "
    "request, timed as its own stage 'injected'; STAGE=N,... sleeps in named stages, e.g. safety=5,post=2",
    "burn_us": "named CPU burn per stage, e.g. render=200 (µs; the gate's slow-path knob)",
    "max_input_items": "items in one request's input; more is a 400 array_above_max_length (default 10000)",
    "max_context_tokens": "a conversation longer than this, rendered, is a 400 context_length_exceeded "
    "(default 1048576)",
    "prefix_cache_blocks": "sim engine: 64-token block hashes its prefix cache keeps, LRU (default 200000)",
    "torch_config": "torch engine model: cpu-tiny, cuda-0.2b, cuda-1b, cuda-8b (default auto: by device)",
    "torch_compile": "torch engine decode: none, default, max-autotune (default auto: default on CUDA)",
}


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field: ``--max-body-bytes`` ↔ ``max_body_bytes``; defaults come from Settings."""
    defaults = Settings()
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = HELP.get(f.name, f"(default {default!r})")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name in ("inject_ms", "burn_us"):
            inject = f.name == "inject_ms"
            parser.add_argument(
                flag,
                dest=f.name,
                type=parse_stage_map if inject else parse_burn_map,
                default=None,
                metavar="N|STAGE=N,..." if inject else "STAGE=N,...",
                help=help_text,
            )
        elif f.name == "role":
            parser.add_argument(flag, dest=f.name, choices=ROLES, default=None, help=help_text)
        else:
            kind: Callable[[str], Any] = type(default) if isinstance(default, int | float) else str
            if f.name in ("ping_interval_s", "ping_timeout_s"):
                kind = float
            parser.add_argument(flag, dest=f.name, type=kind, default=None, help=help_text)


def settings_from_args(args: argparse.Namespace) -> Settings:
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings.from_env(**{k: v for k, v in vars(args).items() if k in names})


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "transport", choices=SERVE_CHOICES, help="the server to run (https-h2: the https server with --http2)"
    )
    add_settings_flags(parser)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


SWITCH_INTERVAL_S = 0.001


async def _serve(transport: str, settings: Settings) -> int:
    from servers.base import start_server

    if settings.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {settings.workers}")
    if settings.workers > 1:
        from servers.workers import supervise

        return await supervise(transport, settings)

    # A large request's stages run on worker threads; with CPython's default 5 ms switch interval every event
    # the loop sends meanwhile waits up to 5 ms for the GIL (a 20-event answer: +200 ms). 1 ms bounds that.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if settings.tls and not settings.ca_out:
        settings = settings.replace(ca_out=os.path.join(tempfile.mkdtemp(prefix="turnbench-"), "ca.pem"))
    server = await start_server(transport, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"turnbench {transport} server listening on {server.url}", flush=True)
    if settings.tls:
        print(f"CA certificate: {settings.ca_out}", flush=True)
    print(f"PORT={server.port}", flush=True)
    await stop.wait()
    print("draining…", flush=True)
    await server.stop()
    print("stopped", flush=True)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    return _run(_serve(args.transport, settings_from_args(args)))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m servers TRANSPORT [flags]``, the same as ``turnbench serve``."""
    parser = argparse.ArgumentParser(prog="python -m servers", description="Run one turnbench server.")
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return cmd_serve(args)
    except (ValueError, OSError) as exc:
        print(f"turnbench serve: error: {exc}", flush=True)
        return 2
