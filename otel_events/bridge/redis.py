"""``RedisBroker``: the bridge's threads in Redis, shared by every replica.

Per thread (keys share the hash tag ``{thread_id}``):

* ``<prefix>:{t}:m``, a hash: ``epoch``, ``top`` (last seq), ``lo`` (first seq held for
  replay), ``ck`` (seq of the checkpoint), ``ms`` (last arrival, Redis clock), ``b``
  (bytes of JSON appended in this epoch).
* ``<prefix>:{t}:s``, the stream: entry id ``<seq>-<arrival ms>``, fields ``t`` (type),
  ``d`` (the event's JSON with the bridge's seq) and ``o`` (``b`` before it). Ids lead
  with the seq so a resume is one ``XRANGE`` from ``seq + 1``; the arrival time in the
  id's second part is what age retention reads, ``o`` what byte retention reads.
* ``<prefix>:{t}:d``, a sorted set: producer lines accepted recently (``pseq:digest``,
  scored by the bridge seq they got), the de-duplication window.
* ``<prefix>:{t}:k``: the checkpoint, the thread's folded state as of seq ``ck``.
* ``<prefix>:threads``, a sorted set of thread ids scored by creation time: the
  registry behind ``GET /v1/threads`` (oldest first, as in memory) and the thread limit.
* ``<prefix>:limits``, a hash: the retention, idle expiry and thread limit that every
  append applies, whoever makes it (a replica or a ``RedisSink``).
* Channel ``<prefix>:{t}:n``: every append publishes ``epoch first lo`` and then each
  event it numbered (type and JSON, one a line).

The layout and the append script are defined in ``otel_events.redis_sink``, shared
with ``RedisSink`` (an emitter writing here directly).

**One atomic step per append.** One Lua script numbers the lines, skips producer
retries, ``XADD``\\ s, trims, sets the keys' TTL and publishes, so two replicas ingesting
one thread at once can never give two events one seq, and a retry that lands on another
replica is still recognised (the digest is a hash of the line that every process
computes alike, unlike Python's ``hash``).

**One set of limits.** A replica stores its limits when it first reaches Redis (its
first append, readiness check or sweep) and the append script applies the stored ones,
so replicas and sinks told otherwise still trim alike. Replicas started with different
limits: the one started last wins, and logs a warning that it replaced others; the
others log one when their sweep finds limits not theirs, and sweep by the stored ones.
A replica's sweep (and its first append after a flush) stores its limits again if they
are gone. Each replica's mirror still holds its own ``retention_count`` of events.

**Epochs.** The epoch lives in the meta hash. A thread whose meta hash is missing (new,
expired, Redis flushed or restarted without persistence, evicted) starts over with a
fresh epoch and its leftovers are deleted, so a position from before can never be read
in the new numbering.

**Snapshots: a checkpoint in Redis plus the stream's tail.** The state is folded from
*every* event, so rebuilding it from the stream alone would be wrong once retention has
trimmed the stream; writing the whole state on every append would cost O(state) per
request and race between replicas. So a replica that appends writes a checkpoint (the
folded state, compare-and-set on its seq and epoch) every ``checkpoint_every`` events
(and every replica's sweep checkpoints threads that others appended to without one),
the stream is never trimmed past the checkpoint (replay still honours the retention,
through ``lo``), and any replica gets the state as checkpoint + the tail after it. The
fold is deterministic, so every replica answers alike.

**Fan-out.** Each replica reads each thread that has readers on it once: it subscribes
to the thread's channel, and a notification that follows on from its mirror is appended
as it comes (the events travel in it, as in Centrifugo's engine); otherwise (a new
subscription, a reconnection, events missed) one ``XRANGE`` from the mirror's position
fetches whatever is held. The mirror is a local ``EventLog`` of the retained window,
which every local reader follows with a cursor, so the per-reader cost and the overflow
policy are the memory broker's. One pub/sub connection serves every watched thread
(``XREAD BLOCK`` would hold a connection per thread, and a read per batch).

**Faults.** Redis unreachable: ``append`` raises ``BrokerUnavailable`` (the routes answer
503 with ``Retry-After``), ``ready()`` is false, and readers stay parked (their SSE
streams keep their heartbeats); when Redis is back the pub/sub connection is rebuilt,
every watched thread is fetched again, and readers resume, or get a reset if the epoch
changed meanwhile. Redis reachable but refusing for now (full under ``noeviction``, a
replica in a failover, busy, loading: ``refusal``) is answered alike, as ``RedisRefused``
(a ``BrokerUnavailable`` saying why, never quoting the error's text, which may hold data),
and ``ready()`` is false then too.

Needs a standalone Redis (or a primary behind Sentinel) of version 6.2 or later: the
scripts reach the registry and other threads' keys, which Redis Cluster does not allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from otel_events.bridge.broker import (
    CURSOR_AHEAD,
    FELL_BEHIND,
    Appended,
    Batch,
    BrokerUnavailable,
    EventLine,
    Position,
    Reset,
    TooManyThreads,
    resume_at,
)
from otel_events.bridge.memory import valid_thread_id
from otel_events.bridge.snapshot import ItemState, ThreadSnapshot, TurnState
from otel_events.log import Cursor, EventLog
from otel_events.protocol import parse_event
from otel_events.redis_sink import (
    APPEND_LUA,
    LIMIT_FIELDS,
    LIMITS_LUA,
    TRIM_LUA,
    append_args,
    assigned_seqs,
    channel_name,
    dedup_member,
    event_rest,
    limit_values,
    limits_key,
    parse_notification,
    refusal,
    registry_key,
    stream_keys,
)
from otel_events.retention import DEFAULTS, Retention

if TYPE_CHECKING:
    from otel_events.bridge.settings import BridgeSettings

__all__ = ["RedisBroker", "RedisReader", "RedisRefused", "decode_state", "encode_state",
           "line_digest"]

_log = logging.getLogger(__name__)

# Errors that mean "Redis cannot be reached now" (as opposed to a bug in a script).
_UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)
# ...and those among which a reachable Redis says it refuses for now (``refusal``: full
# under noeviction, a replica in a failover, busy with a script, loading).
_UNAVAILABLE = (*_UNREACHABLE, ResponseError)


class RedisRefused(BrokerUnavailable):
    """Redis is reachable but refuses for now; the text says why (never the data)."""


def _unavailable(exc: BaseException) -> BrokerUnavailable | None:
    """``exc`` as the broker's "try again later", or ``None`` if it is something else."""
    why = refusal(exc)
    if why is not None:
        return RedisRefused(why)
    if isinstance(exc, _UNREACHABLE):
        return BrokerUnavailable(f"Redis is unreachable ({type(exc).__name__})")
    return None


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """Redis unreachable or refusing: ``BrokerUnavailable`` (the routes answer 503 with
    Retry-After); any other error goes on as it is."""
    try:
        yield
    except _UNAVAILABLE as exc:
        error = _unavailable(exc)
        if error is None:
            raise
        raise error from None

# -- Lua -------------------------------------------------------------------------------

_TRIM_SCRIPT_LUA = """
-- KEYS: meta, stream, dedup. ARGV: retention count, retention age ms, channel,
-- retention bytes (0: none).
-- Its first write must stay TRIM_LUA's XTRIM: Redis full (noeviction) refuses a script
-- whose first write is one that may grow memory (HSET), and runs one that has written
-- to its end, so this trim frees memory even then.
local meta, stream, dedup = KEYS[1], KEYS[2], KEYS[3]
local retention, age, max_bytes = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
local state = redis.call('HMGET', meta, 'epoch', 'top', 'lo', 'ck', 'b')
if not state[1] then return 0 end
local top, lo, ck = tonumber(state[2]), tonumber(state[3]), tonumber(state[4])
local total = tonumber(state[5]) or 0
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
""" + TRIM_LUA + """
if lo ~= tonumber(state[3]) then
  redis.call('HSET', meta, 'lo', lo)
  -- Replicas that mirror the thread forget the aged events too.
  redis.call('PUBLISH', ARGV[3], state[1] .. ' ' .. (top + 1) .. ' ' .. lo)
end
return 1
"""

_CHECKPOINT_LUA = """
-- KEYS: meta, stream, checkpoint. ARGV: epoch, seq, state, ttl ms (0: none).
-- Compare-and-set: only a newer checkpoint of the same epoch replaces the one held.
local meta, stream, ckpt = KEYS[1], KEYS[2], KEYS[3]
local state = redis.call('HMGET', meta, 'epoch', 'ck', 'lo', 'b')
local seq = tonumber(ARGV[2])
if state[1] ~= ARGV[1] or tonumber(state[2]) >= seq then return 0 end
local keep = tonumber(state[3])
if seq + 1 < keep then keep = seq + 1 end
-- A full Redis (noeviction) refuses a script whose first write may grow memory (SET)
-- and runs one that has written to its end. The stream is kept from the checkpoint on
-- (a reset folds from there), so a thread never checkpointed (appended by a RedisSink)
-- can be trimmed only once one is written: trim first, so that a full Redis takes it,
-- when the trim frees more than the checkpoint adds. Freed is counted in bytes of JSON
-- (each entry's 'o' is the bytes appended before it): entries hold more than their
-- JSON, but '~' frees whole macro-nodes only, so it may free up to one node less.
-- Otherwise SET first: a full Redis refuses the checkpoint, as any write that grows.
local function offset(found)
  if found[1] == nil then return nil end
  return tonumber(found[1][2][6])
end
local from = offset(redis.call('XRANGE', stream, '-', '+', 'COUNT', 1))
local upto = offset(redis.call('XRANGE', stream, keep, '+', 'COUNT', 1))
if upto == nil then upto = tonumber(state[4]) end
local trimmed = false
if from ~= nil and upto ~= nil
    and upto - from > #ARGV[3] - redis.call('STRLEN', ckpt) then
  redis.call('XTRIM', stream, 'MINID', '~', keep)
  trimmed = true
end
redis.call('SET', ckpt, ARGV[3])
local ttl = tonumber(ARGV[4])
if ttl > 0 then redis.call('PEXPIRE', ckpt, ttl) end
redis.call('HSET', meta, 'ck', seq)
if not trimmed then redis.call('XTRIM', stream, 'MINID', '~', keep) end
return 1
"""


# -- helpers -----------------------------------------------------------------------------

def line_digest(line: EventLine, rest: bytes) -> str | None:
    """The de-duplication member of an ingested line (see ``dedup_member``)."""
    if line.digest is None:
        return None
    return dedup_member(line.event.seq, rest)


def _line(line: EventLine, thread_id: str) -> tuple[str, bytes, str | None]:
    rest = event_rest(line.raw, thread_id)
    return line.event.type, rest, line_digest(line, rest)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def _int(value: bytes | str | int | None, default: int = 0) -> int:
    return default if value is None else int(value)


def _describe(limits: Sequence[int]) -> str:
    return " ".join(f"{name}={value}" for name, value in zip(LIMIT_FIELDS, limits, strict=True))


def _seq_of(stream_id: bytes | str) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    return int(text.split("-", 1)[0])


# -- the folded state's checkpoint --------------------------------------------------------

# ThreadSnapshot's attributes that hold objects; every other attribute must be plain JSON.
_SNAPSHOT_OBJECTS = frozenset({"turns", "loose", "_running", "_dropped_ids"})


def _slots(value: TurnState | ItemState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in type(value).__slots__:
        field = getattr(value, name)
        if name == "items":
            out[name] = [_slots(item) for item in field.values()]
        else:
            out[name] = field
    return out


def _turn(data: dict[str, Any]) -> TurnState:
    turn = TurnState(data["id"])
    for name, value in data.items():
        if name == "items":
            items: OrderedDict[str, ItemState] = OrderedDict()
            for item_data in value:
                item = ItemState(item_data["id"], item_data["type"])
                for item_name, item_value in item_data.items():
                    setattr(item, item_name, item_value)
                items[item.id] = item
            turn.items = items
        else:
            setattr(turn, name, value)
    return turn


def encode_state(snapshot: ThreadSnapshot) -> bytes:
    """The fold's whole state as JSON (not the ``to_dict`` report: the fold goes on
    from it). Raises ``TypeError`` on an attribute it does not know how to keep, so a
    new kind of field fails the round-trip tests instead of being lost."""
    state: dict[str, Any] = {}
    for name, value in vars(snapshot).items():
        if name == "turns":
            state[name] = [_slots(turn) for turn in value.values()]
        elif name == "loose":
            state[name] = _slots(value)
        elif name == "_running":
            if value is not None and snapshot.turns.get(value.id) is not value:
                raise TypeError("the running turn is not among the kept turns")
            state[name] = None if value is None else value.id
        elif name == "_dropped_ids":
            state[name] = list(value)
        else:
            state[name] = value
    # orjson refuses what is not plain JSON (with TypeError's subclass JSONEncodeError).
    return orjson.dumps(state)


def decode_state(data: bytes) -> ThreadSnapshot:
    """The inverse of ``encode_state``."""
    state = orjson.loads(data)
    snapshot = ThreadSnapshot(state["thread_id"], max_turns=state["max_turns"],
                              max_items=state["max_items"])
    for name, value in state.items():
        if name not in _SNAPSHOT_OBJECTS:
            setattr(snapshot, name, value)
    snapshot.turns = OrderedDict((turn["id"], _turn(turn)) for turn in state["turns"])
    snapshot.loose = _turn(state["loose"])
    running = state["_running"]
    snapshot._running = None if running is None else snapshot.turns[running]
    snapshot._dropped_ids = dict.fromkeys(state["_dropped_ids"])
    return snapshot


class _Folded:
    """A thread's state as this replica last folded it, and its JSON for one seq."""

    __slots__ = ("epoch", "json", "snapshot")

    def __init__(self, epoch: str, snapshot: ThreadSnapshot) -> None:
        self.epoch = epoch
        self.snapshot = snapshot
        self.json: tuple[int, bytes] | None = None

    @property
    def seq(self) -> int:
        return self.snapshot.seq

    def apply(self, seq: int, json: bytes) -> bool:
        """Fold the stream entry ``seq`` if it is the next one; False if it is past it."""
        if seq <= self.snapshot.seq:
            return True  # folded already (by a concurrent fold or the appender)
        if seq != self.snapshot.seq + 1:
            return False
        self.snapshot.apply(parse_event(json), seq)
        return True

    def to_json(self) -> bytes:
        seq = self.snapshot.seq
        cached = self.json
        if cached is None or cached[0] != seq:
            cached = self.json = (seq, self.snapshot.to_json())
        return cached[1]


# -- the local mirror of a watched thread ---------------------------------------------------

class _Watch:
    """A thread this replica reads for its local readers: channel, mirror, fetch task."""

    def __init__(self, thread_id: str, channel: str) -> None:
        self.thread_id = thread_id
        self.channel = channel
        self.readers = 0
        self.idle_since: float | None = None
        #: ``None`` until a fetch found the thread.
        self.epoch: str | None = None
        self.log: EventLog | None = None
        #: A fetch has completed since the channel was subscribed.
        self.known = False
        self.dirty = asyncio.Event()
        self.lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None
        self.shared: dict[Any, Any] = {}
        self._changed: list[asyncio.Future[None]] = []

    def changed(self) -> None:
        """Wake the readers waiting for the thread to appear or its mirror to change."""
        waiters, self._changed = self._changed, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_changed(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changed.append(fut)
        try:
            await fut
        finally:
            with contextlib.suppress(ValueError):
                self._changed.remove(fut)

    def replace(self, epoch: str, capacity: int, start: int) -> EventLog:
        """A new mirror (new epoch, or events this replica missed): readers of the old one
        finish it, then place themselves again from their position."""
        if self.log is not None:
            self.log.close()
        self.epoch = epoch
        self.log = EventLog(capacity, start=start)
        self.changed()
        return self.log


# -- readers ---------------------------------------------------------------------------------

class RedisReader:
    """A client's reader of one thread: a cursor on this replica's mirror of it."""

    def __init__(self, broker: RedisBroker, thread_id: str, position: Position | None) -> None:
        self._broker = broker
        self._thread_id = thread_id
        self._position = position
        self._watch: _Watch | None = None
        self._cursor: Cursor | None = None
        self._epoch = ""
        self._closed = False

    async def next(self) -> Batch | Reset | None:
        broker = self._broker
        while True:
            if self._closed or broker.closed:
                return None
            watch = self._watch
            if watch is None:
                watch = self._watch = broker._watch(self._thread_id)
            cursor = self._cursor
            if cursor is None:
                log = watch.log
                if not watch.known or log is None:
                    # Not fetched yet, or no such thread: wait without creating it.
                    await watch.wait_changed()
                    continue
                reset = await self._attach(watch, log)
                if reset is not None:
                    return reset
                continue
            start = cursor.position
            entries, gap = cursor.read(broker.batch)
            if gap is not None:
                cursor.skip(gap)
                reset = await broker._reset(self._thread_id, FELL_BEHIND)
                if reset is None or reset.epoch != self._epoch:
                    self._detach(Position(cursor.position - 1, self._epoch))
                    continue
                cursor.position = reset.seq + 1
                return reset
            if entries:
                return Batch(self._epoch, entries, start, cursor.position, watch.shared)
            if cursor.at_end():
                if broker.closed or self._closed:
                    return None
                # The mirror was replaced (new epoch, or events this replica missed):
                # place the cursor again from where the client is.
                self._detach(Position(cursor.position - 1, self._epoch))
                continue
            await cursor.wait()

    def _detach(self, position: Position) -> None:
        if self._cursor is not None:
            self._cursor.close()
        self._cursor = None
        self._position = position

    async def _attach(self, watch: _Watch, log: EventLog) -> Reset | None:
        """Place the cursor from the client's position; a reset if it cannot resume."""
        broker = self._broker
        assert watch.epoch is not None
        start = resume_at(self._position, watch.epoch, log.first_seq, log.next_seq)
        if start == CURSOR_AHEAD:
            # The mirror may lag the stream (the client got its id from another replica a
            # moment ago): catch up before calling the cursor ahead.
            try:
                await broker._refresh(watch)
            except (*_UNREACHABLE, RedisError):
                await asyncio.sleep(0.5)  # Redis is away: the stream waits for it
                return None
            if watch.log is not log:
                return None  # replaced meanwhile: place again
            start = resume_at(self._position, watch.epoch, log.first_seq, log.next_seq)
        soft_lag = max(1, log.capacity // 2)
        if isinstance(start, str):
            reset = await broker._reset(self._thread_id, start)
            if reset is None or reset.epoch != watch.epoch or watch.log is not log:
                # The thread changed meanwhile (gone, or a new epoch the mirror has not
                # caught up with): wait for the mirror to follow, then place again.
                if watch.log is log:
                    watch.dirty.set()
                    await watch.wait_changed()
                return None
            self._epoch = reset.epoch
            self._cursor = log.cursor(after=reset.seq, soft_lag=soft_lag)
            self._position = Position(reset.seq, reset.epoch)
            return reset
        self._epoch = watch.epoch
        self._cursor = log.cursor(after=start - 1, soft_lag=soft_lag)
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._cursor is not None:
            self._cursor.close()
        if self._watch is not None:
            self._broker._unwatch(self._watch)
            self._watch.changed()


# -- the broker ---------------------------------------------------------------------------------

class RedisBroker:
    """Threads kept in Redis (Streams) and shared by every bridge replica on it.

    The retention defaults are the deployed bridge's (``Retention``); the limits go to
    Redis on first contact, where every writer applies them (see the module docstring).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "otel-events",
        retention_count: int = DEFAULTS.count,
        retention_age: float | None = DEFAULTS.age,
        retention_bytes: int | None = DEFAULTS.bytes,
        idle_expiry: float | None = DEFAULTS.idle_expiry,
        max_threads: int = DEFAULTS.max_threads,
        max_turns: int = 20,
        batch: int = 512,
        checkpoint_every: int | None = None,
        timeout: float = 5.0,
        client: Redis | None = None,
    ) -> None:
        if retention_count < 2:
            raise ValueError("retention_count must be at least 2")
        self.prefix = prefix
        #: This replica's limits (the total is Redis's ``maxmemory``, not ours); byte
        #: retention keeps the newest event of a thread whatever its size.
        self.retention = Retention(
            count=retention_count, age=retention_age, bytes=retention_bytes,
            total_bytes=None, idle_expiry=idle_expiry, max_threads=max_threads)
        self._own_limits = limit_values(self.retention)
        #: The limits in force as last read from Redis (``LIMIT_FIELDS``): this
        #: replica's until a sweep finds another replica's stored.
        self.limits_in_force = self._own_limits
        self._limits_stored = False
        self.max_turns = max_turns
        self.batch = batch
        #: Events between checkpoints of the folded state: the stream holds at most this
        #: many events more than the retention (a quarter more by default), and a
        #: checkpoint (up to 20 turns of 200 items) is encoded once per this many events.
        self.checkpoint_every = checkpoint_every or max(1, retention_count // 4)
        self.fetch_count = max(retention_count, 1024)
        # No retries inside redis-py: a script retried after a timeout could run twice (a
        # producer's retry is de-duplicated, a line without producer seq would not be);
        # the caller answers 503 and the producer retries. A pooled connection that Redis
        # closed is replaced when it is taken from the pool.
        self._client: Redis = client or Redis.from_url(
            url, retry=Retry(NoBackoff(), 0), socket_timeout=timeout,
            socket_connect_timeout=timeout, health_check_interval=0)
        self._append_script = self._client.register_script(APPEND_LUA)
        self._trim_script = self._client.register_script(_TRIM_SCRIPT_LUA)
        self._checkpoint_script = self._client.register_script(_CHECKPOINT_LUA)
        self._limits_script = self._client.register_script(LIMITS_LUA)
        self._registry = registry_key(prefix)
        self._limits_key = limits_key(prefix)
        self._watches: dict[str, _Watch] = {}
        self._by_channel: dict[bytes, _Watch] = {}
        self._folds: dict[str, _Folded] = {}
        self._pubsub: PubSub | None = None
        self._pubsub_up = False
        self._listener: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._last_sweep = time.monotonic()
        #: Why Redis refused the last sweep, if it did (to log each refusal once).
        self._sweep_refused: str | None = None
        self._probe_key = f"{prefix}:ready-probe"
        self._closed = False
        #: Stream reads made to bring mirrors up to date (a diagnostic: a mirror that
        #: keeps up takes its events from the notifications, with no read).
        self.fetches = 0

    @classmethod
    def from_settings(cls, settings: BridgeSettings) -> RedisBroker:
        assert settings.broker_url is not None
        return cls(settings.broker_url, retention_count=settings.retention_count,
                   retention_age=settings.retention_age,
                   retention_bytes=settings.retention_bytes,
                   idle_expiry=settings.idle_expiry, max_threads=settings.max_threads,
                   batch=settings.batch)

    # -- keys --------------------------------------------------------------------------

    def _key(self, thread_id: str, kind: str) -> str:
        if kind == "n":
            return channel_name(self.prefix, thread_id)
        return stream_keys(self.prefix, thread_id)["msdk".index(kind)]

    def _keys(self, thread_id: str) -> list[str]:
        """meta, stream, dedup, checkpoint."""
        return stream_keys(self.prefix, thread_id)

    @property
    def client(self) -> Redis:
        return self._client

    @property
    def _ttl_ms(self) -> int:
        return self.limits_in_force[3]

    async def _store_limits(self) -> None:
        """Store this replica's limits for every writer: on first contact they replace
        whatever is stored (the replica started last wins), later only if none are
        (Redis flushed or restarted since). Raises what the client raises."""
        first = not self._limits_stored
        reply = await self._limits_script(
            keys=[self._limits_key],
            args=["replace" if first else "restore", *self._own_limits])
        held = None if reply[0] is None else [int(value or 0) for value in reply]
        own = self._own_limits
        if first:
            self._limits_stored = True
            if held is not None and held != own:
                _log.warning(
                    "Redis under prefix %r held other limits (%s), stored by a replica "
                    "started with other settings; this replica's (%s) replace them for "
                    "every writer", self.prefix, _describe(held), _describe(own))
            self.limits_in_force = own
        elif held is None:
            self.limits_in_force = own  # restored after a flush
        elif held != self.limits_in_force:
            if held != own:
                _log.warning(
                    "Redis under prefix %r holds limits (%s) that are not this replica's "
                    "(%s): a replica started later with other settings; every writer "
                    "applies the stored ones", self.prefix, _describe(held),
                    _describe(own))
            self.limits_in_force = held

    # -- the Broker interface ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    async def append(self, thread_id: str, lines: Sequence[EventLine]) -> Appended:
        if not valid_thread_id(thread_id):
            raise ValueError("invalid thread id")
        keys, args = append_args(self.prefix, thread_id, self.retention,
                                 [_line(line, thread_id) for line in lines], bridge=True)
        with _store_errors():
            if not self._limits_stored:
                await self._store_limits()
            result = await self._append_script(keys=keys, args=args)
        if not result or result[0] is None:
            # The script says the limit in force, which may be another replica's.
            limit = result[1] if result and len(result) > 1 else self.retention.max_threads
            raise TooManyThreads(f"the bridge holds {limit} threads")
        epoch, checkpoint, seqs = _text(result[0]) or "", int(result[1]), assigned_seqs(result)
        accepted = sum(1 for seq in seqs if seq)
        last_seq = max(seqs) if accepted else None
        if accepted:
            self._fold_own(thread_id, epoch, lines, seqs)
            assert last_seq is not None
            if last_seq - checkpoint >= self.checkpoint_every:
                # The events are in: a checkpoint Redis cannot take now (unreachable,
                # full...) must not fail the request, or the producer would retry it. The
                # next append makes it; the stream keeps everything after the last one.
                with contextlib.suppress(BrokerUnavailable), _store_errors():
                    await self._checkpoint(thread_id)
        return Appended(accepted, len(seqs) - accepted, last_seq)

    def reader(self, thread_id: str, position: Position | None) -> RedisReader:
        return RedisReader(self, thread_id, position)

    async def snapshot(self, thread_id: str) -> bytes | None:
        folded = (await self._fold_many([thread_id]))[0]
        return None if folded is None else folded.to_json()

    async def summaries(self) -> list[dict[str, Any]]:
        with _store_errors():
            ids = [_text(value) or "" for value in await self._client.zrange(
                self._registry, 0, -1)]
        folds = await self._fold_many(ids)
        return [fold.snapshot.summary() for fold in folds if fold is not None]

    async def expire(self) -> int:
        """Registry cleanup, age retention, TTL refresh of the threads read here, and
        watches with no reader since the previous sweep. Every replica sweeps; the work
        is idempotent. Returns how many threads this sweep found gone."""
        previous, self._last_sweep = self._last_sweep, time.monotonic()
        for watch in list(self._watches.values()):
            if (watch.readers == 0 and watch.idle_since is not None
                    and watch.idle_since <= previous):
                self._drop_watch(watch)
        try:
            with _store_errors():
                await self._check_mirrors()
                forgotten, refused = await self._sweep_redis()
        except RedisRefused as exc:
            # Redis full, or a replica in a failover: the next sweep does the work.
            forgotten, refused = 0, exc
        except BrokerUnavailable:
            return 0  # unreachable: the next sweep does the work
        if refused is not None:
            # Said once per refusal, not once per sweep.
            if self._sweep_refused != str(refused):
                self._sweep_refused = str(refused)
                _log.warning("retention sweep on Redis skipped: %s; retrying at each sweep",
                             refused)
            return forgotten
        if self._sweep_refused is not None:
            self._sweep_refused = None
            _log.warning("retention sweep on Redis done again")
        return forgotten

    async def _check_mirrors(self) -> None:
        """A flush or an expiry sends no notification: compare each mirror's epoch with
        its thread's now and then, and bring the ones that differ up to date."""
        watches = list(self._watches.values())
        if not watches:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for watch in watches:
                pipe.hget(self._key(watch.thread_id, "m"), "epoch")
            epochs = await pipe.execute()
        for watch, epoch in zip(watches, epochs, strict=True):
            if watch.known and _text(epoch) != watch.epoch:
                await self._refresh(watch)

    async def _sweep_redis(self) -> tuple[int, RedisRefused | None]:
        """The sweep's work in Redis: how many threads it found gone, and why Redis
        refused a checkpoint, if it did (the sweep goes on without it)."""
        client = self._client
        refused: RedisRefused | None = None
        try:
            with _store_errors():
                await self._store_limits()
        except RedisRefused as exc:
            # Redis full before this replica could store its limits (or store them
            # again after a flush): it sweeps by those it holds, and stores them when
            # Redis takes writes again; a sweep that frees nothing keeps Redis full.
            refused = exc
        count, age_ms, max_bytes, ttl, _ = self.limits_in_force
        if ttl and self._watches:
            # Threads with readers here do not expire (as in memory: no event *and* no
            # reader); their TTL is refreshed well within the idle expiry.
            async with client.pipeline(transaction=False) as pipe:
                for thread_id in self._watches:
                    for key in self._keys(thread_id):
                        pipe.pexpire(key, ttl)
                await pipe.execute()
        ids = [_text(raw) or "" for raw in await client.zrange(self._registry, 0, -1)]
        if not ids:
            return 0, refused
        # Threads whose keys expired (or were flushed) leave the registry.
        async with client.pipeline(transaction=False) as pipe:
            for thread_id in ids:
                pipe.exists(self._key(thread_id, "m"))
            alive = await pipe.execute()
        gone = [thread_id for thread_id, exists in zip(ids, alive, strict=True) if not exists]
        forgotten = int(await client.zrem(self._registry, *gone)) if gone else 0
        for thread_id in gone:
            self._folds.pop(thread_id, None)
        live = [thread_id for thread_id, exists in zip(ids, alive, strict=True) if exists]
        # The trims before the checkpoints: they free memory, which a full Redis
        # (noeviction) needs before it takes anything again, and Redis runs them even
        # then (the script's first write is XTRIM, which it does not refuse, and a script
        # that has written runs to its end). Appends trim a busy thread by count, age and
        # bytes; a quiet one's events age here, and limits another replica lowered apply.
        async with client.pipeline(transaction=False) as pipe:
            for thread_id in live:
                meta, stream, dedup, _ = self._keys(thread_id)
                await self._trim_script(keys=[meta, stream, dedup],
                                        args=[count, age_ms, self._key(thread_id, "n"),
                                              max_bytes],
                                        client=pipe)
            await pipe.execute()
        # Threads appended to by a producer that does not fold (RedisSink), or by a
        # replica that died before its checkpoint: checkpoint them here, so their
        # streams are trimmed to the retention again. A checkpoint Redis refuses (full)
        # skips that thread only: the others' are still due, and may free what it needs.
        async with client.pipeline(transaction=False) as pipe:
            for thread_id in live:
                pipe.hmget(self._key(thread_id, "m"), "top", "ck")
            marks = await pipe.execute()
        for thread_id, (top, checkpoint) in zip(live, marks, strict=True):
            if _int(top) - _int(checkpoint) >= self.checkpoint_every:
                try:
                    with _store_errors():
                        await self._checkpoint(thread_id)
                except RedisRefused as exc:
                    refused = refused or exc
        return forgotten, refused

    async def ready(self) -> bool:
        if self._closed:
            return False
        try:
            if not self._limits_stored:
                # A readiness probe is the first contact of a replica that gets no
                # traffic yet: its limits are in Redis before any sink appends.
                await asyncio.wait_for(self._store_limits(), 2.0)
            # Not a PING: a write that writes nothing (SET ... XX of a key nobody sets),
            # so a Redis that answers but refuses writes (full under noeviction, a
            # replica in a failover, busy, loading) is not ready either, in one round
            # trip, with nothing stored or replicated.
            await asyncio.wait_for(self._client.set(self._probe_key, b"", xx=True), 2.0)
            return True
        except (TimeoutError, *_UNREACHABLE, RedisError):
            return False

    def close(self) -> None:
        """End every reader's stream; Redis connections are closed by ``aclose``."""
        if self._closed:
            return
        self._closed = True
        for watch in self._watches.values():
            if watch.log is not None:
                watch.log.close()
            watch.changed()
            if watch.task is not None:
                watch.task.cancel()
        if self._listener is not None:
            self._listener.cancel()
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to close on
            task = asyncio.get_running_loop().create_task(self._close_connections())
            self._closing = task

    async def aclose(self) -> None:
        """``close()`` and wait for the Redis connections to close."""
        self.close()
        await self._close_connections()

    async def _close_connections(self) -> None:
        listener = self._listener
        if listener is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        for watch in list(self._watches.values()):
            if watch.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await watch.task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = None
        with contextlib.suppress(Exception):
            await self._client.aclose()

    # -- state: checkpoint + tail ----------------------------------------------------------

    def _fold_own(self, thread_id: str, epoch: str, lines: Sequence[EventLine],
                  seqs: Sequence[int]) -> None:
        """Fold what this append numbered into the cached state, when that state is just
        before it (the common case: one producer per thread). The events are parsed
        already; otherwise the next fold reads them from the stream."""
        folded = self._folds.get(thread_id)
        first = next(seq for seq in seqs if seq)
        if first == 1 and (folded is None or folded.epoch != epoch):
            # A thread (or epoch) this replica starts: fold it from nothing, so its
            # checkpoints never need to read the stream back.
            folded = self._folds[thread_id] = _Folded(
                epoch, ThreadSnapshot(thread_id, max_turns=self.max_turns))
        if folded is None or folded.epoch != epoch or folded.seq != first - 1:
            return
        for line, seq in zip(lines, seqs, strict=True):
            if seq:
                folded.snapshot.apply(line.event, seq)

    async def _fold_many(self, thread_ids: Sequence[str]) -> list[_Folded | None]:
        """Each thread's state up to the top of its stream (``None``: no such thread)."""
        if not thread_ids:
            return []
        client = self._client
        with _store_errors():
            async with client.pipeline(transaction=False) as pipe:
                for thread_id in thread_ids:
                    pipe.hmget(self._key(thread_id, "m"), "epoch", "top", "ck")
                metas = await pipe.execute()
            # Second round trip: the tail after what is cached, or the checkpoint and
            # the tail after it.
            plans: list[tuple[int, str, bool]] = []
            async with client.pipeline(transaction=False) as pipe:
                for index, (thread_id, meta) in enumerate(
                        zip(thread_ids, metas, strict=True)):
                    epoch = _text(meta[0])
                    if epoch is None:
                        continue
                    top, checkpoint = _int(meta[1]), _int(meta[2])
                    folded = self._folds.get(thread_id)
                    usable = (folded is not None and folded.epoch == epoch
                              and checkpoint <= folded.seq <= top)
                    if usable and folded is not None and folded.seq == top:
                        continue
                    base = folded.seq if usable and folded is not None else checkpoint
                    if not usable:
                        pipe.get(self._key(thread_id, "k"))
                    pipe.xrange(self._key(thread_id, "s"), min=base + 1)
                    plans.append((index, epoch, not usable))
                replies = await pipe.execute() if plans else []
        position = 0
        for index, epoch, with_checkpoint in plans:
            thread_id = thread_ids[index]
            if with_checkpoint:
                data = replies[position]
                position += 1
                snapshot = (decode_state(data) if data is not None
                            else ThreadSnapshot(thread_id, max_turns=self.max_turns))
                current = self._folds.get(thread_id)
                if current is None or current.epoch != epoch or current.seq < snapshot.seq:
                    self._folds[thread_id] = _Folded(epoch, snapshot)
            entries = replies[position]
            position += 1
            folded = self._folds[thread_id]
            for count, (stream_id, fields) in enumerate(entries, 1):
                if not folded.apply(_seq_of(stream_id), fields[b"d"]):
                    _log.warning("thread %s: events missing after seq %d of its stream",
                                 thread_id, folded.seq)
                    break
                if count % 200 == 0:
                    # Parsing a long tail takes a while: let the streams run meanwhile
                    # (applying is idempotent by seq, so a concurrent fold is harmless).
                    await asyncio.sleep(0)
        out: list[_Folded | None] = []
        for thread_id, meta in zip(thread_ids, metas, strict=True):
            epoch = _text(meta[0])
            folded = self._folds.get(thread_id)
            out.append(folded if epoch is not None and folded is not None
                       and folded.epoch == epoch else None)
        return out

    async def _checkpoint(self, thread_id: str) -> None:
        folded = (await self._fold_many([thread_id]))[0]
        if folded is None:
            return
        meta, stream, _, ckpt = self._keys(thread_id)
        await self._checkpoint_script(
            keys=[meta, stream, ckpt],
            args=[folded.epoch, folded.seq, encode_state(folded.snapshot), self._ttl_ms])

    async def _reset(self, thread_id: str, reason: str) -> Reset | None:
        """A reset with the thread's state now, or ``None`` if it is gone (or Redis is)."""
        while not self._closed:
            try:
                folded = (await self._fold_many([thread_id]))[0]
            except BrokerUnavailable:
                await asyncio.sleep(0.5)  # readers outlive an outage: try again
                continue
            if folded is None:
                return None
            return Reset(reason, folded.epoch, folded.seq, folded.to_json())
        return None

    # -- watching ----------------------------------------------------------------------------

    def _watch(self, thread_id: str) -> _Watch:
        """This replica's watch of ``thread_id``, made (and subscribed) on first use."""
        watch = self._watches.get(thread_id)
        if watch is None:
            channel = self._key(thread_id, "n")
            watch = self._watches[thread_id] = _Watch(thread_id, channel)
            self._by_channel[channel.encode()] = watch
            watch.task = asyncio.get_running_loop().create_task(self._follow(watch))
            if self._listener is None:
                self._listener = asyncio.get_running_loop().create_task(self._listen())
            elif self._pubsub_up and self._pubsub is not None:
                self._subscribe_later(watch)
        watch.readers += 1
        watch.idle_since = None
        return watch

    def _subscribe_later(self, watch: _Watch) -> None:
        pubsub = self._pubsub

        async def subscribe() -> None:
            # A failure here is repaired by the listener: it rebuilds the connection
            # with every watched channel.
            with contextlib.suppress(*_UNREACHABLE, RedisError):
                if pubsub is not None:
                    await pubsub.subscribe(watch.channel)

        asyncio.get_running_loop().create_task(subscribe())

    def _unwatch(self, watch: _Watch) -> None:
        watch.readers -= 1
        if watch.readers == 0:
            # Kept until the next sweep: a client that reconnects finds its mirror warm.
            watch.idle_since = time.monotonic()

    def _drop_watch(self, watch: _Watch) -> None:
        self._watches.pop(watch.thread_id, None)
        self._by_channel.pop(watch.channel.encode(), None)
        if watch.task is not None:
            watch.task.cancel()
        if watch.log is not None:
            watch.log.close()
        pubsub = self._pubsub
        if self._pubsub_up and pubsub is not None:
            async def unsubscribe() -> None:
                with contextlib.suppress(*_UNREACHABLE, RedisError):
                    await pubsub.unsubscribe(watch.channel)

            asyncio.get_running_loop().create_task(unsubscribe())

    async def _listen(self) -> None:
        """The replica's one pub/sub connection: notifications mark watches dirty. A lost
        connection is rebuilt with every watched channel, and each subscription's
        confirmation triggers a fetch, which catches up on what was missed."""
        delay = 0.05
        control = f"{self.prefix}:replica:{secrets.token_hex(8)}"
        while not self._closed:
            pubsub = self._pubsub = self._client.pubsub()
            try:
                # The control channel keeps the connection subscribed with no watch.
                await pubsub.subscribe(control, *[w.channel for w in self._watches.values()])
                self._pubsub_up = True
                quiet = 0
                while not self._closed:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is None:
                        quiet += 1
                        if quiet >= 3:  # 15 s without a pong: the connection is gone
                            raise RedisTimeoutError("pub/sub connection silent")
                        await pubsub.ping()
                        continue
                    quiet = 0
                    delay = 0.05
                    kind = message["type"]
                    if kind in (b"message", "message", b"subscribe", "subscribe"):
                        channel = message["channel"]
                        watch = self._by_channel.get(
                            channel if isinstance(channel, bytes) else channel.encode())
                        if watch is not None and not (
                                kind in (b"message", "message")
                                and self._deliver(watch, message["data"])):
                            watch.dirty.set()
            except asyncio.CancelledError:
                raise
            except (*_UNREACHABLE, RedisError) as exc:
                if self._pubsub_up:
                    _log.warning("Redis pub/sub connection lost (%s); reconnecting",
                                 type(exc).__name__)
                self._pubsub_up = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    def _deliver(self, watch: _Watch, data: bytes) -> bool:
        """Append a notification's events to an up-to-date mirror; False when the stream
        must be read instead (a fetch under way, events missed, a new epoch)."""
        log = watch.log
        if log is None or not watch.known or watch.lock.locked():
            return False
        try:
            epoch, first, lo, events = parse_notification(data)
        except ValueError:
            return False
        if epoch != watch.epoch or first > log.next_seq:
            return False
        for offset, (kind, json) in enumerate(events):
            if first + offset >= log.next_seq:  # older ones were fetched already
                log.append(kind, json)
        if lo > log.first_seq:
            log.forget_before(lo)
        return True

    async def _follow(self, watch: _Watch) -> None:
        """Fetch whatever the watched thread's stream has past the mirror, whenever it is
        marked dirty (a notification, a subscription confirmed)."""
        delay = 0.05
        while not self._closed:
            await watch.dirty.wait()
            watch.dirty.clear()
            try:
                await self._refresh(watch)
                delay = 0.05
            except asyncio.CancelledError:
                raise
            except (*_UNREACHABLE, RedisError) as exc:
                _log.debug("fetch of %s failed (%s); retrying", watch.thread_id, exc)
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)
                watch.dirty.set()

    async def _refresh(self, watch: _Watch) -> None:
        """Bring the mirror up to the stream's top (one round trip when it is current)."""
        client = self._client
        meta_key, stream_key = self._key(watch.thread_id, "m"), self._key(watch.thread_id, "s")
        async with watch.lock:
            while not self._closed:
                log = watch.log
                self.fetches += 1
                async with client.pipeline(transaction=False) as pipe:
                    pipe.hmget(meta_key, "epoch", "lo")
                    pipe.xrange(stream_key, min=log.next_seq if log is not None else "-",
                                count=self.fetch_count)
                    (epoch_raw, lo_raw), entries = await pipe.execute()
                epoch = _text(epoch_raw)
                if epoch is None:
                    # No such thread (yet, or any more: expired, flushed): readers wait
                    # without a mirror, and a new epoch's first event brings a new one.
                    if log is not None:
                        log.close()  # its readers finish it, then wait
                        watch.log = watch.epoch = None
                    if not watch.known or log is not None:
                        watch.known = True
                        watch.changed()
                    return
                lo = _int(lo_raw, 1)
                if log is None or epoch != watch.epoch:
                    watch.replace(epoch, self.retention.count, lo)
                    watch.known = True
                    continue
                entries = [(seq, fields) for seq, fields in
                           ((_seq_of(stream_id), fields) for stream_id, fields in entries)
                           if seq >= log.next_seq]
                if entries and entries[0][0] != log.next_seq:
                    # Events this replica never saw have left the stream: start over from
                    # what is held (its readers get a reset, never a silent gap).
                    watch.replace(epoch, self.retention.count, lo)
                    continue
                for seq, fields in entries:
                    log.append(_text(fields[b"t"]) or "", fields[b"d"])
                    assert log.next_seq == seq + 1
                if lo > log.first_seq:
                    log.forget_before(lo)
                if not watch.known:
                    watch.known = True
                    watch.changed()
                if len(entries) < self.fetch_count:
                    return

    # -- diagnostics -------------------------------------------------------------------------

    @property
    def watched(self) -> int:
        """Threads this replica reads from Redis now."""
        return len(self._watches)

    def readers(self, thread_id: str) -> int:
        watch = self._watches.get(thread_id)
        return 0 if watch is None else watch.readers

    async def thread_ids(self) -> Iterable[str]:
        return [_text(raw) or "" for raw in await self._client.zrange(self._registry, 0, -1)]
