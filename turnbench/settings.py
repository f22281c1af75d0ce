"""One frozen ``Settings`` for servers, the service and the engines.

Fields are grouped like websockets' ``serve()`` keywords and carry their unit in the name. Nothing is read at
import time: :meth:`Settings.from_env` reads ``TURNBENCH_<FIELD>`` variables when asked, and CLI flags map
one-to-one onto fields (``--max-body-bytes`` → ``max_body_bytes``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

StateStrategy = Literal["full", "store", "connection"]
"""How a turn carries its conversation, the one spelling of the three names: ``full`` resends every item
(``store=false``); ``store`` chains by ``previous_response_id`` through the ResponseStore (``store=true``);
``connection`` chains through the connection-local cache (WebSocket, gRPC ``Connect``). The service reports
which one resolved a request in the same words (``TurnbenchExt.state``). mypy (strict equality) checks every
literal assigned to a value of this type or compared with one by ``==``."""
STATE_STRATEGIES: tuple[StateStrategy, ...] = get_args(StateStrategy)
"""The state strategies in their canonical order; :data:`turnbench.transports.STATES` is this tuple."""

Role = Literal["api", "engine"]
"""What a server stands for: ``api`` an OpenAI-like API server (safety pass, render of the conversation, the
state store, then the model); ``engine`` an inference engine behind a gateway (like vLLM: tokenize the whole
prompt, look up its prefix cache, prefill the uncached tail, decode; no safety pass, nothing stored)."""
ROLES: tuple[Role, ...] = get_args(Role)

STAGES = (
    "parse",
    "validate",
    "resolve",
    "safety",
    "render",
    "tokenize",
    "route",
    "injected",
    "prefill",
    "decode",
    "post",
)
"""Every stage a request can be timed in: ``render`` is the API role's render of the conversation, ``tokenize``
the engine role's tokenization of the whole prompt; ``injected`` is the synthetic per-request delay of
``--inject-ms N`` (docs/concepts/pipeline.md)."""
INJECTED = "injected"


@dataclass(frozen=True, kw_only=True)
class Settings:
    # network
    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = True
    api_key: str | None = None
    ca_out: str | None = None  # where the server writes its generated CA (PEM) for clients in other shells
    http2: bool = False  # https only: serve with hypercorn, HTTP/2 (h2 over TLS, h2c without) — a variant
    workers: int = 1  # server processes sharing the port (SO_REUSEPORT); a connection stays in its process
    reuse_port: bool = False  # bind with SO_REUSEPORT (set on each worker by the --workers supervisor)

    # engine
    role: Role = "api"  # api: an OpenAI-like API server; engine: an inference engine behind a gateway
    engine: str = "sim"  # sim | torch
    profile: str = "fast"
    seed: int = 0
    tokens_per_chunk: int = 1  # framing knob: tokens per delta event, the same for every transport
    # adaptive coalescing: when the consumer or the transport lags, the tokens already generated leave
    # together, up to this many per delta event (0: off, one event per tokens_per_chunk tokens always)
    coalesce_tokens: int = 0
    device: str = "auto"  # torch engine: auto | cpu | cuda
    torch_config: str = "auto"  # torch engine: cpu-tiny | cuda-0.2b | cuda-1b | cuda-8b (auto: by device)
    torch_compile: str = "auto"  # torch engine decode: none | default | max-autotune (auto: default on CUDA)

    # scripted policy: what the model does when a request's metadata does not say (benchmarks always say)
    tool_calls: int = 1  # tool calls before the answer, when the request has tools
    answer_tokens: int = 64  # words in the final answer
    arg_words: int = 3  # words per free-text tool argument

    # state (these defaults are the only ones: state.StateCache and state.StoreLimits take theirs from here)
    # the ResponseStore of store=true responses (state.open_store): memory (this process), sqlite:PATH (the
    # processes of one host) or redis://HOST:PORT/DB (any number of hosts; also rediss:// and unix://)
    store: str = "memory"
    usage_db: str = "auto"  # sqlite path for durable usage records; auto = a per-process temp file
    cache_entries: int = 256  # connection cache: responses kept per connection
    cache_bytes: int = 64 * 1024 * 1024  # connection cache: bytes kept per connection
    # responses kept, the oldest dropped first: at once in memory; SQLite and Redis trim every 256 writes
    store_max_entries: int = 20_000
    store_max_bytes: int = 128 * 1024 * 1024  # encoded bytes kept: the memory store only
    store_ttl_s: float = 86_400.0  # stored responses older than this are gone, in every store

    # pipeline switches (the ablations: docs/concepts/pipeline.md)
    connection_cache: bool = True  # off: a WS/gRPC continuation must hydrate from the store
    incremental_checks: bool = True  # validate + safety only the new items on a cached continuation
    token_cache: bool = True  # keep rendered tokens, tokenize only new text
    overlap_post: bool = True  # post of response N runs beside request N+1 (connection transports only)
    prefix_cache: bool = True  # the engine reuses KV for a history it has seen
    prefix_cache_blocks: int = 200_000  # sim engine: 64-token block hashes kept (LRU; ~25 MB at the bound)

    # limits (a request's CPU is about 0.35 ms per KB of new text in safety + render: 8 MiB is ~3 s of one core,
    # spent off the event loop; see offload_bytes)
    max_body_bytes: int = 8 * 1024 * 1024
    max_message_bytes: int = 8 * 1024 * 1024
    max_inflight_per_connection: int = 16
    max_queued_per_connection: int = 64  # requests waiting for their lane or an in-flight slot; more are refused
    max_queued_bytes_per_connection: int = 32 * 1024 * 1024  # their payload bytes together
    offload_bytes: int = 256 * 1024  # a request this large runs validate/safety/render on a worker thread
    max_context_tokens: int = 1_048_576  # a conversation longer than this is context_length_exceeded (400)
    max_input_items: int = 10_000  # items in one request's input (each costs ~0.1 ms of safety + render)
    max_lanes: int = 32
    connection_lifetime_s: float = 3600.0
    max_output_tokens: int = 4096

    # timeouts
    header_timeout_s: float = 10.0  # HTTPS: a request's headers must arrive within this (slow-header clients)
    request_timeout_s: float = 600.0
    grace_s: float = 5.0
    ping_interval_s: float | None = 20.0
    ping_timeout_s: float | None = 20.0

    # injected latency: named, zero by default, listed in every report. stage -> ms of asyncio sleep
    # (a remote dependency) and stage -> µs of CPU burned (a slower implementation; the gate's test knob).
    # The stage "injected" (a bare number: --inject-ms 5) is a synthetic regression of its own: one sleep per
    # model request, before its prefill, timed as the stage "injected".
    inject_ms: Mapping[str, float] = field(default_factory=dict)
    burn_us: Mapping[str, float] = field(default_factory=dict)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, for run records and reports (the API key is masked)."""
        out = dataclasses.asdict(self)
        out["inject_ms"] = dict(self.inject_ms)
        out["burn_us"] = dict(self.burn_us)
        if out["api_key"]:
            out["api_key"] = "***"
        return out

    def switches(self) -> dict[str, bool]:
        return {
            "connection_cache": self.connection_cache,
            "incremental_checks": self.incremental_checks,
            "token_cache": self.token_cache,
            "overlap_post": self.overlap_post,
            "prefix_cache": self.prefix_cache,
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``TURNBENCH_*`` variables, then ``overrides`` (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"TURNBENCH_{f.name.upper()}")
            if raw is not None:
                values[f.name] = parse_field(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def parse_field(name: str, raw: str) -> Any:
    """Parse a string (env var or CLI) into the type of field ``name``."""
    by_name = {f.name: f for f in fields(Settings)}
    if name not in by_name:
        raise KeyError(f"unknown setting {name!r}")
    default = by_name[name].default
    if name == "inject_ms":
        return parse_stage_map(raw)
    if name == "burn_us":
        return parse_burn_map(raw)
    if name == "role":
        return parse_role(raw)
    if isinstance(default, bool):
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float) or name in ("ping_interval_s", "ping_timeout_s"):
        return None if raw.lower() in ("", "none", "off") else float(raw)
    if name == "api_key":
        return raw or None
    return raw


def parse_role(raw: str) -> Role:
    """``api`` or ``engine`` (:data:`Role`)."""
    for role in ROLES:
        if raw.strip().lower() == role:
            return role
    raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {raw!r}")


def parse_stage_map(raw: str, *, bare: bool = True) -> dict[str, float]:
    """``"safety=5,post=2"`` → ``{"safety": 5.0, "post": 2.0}``; stages must be pipeline stages. With ``bare``,
    a number alone is the stage ``injected``: ``"5"`` → ``{"injected": 5.0}`` (one delay per model request)."""
    out: dict[str, float] = {}
    stages = STAGES if bare else tuple(s for s in STAGES if s != INJECTED)
    form = "N or STAGE=N" if bare else "STAGE=N"
    for part in filter(None, (p.strip() for p in raw.split(","))):
        stage, sep, value = part.partition("=")
        if not sep and bare:
            stage, sep, value = INJECTED, "=", part
        if not sep or stage not in stages:
            raise ValueError(f"expected {form} with STAGE in {', '.join(stages)}; got {part!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"expected {form} with N a number; got {part!r}") from None
        if not number >= 0:
            raise ValueError(f"expected a non-negative number; got {part!r}")
        out[stage] = number
    return out


def parse_burn_map(raw: str) -> dict[str, float]:
    """``burn_us``: ``"render=200"`` → ``{"render": 200.0}`` (named stages only: CPU is burned inside a stage)."""
    return parse_stage_map(raw, bare=False)
