"""An ingest request body, checked line by line: valid lines pass whatever the others do.

The body is NDJSON (one event a line) or a JSON array of events. Line numbers are
1-based: the physical line of NDJSON, the element of an array. Error texts name the
field and the problem, never the submitted value (event content stays out of responses
that may be logged by proxies, and out of the bridge's own logs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import orjson
from pydantic import ValidationError

from otel_events.bridge.broker import EventLine
from otel_events.protocol import describe_error, parse_event

__all__ = ["NDJSON_TYPES", "ParsedBatch", "UnsupportedMediaType", "parse_batch"]

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/x-jsonlines", "application/jsonlines"})
_JSON_TYPES = frozenset({"application/json"})
# The type goes into the SSE ``event:`` line: one line, no spaces, short.
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9_.:/-]{1,100}$")
_RESERVED_TYPES = frozenset({"reset"})


class UnsupportedMediaType(ValueError):
    """Neither NDJSON nor JSON."""


@dataclass(slots=True)
class ParsedBatch:
    """The valid lines in body order, and the rejected ones with why."""

    events: list[EventLine] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


def _check(line: int, value: object, thread_id: str, batch: ParsedBatch) -> None:
    if not isinstance(value, dict):
        batch.rejected.append((line, "an event must be a JSON object"))
        return
    kind = value.get("type")
    if not isinstance(kind, str) or not _EVENT_TYPE.match(kind):
        batch.rejected.append(
            (line, "type: required, 1-100 characters of letters, digits and _.:/-"))
        return
    if kind in _RESERVED_TYPES:
        batch.rejected.append((line, f"type: {kind!r} is reserved for the bridge"))
        return
    owner = value.get("thread_id")
    if owner is not None and owner != thread_id:
        batch.rejected.append((line, "thread_id: differs from the thread in the URL"))
        return
    try:
        event = parse_event(value)
    except ValidationError as exc:
        batch.rejected.append((line, describe_error(exc)))
        return
    # The same line sent again (a retry) has the same canonical form. Only lines with
    # the producer's seq are ever de-duplicated, so only they need the digest.
    digest = (hash(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))
              if event.seq is not None else None)
    batch.events.append(EventLine(line, event, digest, value))


def parse_batch(body: bytes, media_type: str, thread_id: str) -> ParsedBatch:
    """Check every line of ``body``; raises ``UnsupportedMediaType`` for other types."""
    batch = ParsedBatch()
    if media_type in _JSON_TYPES:
        try:
            values = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            batch.rejected.append((1, f"the body is not valid JSON: {exc}"))
            return batch
        if isinstance(values, dict):
            values = [values]
        if not isinstance(values, list):
            batch.rejected.append((1, "the body must be a JSON array of events"))
            return batch
        for number, value in enumerate(values, 1):
            _check(number, value, thread_id, batch)
    elif media_type in NDJSON_TYPES:
        for number, raw in enumerate(body.split(b"\n"), 1):
            if not raw.strip():
                continue
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                batch.rejected.append((number, f"not valid JSON: {exc}"))
                continue
            _check(number, value, thread_id, batch)
    else:
        raise UnsupportedMediaType(media_type)
    if not batch.events and not batch.rejected:
        batch.rejected.append((1, "the body holds no event"))
    return batch
