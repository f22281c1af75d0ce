"""Scenarios: one agent workload as a data file (``loadtests/workload/scenarios/<name>.toml``), loaded and validated.

A scenario says *what* an agent does (tool calls per rollout, tool output sizes and latency, the model
profile) and *how much* load to put on a transport (closed loop: ``concurrency`` rollouts in flight; open
loop: Poisson arrivals at ``arrival_rate_rps``). The runner crosses it with transports and state strategies
into cells. Every field is checked at load time; a bad file fails with its path and the field named::

    name = "agent-20"
    description = "..."
    tool_calls = 20
    tool_output_bytes = 4096     # median size of one tool output, in bytes
    tool_output_sigma = 0.8      # lognormal spread around it (a coding agent's long tail); 0 = fixed
    tool_latency_ms = 0          # explicit extra time per tool call, in ms
    profile = "fast"             # sim profile: instant | frontier | fast | h200-8b | calibration
    rollouts = 6                 # measured rollouts per cell
    concurrency = 2              # closed loop: rollouts in flight
    # arrival_rate_rps = 2.0     # open loop instead: Poisson arrivals per second
    warmup = 1                   # rollouts per cell run first and dropped from summaries
    rounds = 3                   # cells interleaved A B C A B C … in this many rounds
    tls = true
    seed = 20
    answer_tokens = 64           # tokens of the final answer
    compact_every = 0            # compact the history every K tool-calling turns (0: never), as a coding
                                 # agent does: POST /v1/responses/compact, then a new chain from its output

    [states]                     # state strategies per transport (defaults below)
    https = ["full", "store"]
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeGuard, cast

from turnbench.transports import STATES, TRANSPORTS, get_transport

__all__ = [
    "SCENARIO_DIR",
    "Scenario",
    "ScenarioError",
    "State",
    "available_scenarios",
    "is_state",
    "load_scenario",
    "states_for",
]

State = Literal["full", "store", "connection"]
"""A state strategy: one of :data:`turnbench.transports.STATES` (the core names them, as plain strings)."""


def is_state(name: str) -> TypeGuard[State]:
    """Whether ``name`` is a state strategy of :data:`turnbench.transports.STATES`."""
    return name in STATES


SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
PROFILES = ("instant", "frontier", "fast", "burst", "h200-8b", "calibration")
"""The sim engine's profiles (turnbench.engine.sim.PROFILES), named here so the CLI stays light."""


class ScenarioError(ValueError):
    """A scenario file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True)
class Conversation:
    """One recorded or imported agent conversation, as a replay needs it (``loadtests.workload.trace``): the size of
    each tool output the client sent back, in order, the client's time before each of those requests (its
    tool and think time), and the final answer's length."""

    tool_output_bytes: tuple[int, ...]
    gaps_ms: tuple[float, ...]
    answer_tokens: int = 64


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """One workload. Units are in the field names; see the module docstring for each field."""

    name: str
    description: str = ""
    tool_calls: int = 20
    tool_output_bytes: int = 4096
    tool_output_sigma: float = 0.0
    tool_latency_ms: float = 0.0
    profile: str = "fast"
    rollouts: int = 6
    concurrency: int = 1
    arrival_rate_rps: float | None = None
    warmup: int = 1
    rounds: int = 3
    tls: bool = True
    seed: int = 0
    answer_tokens: int = 64
    compact_every: int = 0
    states: Mapping[str, tuple[State, ...]] = field(default_factory=dict)
    # a trace's conversations (``turnbench run --trace``): rollout k replays conversation k mod len; not a
    # TOML field
    replay: tuple[Conversation, ...] = ()

    @property
    def mode(self) -> str:
        """``"open"`` (Poisson arrivals) when an arrival rate is set, else ``"closed"``."""
        return "open" if self.arrival_rate_rps is not None else "closed"

    def replace(self, **changes: Any) -> Scenario:
        """A copy with fields changed, validated again."""
        return validate(dataclasses.replace(self, **changes), source=f"{self.name} (overridden)")

    def metadata(self, index: int = 0) -> dict[str, str]:
        """What the scripted model reads from request metadata: tool calls, seed and answer length (for a
        replay, those of the conversation rollout ``index`` replays)."""
        calls, answer = self.tool_calls, self.answer_tokens
        if self.replay:
            conv = self.replay[index % len(self.replay)]
            calls, answer = len(conv.tool_output_bytes), conv.answer_tokens
        return {"tool_calls": str(calls), "seed": str(self.seed), "answer_tokens": str(answer)}

    def as_dict(self) -> dict[str, Any]:
        """JSON-able full spec, for ``run.json`` (a replay's conversations summarized, not listed)."""
        out = dataclasses.asdict(self)
        out["states"] = {k: list(v) for k, v in self.states.items()}
        out["mode"] = self.mode
        out["replay"] = {"conversations": len(self.replay)} if self.replay else None
        return out


def states_for(scenario: Scenario, transport: str) -> tuple[State, ...]:
    """The state strategies a cell grid uses for ``transport``: the scenario's, else the transport table's."""
    if transport in scenario.states:
        return scenario.states[transport]
    return tuple(s for s in get_transport(transport).states if is_state(s))


_INT_FIELDS = {
    "tool_calls": 0,
    "tool_output_bytes": 0,
    "rollouts": 1,
    "concurrency": 1,
    "warmup": 0,
    "rounds": 1,
    "seed": 0,
    "answer_tokens": 1,
    "compact_every": 0,
}  # field -> minimum
_FLOAT_FIELDS = {"tool_output_sigma": 0.0, "tool_latency_ms": 0.0}
_HINTS = {"compact_every": " (the tool-calling turns between two compactions; 0: never)"}


def _fail(source: str, message: str) -> ScenarioError:
    return ScenarioError(f"scenario {source}: {message}")


def validate(s: Scenario, *, source: str) -> Scenario:
    """Check every field of ``s``; raise :class:`ScenarioError` naming ``source`` and the field."""
    if not s.name or not all(c.isalnum() or c in "-_." for c in s.name):
        raise _fail(source, f"'name' must be non-empty letters, digits, '-', '_' or '.'; got {s.name!r}")
    for name, lo in _INT_FIELDS.items():
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise _fail(source, f"'{name}' must be an integer >= {lo}{_HINTS.get(name, '')}; got {v!r}")
    for name, flo in _FLOAT_FIELDS.items():
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int | float) or v < flo:
            raise _fail(source, f"'{name}' must be a number >= {flo:g}; got {v!r}")
    rate = s.arrival_rate_rps
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
        raise _fail(source, f"'arrival_rate_rps' must be a number > 0 (or absent for a closed loop); got {rate!r}")
    if s.profile not in PROFILES and not (isinstance(s.profile, str) and s.profile.startswith("file:")):
        raise _fail(
            source,
            f"'profile' must be one of {', '.join(PROFILES)} or file:PATH (a profile `turnbench calibrate` "
            f"wrote); got {s.profile!r}",
        )
    if isinstance(s.profile, str) and s.profile.startswith("file:") and not Path(s.profile[5:]).is_file():
        raise _fail(source, f"'profile' {s.profile!r}: no such file")
    if not isinstance(s.tls, bool):
        raise _fail(source, f"'tls' must be true or false; got {s.tls!r}")
    if s.compact_every and not s.replay and s.compact_every > s.tool_calls:
        raise _fail(
            source,
            f"'compact_every' ({s.compact_every}) must be <= 'tool_calls' ({s.tool_calls}): a rollout of "
            f"{s.tool_calls} tool calls would never compact (0 turns compaction off)",
        )
    if s.rollouts < s.rounds:
        raise _fail(
            source,
            f"'rollouts' ({s.rollouts}) must be >= 'rounds' ({s.rounds}): each round runs "
            "at least one rollout per cell",
        )
    for transport, states in s.states.items():
        bad = [x for x in states if x not in STATES]
        if not states or bad:
            raise _fail(
                source, f"'states.{transport}' must be a non-empty list of {', '.join(STATES)}; got {list(states)!r}"
            )
        row = TRANSPORTS.get(transport)
        if row is not None and "connection" in states and not row.supports_connection_state:
            raise _fail(source, f"'states.{transport}' cannot hold 'connection': {transport} has no connection state")
    return s


def parse_scenario(data: Mapping[str, Any], *, source: str) -> Scenario:
    """Build a validated :class:`Scenario` from parsed TOML; unknown keys are errors (typos must not pass)."""
    known = {f.name for f in dataclasses.fields(Scenario)} - {"replay"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(source, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "name" not in data:
        raise _fail(source, "'name' is required")
    values = dict(data)
    for name in _FLOAT_FIELDS:
        if isinstance(values.get(name), int) and not isinstance(values.get(name), bool):
            values[name] = float(values[name])
    raw_states = values.pop("states", {})
    if not isinstance(raw_states, Mapping):
        raise _fail(source, f"'states' must be a table of transport = [states]; got {raw_states!r}")
    states: dict[str, tuple[State, ...]] = {}
    for transport, lst in raw_states.items():
        if not isinstance(lst, list) or not all(isinstance(x, str) for x in lst):
            raise _fail(source, f"'states.{transport}' must be a list of strings; got {lst!r}")
        states[str(transport)] = cast("tuple[State, ...]", tuple(lst))  # validate() checks each one
    for key, kind in (("name", str), ("description", str), ("profile", str)):
        if key in values and not isinstance(values[key], kind):
            raise _fail(source, f"'{key}' must be a string; got {values[key]!r}")
    return validate(Scenario(**values, states=states), source=source)


def available_scenarios(directory: Path = SCENARIO_DIR) -> list[str]:
    """Names of the scenario files shipped in ``directory``, sorted."""
    return sorted(p.stem for p in directory.glob("*.toml"))


def load_scenario(name_or_path: str | Path, directory: Path = SCENARIO_DIR) -> Scenario:
    """Load a scenario by name (``agent-20``) or by path to a ``.toml`` file.

    Raises: :class:`ScenarioError` for a missing file, bad TOML or an invalid field.
    """
    p = Path(name_or_path)
    if p.suffix != ".toml":
        p = directory / f"{name_or_path}.toml"
    if not p.is_file():
        raise ScenarioError(
            f"no scenario {str(name_or_path)!r}; available: {', '.join(available_scenarios(directory)) or '(none)'}"
        )
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {p}: invalid TOML: {exc}") from exc
    scenario = parse_scenario(data, source=str(p))
    if p.parent == directory and scenario.name != p.stem:
        raise _fail(str(p), f"'name' ({scenario.name!r}) must match the file name ({p.stem!r})")
    return scenario
