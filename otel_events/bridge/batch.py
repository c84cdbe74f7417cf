"""An ingest request body, checked line by line: valid lines pass whatever the others do.

The body is NDJSON (one event a line) or a JSON array of events. Line numbers are
1-based: the physical line of NDJSON, the element of an array. Error texts name the
field and the problem, never the submitted value (event content stays out of responses
that may be logged by proxies, and out of the bridge's own logs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import orjson
from pydantic import ValidationError

from otel_events.bridge.broker import EventLine
from otel_events.protocol import describe_error, parse_event

__all__ = ["MAX_DEPTH", "MAX_REPORTED", "NDJSON_TYPES", "ParsedBatch", "UnsupportedMediaType",
           "parse_batch"]

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/jsonlines"})
_JSON_TYPES = frozenset({"application/json"})
# The type goes into the SSE ``event:`` line: one line, no spaces, short.
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")
_RESERVED_TYPES = frozenset({"reset"})
#: Deepest nesting of objects and arrays in one event (the event itself is level 1).
#: The JSON parser takes 1024 levels, the encoder only 254, and the bridge wraps events
#: in more (the thread's state, the ``reset`` message): a line past this is refused on
#: its own, before anything of its batch is published.
MAX_DEPTH = 64
_MAX_SEQ = 2**64 - 1
_DEPTH_ERROR = f"nesting: deeper than {MAX_DEPTH} levels of objects and arrays"
_SEQ_ERROR = f"seq: must be a whole number from 0 to {_MAX_SEQ} (the producer's numbering)"


class UnsupportedMediaType(ValueError):
    """Neither NDJSON nor JSON."""


#: Rejected lines reported one by one; past these only counted. An HttpSink batch (1000
#: events at most) is always reported whole, while a body of millions of bad short lines
#: cannot make an answer thirty times its size.
MAX_REPORTED = 1000


@dataclass(slots=True)
class ParsedBatch:
    """The valid lines in body order, and the rejected ones with why (the first
    ``MAX_REPORTED`` of them; ``rejected_count`` counts them all)."""

    events: list[EventLine] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)
    rejected_count: int = 0

    def reject(self, line: int, error: str) -> None:
        self.rejected_count += 1
        if len(self.rejected) < MAX_REPORTED:
            self.rejected.append((line, error))


def _too_deep(value: object, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests objects and arrays more than ``limit`` levels deep."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children: Iterable[object] = node.values() if isinstance(node, dict) else (
            node if isinstance(node, list) else ())
        for child in children:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return False


def _check(line: int, value: object, thread_id: str, batch: ParsedBatch,
           may_be_deep: bool = True) -> None:
    if not isinstance(value, dict):
        batch.reject(line, "an event must be a JSON object")
        return
    # ``may_be_deep``: the caller counted the brackets of the raw bytes (at C speed); too
    # few for the limit spares the walk, which is nearly every line.
    if may_be_deep and _too_deep(value):
        batch.reject(line, _DEPTH_ERROR)
        return
    kind = value.get("type")
    if not isinstance(kind, str) or not _EVENT_TYPE.match(kind):
        batch.reject(line, "type: required, 1-100 characters of letters, digits and _.:/-")
        return
    if kind in _RESERVED_TYPES:
        batch.reject(line, f"type: {kind!r} is reserved for the bridge")
        return
    owner = value.get("thread_id")
    if owner is not None and owner != thread_id:
        batch.reject(line, "thread_id: differs from the thread in the URL")
        return
    # Strictly an integer: ``true`` is not seq 1, and 2**64 (a float to the parser) is
    # refused here with a clear reason rather than coerced or refused with a parser's.
    seq = value.get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq <= _MAX_SEQ):
        batch.reject(line, _SEQ_ERROR)
        return
    try:
        event = parse_event(value)
    except ValidationError as exc:
        batch.reject(line, describe_error(exc))
        return
    # The same line sent again (a retry) has the same canonical form. Only lines with
    # the producer's seq are ever de-duplicated, so only they need the digest.
    digest = hash(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)) if seq is not None else None
    batch.events.append(EventLine(line, event, digest, value))


def _brackets(data: bytes) -> int:
    """Opening brackets in ``data``: more than any nesting depth it can hold."""
    return data.count(b"{") + data.count(b"[")


def parse_batch(body: bytes, media_type: str, thread_id: str) -> ParsedBatch:
    """Check every line of ``body``; raises ``UnsupportedMediaType`` for other types."""
    batch = ParsedBatch()
    if media_type in _JSON_TYPES:
        try:
            values = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            batch.reject(1, f"the body is not valid JSON: {exc}")
            return batch
        if isinstance(values, dict):
            values = [values]
        if not isinstance(values, list):
            batch.reject(1, "the body must be a JSON array of events")
            return batch
        deep = _brackets(body) > MAX_DEPTH
        for number, value in enumerate(values, 1):
            _check(number, value, thread_id, batch, deep)
    elif media_type in NDJSON_TYPES:
        for number, raw in enumerate(body.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                batch.reject(number, f"not valid JSON: {exc}")
                continue
            _check(number, value, thread_id, batch, _brackets(raw) > MAX_DEPTH)
    else:
        raise UnsupportedMediaType(media_type)
    if not batch.events and not batch.rejected_count:
        batch.reject(1, "the body holds no event")
    return batch
