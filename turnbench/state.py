"""Conversation state: the connection-local cache and the durable response store.

* :class:`StateCache` lives in one WebSocket connection or gRPC ``Connect`` stream and dies with it. Each
  lane (``stream_id``; ``None`` is the default lane) keeps its latest response
  (docs/protocol/websocket-mode.md), bounded by entries and bytes. A failed continuation evicts its parent on
  the same lane.
* :class:`ResponseStore` keeps responses created with ``store=true`` for any transport:
  :class:`MemoryResponseStore`, :class:`SQLiteResponseStore` (WAL, safe across processes on one host) or
  :class:`RedisResponseStore` (shared by servers on any number of hosts); :func:`open_store` picks one by URL.
  Their bounds (:class:`StoreLimits`) and the connection cache's default to the ``Settings`` fields.
* :class:`UsageLog` writes one durable usage row per response (the ``post`` stage's accounting).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import msgspec

from turnbench.errors import InvalidStreamIdError, StateLimitError, StreamLimitError
from turnbench.schema import FunctionTool, InputItem, Response
from turnbench.settings import Settings

_DEFAULTS = Settings()  # the defaults of the bounds below are the settings' (one place to change them)


@dataclass(slots=True)
class ConversationRecord:
    """Everything needed to continue after ``response``: what the connection cache holds.

    ``items`` is the whole conversation so far (inputs and outputs, as input items); ``tokens`` the rendered
    context (``None`` when not cached); ``kv`` the engine's opaque KV handle; ``route`` the routing decision.
    """

    response: Response
    items: list[InputItem]
    tools: list[FunctionTool]
    instructions: str | None
    tokens: list[int] | None = None
    tools_key: int = 0
    route: Any = None
    kv: Any = None
    lane: str | None = None
    nbytes: int = 0
    call_ids: frozenset[str] = frozenset()  # every function call of the conversation

    @property
    def response_id(self) -> str:
        return self.response.id


class StateCache:
    """Latest response per lane, for one connection. Not thread-safe: one event loop owns it."""

    def __init__(self, max_entries: int = _DEFAULTS.cache_entries, max_bytes: int = _DEFAULTS.cache_bytes) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._records: OrderedDict[str, ConversationRecord] = OrderedDict()
        self._latest: dict[str | None, str] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._records)

    def get(self, response_id: str) -> ConversationRecord | None:
        rec = self._records.get(response_id)
        if rec is None:
            self.misses += 1
            return None
        self._records.move_to_end(response_id)
        self.hits += 1
        return rec

    def check_fits(self, nbytes: int) -> None:
        """Raise :class:`StateLimitError` if a conversation of ``nbytes`` can never be cached."""
        if nbytes > self.max_bytes:
            raise StateLimitError(
                f"Conversation state of {nbytes} bytes exceeds this connection's cache limit of "
                f"{self.max_bytes} bytes. Start a new chain with full input, or use store=true.",
                "input",
            )

    def put(self, record: ConversationRecord) -> None:
        """Make ``record`` the latest of its lane; drop the lane's previous response unless another lane
        still points at it; evict least-recently-used records beyond the bounds."""
        self.check_fits(record.nbytes)
        old = self._latest.get(record.lane)
        self._latest[record.lane] = record.response_id
        if old is not None and old != record.response_id and old not in self._latest.values():
            self._drop(old)
        self._records[record.response_id] = record
        self.bytes += record.nbytes
        while len(self._records) > self.max_entries or self.bytes > self.max_bytes:
            victim = next(iter(self._records))
            self._drop(victim)
            self.evictions += 1

    def evict_on_lane(self, response_id: str, lane: str | None) -> bool:
        """Evict ``response_id`` if it was created on ``lane``: a failed same-lane continuation loses its
        parent, a failed cross-lane fork keeps it (docs/guides/forks.md). Returns: whether it was evicted."""
        rec = self._records.get(response_id)
        return rec is not None and rec.lane == lane and self.evict(response_id)

    def evict(self, response_id: str) -> bool:
        """Remove ``response_id`` (a failed continuation's parent). Returns whether it was cached."""
        if response_id not in self._records:
            return False
        self._drop(response_id)
        self.evictions += 1
        return True

    def clear(self) -> None:
        self._records.clear()
        self._latest.clear()
        self.bytes = 0

    def _drop(self, response_id: str) -> None:
        rec = self._records.pop(response_id, None)
        if rec is not None:
            self.bytes -= rec.nbytes
        for lane, rid in list(self._latest.items()):
            if rid == response_id:
                del self._latest[lane]


# ---------------------------------------------------------------------------------------------- sessions

STREAM_ID = re.compile(r"^[A-Za-z0-9_.-]{1,256}$")


def valid_lane(stream_id: object) -> str | None:
    """The lane a client event names: ``stream_id`` if it is a valid one, else the default lane (None)."""
    return stream_id if isinstance(stream_id, str) and STREAM_ID.match(stream_id) else None


def check_stream_id(stream_id: str | None) -> None:
    """Raise :class:`InvalidStreamIdError` unless ``stream_id`` is None or 1-256 of ``[A-Za-z0-9_.-]``."""
    if stream_id is not None and not STREAM_ID.match(stream_id):
        raise InvalidStreamIdError("Invalid 'stream_id': expected 1-256 characters of [A-Za-z0-9_.-].", "stream_id")


@dataclass(eq=False)
class Session:
    """One connection's (or one stateless request's) view of the service."""

    transport: str
    cache: StateCache | None
    connection: bool = False  # a persistent connection (WebSocket, gRPC Connect), cache or not
    opened_ns: int = field(default_factory=time.perf_counter_ns)
    lanes: dict[str | None, asyncio.Lock] = field(default_factory=dict)
    responses: int = 0

    def lane(self, stream_id: str | None, max_lanes: int = 32) -> asyncio.Lock:
        """The FIFO lock of a lane; requests on one lane run one at a time, in arrival order."""
        lock = self.lanes.get(stream_id)
        if lock is None:
            named = sum(1 for k in self.lanes if k is not None)
            if stream_id is not None and named >= max_lanes:
                raise StreamLimitError(
                    f"This connection already has {max_lanes} named streams; reuse one or open a new connection.",
                    "stream_id",
                )
            lock = self.lanes[stream_id] = asyncio.Lock()
        return lock

    def close(self) -> None:
        if self.cache is not None:
            self.cache.clear()


# ---------------------------------------------------------------------------------------------- store


class StoredResponse(msgspec.Struct, kw_only=True):
    """What ``store=true`` persists: the response and the conversation that led to it."""

    response: Response
    items: list[Any]  # InputItem structs; kept loose so decode validates them with the item union
    tools: list[FunctionTool] = []
    instructions: str | None = None


_stored_encoder = msgspec.json.Encoder()
_stored_decoder = msgspec.json.Decoder(StoredResponse)


class ResponseStore(Protocol):
    """Where ``store=true`` responses live. ``shared``: other processes (other hosts) read what this one
    writes, so a write must land before the response completes (the service never overlaps it then)."""

    shared: bool

    def put(self, stored: StoredResponse) -> None: ...
    def get(self, response_id: str) -> StoredResponse | None: ...
    def delete(self, response_id: str) -> bool: ...
    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """Bounds of a :class:`ResponseStore`: responses kept, their encoded bytes (the memory store only), and how
    long (s). Defaults: ``Settings.store_max_entries``, ``store_max_bytes``, ``store_ttl_s``."""

    max_entries: int = _DEFAULTS.store_max_entries
    max_bytes: int = _DEFAULTS.store_max_bytes
    ttl_s: float = _DEFAULTS.store_ttl_s


def tenant_of(api_key: str | None) -> str:
    """The store namespace of an API key (a hash: no key is written anywhere); "" without auth. Two servers
    with different keys on one store file see only their own responses."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:24] if api_key else ""


class MemoryResponseStore:
    """In-process store, bounded (:class:`StoreLimits`: the oldest responses go first). Entries are kept
    encoded, so a hydration pays the same decode as SQLite."""

    shared = False  # one process: a reader of a write still in flight waits for it in-process

    def __init__(self, limits: StoreLimits = StoreLimits(), tenant: str = "") -> None:
        self.limits = limits
        self.tenant = tenant  # one process, one key: kept for the interface's sake
        self._data: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def put(self, stored: StoredResponse) -> None:
        blob = _stored_encoder.encode(stored)
        now = time.monotonic()
        with self._lock:
            old = self._data.pop(stored.response.id, None)
            if old is not None:
                self._bytes -= len(old[1])
            self._data[stored.response.id] = (now, blob)
            self._bytes += len(blob)
            self._evict(now)

    def _evict(self, now: float) -> None:
        lim = self.limits
        while self._data:
            created, blob = next(iter(self._data.values()))
            if len(self._data) <= lim.max_entries and self._bytes <= lim.max_bytes and now - created <= lim.ttl_s:
                break
            self._data.popitem(last=False)
            self._bytes -= len(blob)

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            entry = self._data.get(response_id)
            if entry is not None and time.monotonic() - entry[0] > self.limits.ttl_s:
                self._evict(time.monotonic())
                entry = None
        return None if entry is None else decode_stored(entry[1])

    def delete(self, response_id: str) -> bool:
        """Remove ``response_id``. Returns: whether it was stored."""
        with self._lock:
            entry = self._data.pop(response_id, None)
            if entry is not None:
                self._bytes -= len(entry[1])
            return entry is not None

    def close(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0


def decode_stored(blob: bytes) -> StoredResponse:
    from turnbench.schema import convert_item

    stored = _stored_decoder.decode(blob)
    stored.items = [convert_item(i, n) if isinstance(i, dict) else i for n, i in enumerate(stored.items)]
    return stored


def _set_wal(conn: sqlite3.Connection, timeout_s: float = 30.0) -> None:
    """``PRAGMA journal_mode=WAL``, waiting while another process holds the file: switching the journal
    mode fails at once with "database is locked" instead of waiting out the busy timeout, and the ``--workers``
    processes all open the same new store and usage files together at start-up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class _SQLite:
    """One connection per thread, WAL mode: readers never block the writer, across processes too."""

    def __init__(self, path: str, schema: str) -> None:
        # ":memory:" is per connection in SQLite; share one named in-memory DB between our threads
        self.uri = path == ":memory:"
        self.path = f"file:turnbench-{id(self)}?mode=memory&cache=shared" if self.uri else path
        self._schema = schema
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._keep = self._conn()  # create the schema now (errors surface at start-up); keeps :memory: alive

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not self.uri:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False, uri=self.uri)
            _set_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
            conn.executescript(self._schema)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection (call once no thread uses the store any more)."""
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()


class SQLiteResponseStore(_SQLite):
    """Responses in SQLite (WAL), one namespace per API key (``tenant``). Bounded on disk: past ``ttl_s`` a
    response is gone, and every few hundred writes the oldest beyond ``max_entries`` are deleted."""

    PRUNE_EVERY = 256  # writes between two prunes

    def __init__(self, path: str, limits: StoreLimits = StoreLimits(), tenant: str = "") -> None:
        super().__init__(
            path,
            "CREATE TABLE IF NOT EXISTS responses (id TEXT PRIMARY KEY, created_at REAL, body BLOB NOT NULL,"
            " tenant TEXT NOT NULL DEFAULT '');",
        )
        self.limits, self.tenant = limits, tenant
        self.shared = not self.uri  # a file: every process of the host opens it
        columns = {row[1] for row in self._conn().execute("PRAGMA table_info(responses)")}
        if "tenant" not in columns:  # a file from before namespaces: its rows belong to no key
            self._conn().execute("ALTER TABLE responses ADD COLUMN tenant TEXT NOT NULL DEFAULT ''")
        self._writes = 0

    def put(self, stored: StoredResponse) -> None:
        conn = self._conn()
        conn.execute(
            "INSERT OR REPLACE INTO responses (id, created_at, body, tenant) VALUES (?, ?, ?, ?)",
            (stored.response.id, time.time(), _stored_encoder.encode(stored), self.tenant),
        )
        self._writes += 1
        if self._writes % self.PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> int:
        """Delete expired responses and the oldest beyond ``max_entries``. Returns: rows deleted."""
        conn = self._conn()
        gone = conn.execute("DELETE FROM responses WHERE created_at < ?", (time.time() - self.limits.ttl_s,)).rowcount
        gone += conn.execute(
            "DELETE FROM responses WHERE id IN (SELECT id FROM responses ORDER BY created_at DESC LIMIT -1 OFFSET ?)",
            (self.limits.max_entries,),
        ).rowcount
        return int(gone)

    def get(self, response_id: str) -> StoredResponse | None:
        row = (
            self._conn()
            .execute(
                "SELECT body FROM responses WHERE id = ? AND tenant = ? AND created_at >= ?",
                (response_id, self.tenant, time.time() - self.limits.ttl_s),
            )
            .fetchone()
        )
        return None if row is None else decode_stored(row[0])

    def delete(self, response_id: str) -> bool:
        """Remove ``response_id``. Returns: whether it was stored (in this namespace)."""
        cur = self._conn().execute("DELETE FROM responses WHERE id = ? AND tenant = ?", (response_id, self.tenant))
        return cur.rowcount > 0


class RedisResponseStore:
    """Responses in Redis (``redis://HOST:PORT/DB``), shared by server processes on any number of hosts: a
    ``store=true`` chain continues on whichever server the next request reaches, and a WebSocket reconnect to
    another host hydrates from here. One key per response (``turnbench:resp:<tenant>:<id>``) expiring after
    ``ttl_s``, and a per-namespace index (a sorted set by creation time) that every few hundred writes trims
    to ``max_entries``. The client is redis-py's synchronous one, thread-safe over its connection pool: the
    post stage writes from its writer thread, a hydration reads on the event loop as SQLite does (one
    round trip to Redis)."""

    PRUNE_EVERY = 256
    shared = True

    def __init__(self, url: str, limits: StoreLimits = StoreLimits(), tenant: str = "") -> None:
        import redis  # only a Redis store needs it

        self.url, self.limits, self.tenant = url, limits, tenant
        self._r = redis.Redis.from_url(url, socket_timeout=10.0, socket_connect_timeout=5.0)
        self._r.ping()  # a wrong URL or a Redis that is down fails at start-up, not on the first request
        self._index = f"turnbench:index:{tenant}"
        self._writes = 0
        self._lock = threading.Lock()

    def _key(self, response_id: str) -> str:
        return f"turnbench:resp:{self.tenant}:{response_id}"

    def put(self, stored: StoredResponse) -> None:
        rid = stored.response.id
        pipe = self._r.pipeline(transaction=False)
        pipe.set(self._key(rid), _stored_encoder.encode(stored), px=max(1, int(self.limits.ttl_s * 1000)))
        pipe.zadd(self._index, {rid: time.time()})
        pipe.execute()
        with self._lock:
            self._writes += 1
            due = self._writes % self.PRUNE_EVERY == 0
        if due:
            self.prune()

    def prune(self) -> int:
        """Forget the index entries of expired responses and delete the oldest beyond ``max_entries``.
        Returns: responses deleted."""
        self._r.zremrangebyscore(self._index, "-inf", time.time() - self.limits.ttl_s)
        excess = int(self._r.zcard(self._index)) - self.limits.max_entries
        if excess <= 0:
            return 0
        oldest = [m.decode() if isinstance(m, bytes) else str(m) for m in self._r.zrange(self._index, 0, excess - 1)]
        pipe = self._r.pipeline(transaction=False)
        pipe.delete(*(self._key(rid) for rid in oldest))
        pipe.zrem(self._index, *oldest)
        gone = pipe.execute()[0]
        return int(gone)

    def get(self, response_id: str) -> StoredResponse | None:
        blob = self._r.get(self._key(response_id))
        return None if blob is None else decode_stored(bytes(blob))  # type: ignore[arg-type]

    def delete(self, response_id: str) -> bool:
        """Remove ``response_id``. Returns: whether it was stored (in this namespace)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.delete(self._key(response_id))
        pipe.zrem(self._index, response_id)
        return bool(pipe.execute()[0])

    def close(self) -> None:
        self._r.close()


def open_store(url: str, *, limits: StoreLimits = StoreLimits(), tenant: str = "") -> ResponseStore:
    """``memory``, ``sqlite:PATH`` or ``redis://HOST:PORT/DB``, bounded by ``limits``, in the namespace
    ``tenant``."""
    if url == "memory":
        return MemoryResponseStore(limits, tenant)
    if url.startswith("sqlite:"):
        return SQLiteResponseStore(url.removeprefix("sqlite:"), limits, tenant)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisResponseStore(url, limits, tenant)
    raise ValueError(f"unknown store {url!r}: expected 'memory', 'sqlite:PATH' or 'redis://HOST:PORT/DB'")


@dataclass(slots=True)
class UsageRow:
    response_id: str
    model: str
    transport: str
    state: str
    input_tokens: int
    cached_tokens: int
    output_tokens: int
    status: str
    created_at: float = field(default_factory=time.time)
    arrival: int = 0  # the request's place in the server's order of arrival (1, 2, …; per process)
    request_id: str | None = None  # the caller's id for it (the x-request-id header), when it sent one
    endpoint: str = "responses"  # responses or chat.completions
    role: str = "api"  # the server's role (Settings.role)
    elapsed_ms: float = 0.0  # from its parse to its terminal event: the server's time for it
    stages: str = "{}"  # its stage timings, JSON: {stage: {wall_ns, cpu_ns, items, tokens, chars}}


_USAGE_COLUMNS = (
    ("response_id", "TEXT PRIMARY KEY"),
    ("created_at", "REAL"),
    ("model", "TEXT"),
    ("transport", "TEXT"),
    ("state", "TEXT"),
    ("input_tokens", "INT"),
    ("cached_tokens", "INT"),
    ("output_tokens", "INT"),
    ("status", "TEXT"),
    ("arrival", "INT"),
    ("request_id", "TEXT"),
    ("endpoint", "TEXT"),
    ("role", "TEXT"),
    ("elapsed_ms", "REAL"),
    ("stages", "TEXT"),
)


class UsageLog(_SQLite):
    """Durable per-response accounting, written by the ``post`` stage: one row per model request, with its
    order of arrival, the caller's request id and its stage timings, so a request a gateway made can be found
    again (docs/guides/gateway-engine.md). A file written by an older version gains the new columns."""

    def __init__(self, path: str) -> None:
        columns = ", ".join(f"{name} {kind}" for name, kind in _USAGE_COLUMNS)
        super().__init__(path, f"CREATE TABLE IF NOT EXISTS usage ({columns});")
        conn = self._conn()
        have = {r[1] for r in conn.execute("PRAGMA table_info(usage)").fetchall()}
        for name, kind in _USAGE_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE usage ADD COLUMN {name} {kind}")

    def write(self, row: UsageRow) -> None:
        names = [name for name, _ in _USAGE_COLUMNS]
        self._conn().execute(
            f"INSERT OR REPLACE INTO usage ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            tuple(getattr(row, name) for name in names),
        )

    def count(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM usage").fetchone()[0])

    def rows(self) -> list[dict[str, Any]]:
        """Every row, in order of arrival (then of writing: rows of an older file have no arrival)."""
        cur = self._conn().execute("SELECT * FROM usage ORDER BY arrival, created_at")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
