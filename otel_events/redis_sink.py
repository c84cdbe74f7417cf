"""``RedisSink``: an emitter's events straight into the bridge's Redis, off the hot path.

Also the one definition of how a thread lives in Redis (keys, the append script, the
de-duplication member), shared by the sink and by the bridge's ``RedisBroker``
(``otel_events.bridge.redis``), so an event written by either is the same entry. It lives
here, outside the bridge package, so a producer needs only redis-py (the ``[redis]``
extra), not the bridge's web stack.

The sink works as ``HttpSink`` does: a background thread reads the emitter's
``EventLog`` and appends whatever accumulated as one script call; the agent only ever
appends to memory. The log is the bounded buffer: while Redis is unreachable the sink
retries the batch in hand with backoff and the log keeps the newest events; what it
overwrote meanwhile is counted in ``dropped``. A Redis that refuses for a while (full
under ``noeviction``, a replica during a failover, busy, loading) is retried alike.
Nothing here blocks or raises into agent code. A retried batch that had in fact been
written is recognised by the script (the same producer seq and content), so retries
deliver each event once.

The sink does not fold the thread's state; the bridge replicas checkpoint it as they
sweep, and until one has, the stream keeps every event after the last checkpoint.

**Limits.** Every writer trims a thread as it appends, so every writer must apply the
same retention, idle expiry and thread limit. The bridge's are the ones: each replica
stores its limits under the prefix when it starts (``limits_key``; the replica started
last wins) and the append script applies the stored ones, whatever its caller passed.
A caller's own limits apply only while none are stored (no replica has started on this
Redis yet, or it was flushed since, until a replica stores them again).
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

import orjson

from otel_events.log import Entry
from otel_events.retention import DEFAULTS, Retention
from otel_events.sinks import BatchingSink

__all__ = ["APPEND_LUA", "LIMITS_LUA", "LIMIT_FIELDS", "TRIM_LUA", "RedisSink",
           "assigned_seqs", "dedup_member", "event_rest", "limit_values", "limits_key",
           "new_epoch", "parse_notification", "refusal", "stream_keys"]

# -- a reachable Redis that refuses ---------------------------------------------------------

# Refusals that pass (memory freed, a failover done, a script ended, the dataset loaded):
# the request can be sent again later, so the bridge answers 503 and a sink retries. By
# the error's code only: the rest of a script's error text may quote the data it held.
_REFUSALS = {
    "OOM": "Redis refused the write: out of memory (maxmemory)",
    "READONLY": "Redis refused the write: it is a read-only replica (failover in progress?)",
    "MISCONF": "Redis refused the write: it cannot persist (MISCONF)",
    "NOREPLICAS": "Redis refused the write: not enough replicas (min-replicas-to-write)",
    "BUSY": "Redis is busy running a script",
    "LOADING": "Redis is loading its dataset",
    "MASTERDOWN": "Redis has lost its link to the primary",
}

# redis-py's classes for the codes it recognises (it strips the code from their text).
_REFUSAL_CLASSES = {"OutOfMemoryError": "OOM", "ReadOnlyError": "READONLY",
                    "BusyLoadingError": "LOADING", "MasterDownError": "MASTERDOWN"}

# What redis-py puts before a command's error in a pipeline (with the command's arguments).
_PIPELINE_ERROR = "of pipeline caused error: "


def refusal(exc: BaseException) -> str | None:
    """What a Redis error says if Redis refused for now (full, a replica, busy, loading),
    never quoting its text; ``None`` for any other error. Works on redis-py's exceptions
    without importing redis-py (the core does not need it)."""
    for cls in type(exc).__mro__:
        code = _REFUSAL_CLASSES.get(cls.__name__)
        if code is not None:
            return _REFUSALS[code]
    if "ResponseError" not in {cls.__name__ for cls in type(exc).__mro__}:
        return None
    text = str(exc.args[0]) if exc.args else ""
    # A pipeline's error reads 'Command # n (...) of pipeline caused error: <error>'.
    text = text.rpartition(_PIPELINE_ERROR)[2].lstrip("('\"")
    return _REFUSALS.get(text.split(" ", 1)[0])


# -- the layout, shared with the bridge -----------------------------------------------------


def stream_keys(prefix: str, thread_id: str) -> list[str]:
    """meta, stream, dedup, checkpoint: one hash tag per thread (``{thread_id}``)."""
    return [f"{prefix}:{{{thread_id}}}:{kind}" for kind in ("m", "s", "d", "k")]


def channel_name(prefix: str, thread_id: str) -> str:
    return f"{prefix}:{{{thread_id}}}:n"


def registry_key(prefix: str) -> str:
    return f"{prefix}:threads"


def limits_key(prefix: str) -> str:
    """The bridge's limits, a hash of ``LIMIT_FIELDS``: what every append applies."""
    return f"{prefix}:limits"


#: The fields of ``limits_key``, in the order of ``limit_values`` (0: no bound).
LIMIT_FIELDS = ("count", "age_ms", "bytes", "ttl_ms", "max_threads")


def _ms(seconds: float | None) -> int:
    return 0 if seconds is None else max(1, int(seconds * 1000))


def limit_values(retention: Retention) -> list[int]:
    """``retention`` as the scripts take, store and compare it (``LIMIT_FIELDS``)."""
    return [retention.count, _ms(retention.age), retention.bytes or 0,
            _ms(retention.idle_expiry), retention.max_threads]


def new_epoch() -> str:
    """A short random token: two epochs of one thread never collide in practice."""
    return secrets.token_hex(4)


def event_rest(raw: dict[str, Any], thread_id: str) -> bytes:
    """The event's JSON without its opening brace and without ``seq``: the script puts
    ``{"seq":N,`` in front once it has numbered the line. Compact JSON holds no raw
    newline, which the notification's framing relies on."""
    body = dict(raw)
    body.pop("seq", None)
    if body.get("thread_id") is None:
        body["thread_id"] = thread_id
    return orjson.dumps(body)[1:]


def dedup_member(producer_seq: int | None, rest: bytes) -> str | None:
    """What recognises a producer's line when it is sent again: ``pseq:hash`` of the line
    as stored (``event_rest``). The same in every process (Python's ``hash`` of bytes is
    salted per process), so a retry through another replica, or through HTTP after the
    sink, is recognised. ``None`` without a producer seq: never de-duplicated."""
    if producer_seq is None:
        return None
    return f"{producer_seq}:{hashlib.blake2b(rest, digest_size=12).hexdigest()}"


def parse_notification(data: bytes) -> tuple[str, int, int, list[tuple[str, bytes]]]:
    """A thread's notification: epoch, the seq of its first event, the first seq held for
    replay, and the events (type, JSON) it carries (none after a trim)."""
    header, _, body = data.partition(b"\n")
    epoch, first, lo = header.split(b" ")
    events = []
    if body:
        for line in body.split(b"\n"):
            kind, _, json = line.partition(b" ")
            events.append((kind.decode(), json))
    return epoch.decode(), int(first), int(lo), events


# Shared by the append and trim scripts: advance ``lo`` for count, age and byte retention
# and trim the stream physically, never past the checkpoint (the fold needs what follows
# it). Expects locals: stream, dedup, top, lo, ck, now, retention, age, max_bytes,
# total (bytes of JSON appended in this epoch; each entry's field 'o' is the total
# before it, so the bytes held from seq s on are total - o(s)). Its writes (XTRIM,
# ZREMRANGEBYSCORE) are ones a full Redis (noeviction) does not refuse: the bridge's
# sweep trims with it first so that a full Redis frees memory.
TRIM_LUA = """
local want = top - retention + 1
if want > lo then lo = want end
if age > 0 and lo <= top then
  local horizon = now - age
  local function arrival(seq)
    local found = redis.call('XRANGE', stream, seq, seq)
    if found[1] == nil then return -1 end
    local id = found[1][1]
    return tonumber(string.sub(id, string.find(id, '-', 1, true) + 1))
  end
  if arrival(lo) < horizon then
    -- Arrival times grow with seq: the first young enough event, by bisection.
    local a, b = lo, top + 1
    while a < b do
      local mid = math.floor((a + b) / 2)
      if arrival(mid) < horizon then a = mid + 1 else b = mid end
    end
    lo = a
  end
end
if max_bytes > 0 and lo <= top then
  local function held(seq)
    local found = redis.call('XRANGE', stream, seq, seq)
    if found[1] == nil then return math.huge end
    local offset = found[1][2][6]
    if offset == nil then return math.huge end
    return total - tonumber(offset)
  end
  if held(lo) > max_bytes then
    -- Bytes held shrink as seq grows: the first seq within the bound, by bisection; the
    -- newest event stays whatever its size (a new client still gets it).
    local a, b = lo, top
    while a < b do
      local mid = math.floor((a + b) / 2)
      if held(mid) > max_bytes then a = mid + 1 else b = mid end
    end
    lo = a
  end
end
if lo > top + 1 then lo = top + 1 end
local keep = lo
if ck + 1 < keep then keep = ck + 1 end
-- '~': whole macro-nodes only, which is cheap; what it leaves is below lo, never replayed.
redis.call('XTRIM', stream, 'MINID', '~', keep)
redis.call('ZREMRANGEBYSCORE', dedup, '-inf', '(' .. (top - retention + 1))
"""

# The bridge's limits, stored (KEYS[1]) by a replica as it starts; ARGV: 'replace' (a
# replica starting: the last started wins) or 'restore' (its sweep: only if none are
# stored, after a flush), then the values of LIMIT_FIELDS. Returns those stored before.
# Writes nothing when they are stored already: a full Redis (noeviction) would refuse it.
LIMITS_LUA = """
local held = redis.call('HMGET', KEYS[1], 'count', 'age_ms', 'bytes', 'ttl_ms', 'max_threads')
local same = true
for i = 1, 5 do
  if held[i] ~= ARGV[i + 1] then same = false end
end
if (ARGV[1] == 'replace' and not same) or not held[1] then
  redis.call('HSET', KEYS[1], 'count', ARGV[2], 'age_ms', ARGV[3], 'bytes', ARGV[4],
             'ttl_ms', ARGV[5], 'max_threads', ARGV[6])
end
return held
"""

APPEND_LUA = """
-- KEYS: meta, stream, dedup, checkpoint, registry, limits
-- ARGV: new epoch, retention count, retention age ms (0: none), ttl ms (0: none),
--       max threads (0: none), thread id, channel, key prefix, retention bytes (0: none),
--       '1' from a bridge replica ('0': a sink),
--       then per line: type, JSON without its opening brace, dedup member ('': none)
local meta, stream, dedup, ckpt, registry = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local retention, age, ttl = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local max_threads, max_bytes = tonumber(ARGV[5]), tonumber(ARGV[9])
-- The limits in force are the bridge's as stored, whoever appends, so a sink or a replica
-- told otherwise cannot trim a thread its own way. The caller's apply only while none
-- are stored; a replica's call stores its own then (Redis was flushed since it started).
local stored = redis.call('HMGET', KEYS[6], 'count', 'age_ms', 'bytes', 'ttl_ms',
                          'max_threads')
if stored[1] then
  retention = tonumber(stored[1])
  age = tonumber(stored[2]) or age
  max_bytes = tonumber(stored[3]) or max_bytes
  ttl = tonumber(stored[4]) or ttl
  max_threads = tonumber(stored[5]) or max_threads
elseif ARGV[10] == '1' then
  redis.call('HSET', KEYS[6], 'count', retention, 'age_ms', age, 'bytes', max_bytes,
             'ttl_ms', ttl, 'max_threads', max_threads)
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', meta, 'epoch', 'top', 'lo', 'ck', 'ms', 'b')
local epoch = state[1]
local top, lo, ck, total = 0, 1, 0, 0
if epoch then
  top, lo, ck = tonumber(state[2]), tonumber(state[3]), tonumber(state[4])
  total = tonumber(state[6]) or 0
  local last = tonumber(state[5])
  if now < last then now = last end
else
  -- No meta: a new thread, or one whose history is gone (expired, flushed, evicted).
  -- Whatever is left of it belongs to no epoch: start over under a new one.
  if max_threads > 0 and not redis.call('ZSCORE', registry, ARGV[6])
      and redis.call('ZCARD', registry) >= max_threads then
    for _, id in ipairs(redis.call('ZRANGE', registry, 0, -1)) do
      if redis.call('EXISTS', ARGV[8] .. ':{' .. id .. '}:m') == 0 then
        redis.call('ZREM', registry, id)
      end
    end
    if redis.call('ZCARD', registry) >= max_threads then return {false, max_threads} end
  end
  -- ZADD first: a write Redis refuses when full (noeviction), where DEL is not; a
  -- script that wrote once runs to its end past maxmemory, so a new thread would
  -- otherwise be taken in whole by a full Redis that refuses every other append.
  redis.call('ZADD', registry, now, ARGV[6])
  redis.call('DEL', stream, dedup, ckpt)
  epoch = ARGV[1]
end
-- The reply stays small whatever the batch: the first seq given, and one mark per line
-- ('1': a retry, skipped); accepted lines have consecutive seqs.
local first = top + 1
local marks = {}
local published = {}
local n = (#ARGV - 10) / 3
for i = 1, n do
  local base = 8 + 3 * i
  local member = ARGV[base + 2]
  if member ~= '' and redis.call('ZSCORE', dedup, member) then
    marks[i] = '1'
  else
    top = top + 1
    local data = '{"seq":' .. top .. ',' .. ARGV[base + 1]
    redis.call('XADD', stream, top .. '-' .. now, 't', ARGV[base], 'd', data, 'o', total)
    total = total + #data
    if member ~= '' then redis.call('ZADD', dedup, top, member) end
    marks[i] = '0'
    -- Pieces, joined once at the end: no line's string is built twice.
    local at = #published
    published[at + 1] = '\\n'
    published[at + 2] = ARGV[base]
    published[at + 3] = ' '
    published[at + 4] = data
  end
end
""" + TRIM_LUA + """
redis.call('HSET', meta, 'epoch', epoch, 'top', top, 'lo', lo, 'ck', ck, 'ms', now,
           'b', total)
if ttl > 0 then
  redis.call('PEXPIRE', meta, ttl)
  redis.call('PEXPIRE', stream, ttl)
  redis.call('PEXPIRE', dedup, ttl)
  redis.call('PEXPIRE', ckpt, ttl)
end
-- The notification carries the events (as Centrifugo's engine does): a replica that is
-- up to date appends them without reading the stream back.
table.insert(published, 1, epoch .. ' ' .. first .. ' ' .. lo)
redis.call('PUBLISH', ARGV[7], table.concat(published))
return {epoch, ck, first, table.concat(marks)}
"""


def assigned_seqs(reply: Any) -> list[int]:
    """The seq each line of an append got, 0 for a retry (from ``APPEND_LUA``'s reply)."""
    seq = int(reply[2])
    out = []
    for mark in reply[3]:
        if mark == ord("1"):
            out.append(0)
        else:
            out.append(seq)
            seq += 1
    return out


def append_args(prefix: str, thread_id: str, retention: Retention,
                lines: list[tuple[str, bytes, str | None]],
                *, bridge: bool = False) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of ``APPEND_LUA`` for ``lines`` of (type, rest, dedup member).

    ``retention`` applies only while no bridge has stored its limits (see the module's
    docstring); ``bridge``: the caller is a replica, which stores its own then.
    """
    keys = [*stream_keys(prefix, thread_id), registry_key(prefix), limits_key(prefix)]
    count, age_ms, max_bytes, ttl_ms, max_threads = limit_values(retention)
    args: list[Any] = [
        new_epoch(), count, age_ms, ttl_ms, max_threads, thread_id,
        channel_name(prefix, thread_id), prefix, max_bytes, "1" if bridge else "0"]
    for kind, rest, member in lines:
        args += [kind, rest, member or ""]
    return keys, args


# -- the sink -----------------------------------------------------------------------------------


class RedisSink(BatchingSink):
    """Appends every event of the log to thread ``thread_id`` in the bridge's Redis.

    ``url`` is the bridge's ``--broker`` URL and ``prefix`` must be the bridge's. The
    retention, idle expiry and thread limit need not be: every append applies the
    limits the bridge stored in Redis. The sink's own (the bridge's defaults unless
    given) are only the fallback while no bridge has stored any (none started on this
    Redis yet, or it was flushed since and no replica has written them back).

    Counters: ``sent`` (appended, or recognised as already there), ``dropped`` (never
    delivered: overwritten while Redis was unreachable or refusing for a while (full,
    a replica in a failover), refused for good (a script error), or still unsent at
    ``close``), ``requests`` (script calls).
    """

    kind = "RedisSink"
    destination = "Redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "otel-events",
        retention_count: int = DEFAULTS.count,
        retention_age: float | None = DEFAULTS.age,
        retention_bytes: int | None = DEFAULTS.bytes,
        idle_expiry: float | None = DEFAULTS.idle_expiry,
        max_threads: int = DEFAULTS.max_threads,
        max_batch: int = 1000,
        timeout: float = 5.0,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        import redis  # the [redis] extra; imported here so the core never needs it

        super().__init__(max_batch=max_batch, max_batch_bytes=None, backoff=backoff,
                         max_backoff=max_backoff)
        self.prefix = prefix
        #: The limits applied while no bridge has stored its own (the fallback).
        self.retention = Retention(
            count=retention_count, age=retention_age, bytes=retention_bytes,
            total_bytes=None, idle_expiry=idle_expiry, max_threads=max_threads)
        # No retries inside redis-py: the sink retries whole batches itself, with backoff.
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        self._script = self._client.register_script(APPEND_LUA)
        self._unreachable_errors: tuple[type[BaseException], ...] = (
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)

    def _disconnect(self) -> None:
        self._client.close()

    def _deliver(self, batch: list[Entry]) -> bool:
        thread_id = self._thread_id
        lines = []
        for entry in batch:
            raw = orjson.loads(entry.json)
            producer_seq = raw.get("seq")
            rest = event_rest(raw, thread_id)
            lines.append((entry.type, rest, dedup_member(
                producer_seq if isinstance(producer_seq, int) else None, rest)))
        keys, args = append_args(self.prefix, thread_id, self.retention, lines)
        try:
            result = self._script(keys=keys, args=args)
        except self._unreachable_errors as exc:
            self._unreachable(refusal(exc) or type(exc).__name__)
            return False
        except Exception as exc:
            why = refusal(exc)
            if why is not None:  # Redis full, a replica in a failover...: it passes
                self._unreachable(why)
                return False
            # A script error: sending it again cannot help.
            self._refused(batch, type(exc).__name__)
            return True
        self._reachable()
        if not result or result[0] is None:
            self._refused(batch, "the bridge holds its most threads")
            return True
        self.sent += len(batch)
        return True
