"""otel-events: make an AI agent's work observable, live and after the fact.

Report each step once through an ``EventEmitter``; get a Codex-compatible JSONL event
stream, OpenTelemetry spans and metrics, and (through the bridge) Server-Sent Events.

Importing the package loads only what agent code needs on its hot path (the emitter,
the event log, the OpenTelemetry API, orjson). The typed protocol models (pydantic),
``configure`` (the OpenTelemetry SDK and exporters), ``HttpSink`` (httpx) and
``RedisSink`` (redis-py) load on first use; the bridge is ``otel_events.bridge``,
behind the ``[bridge]`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from otel_events.emitter import EventEmitter, Item, Turn
from otel_events.endings import Cancelled
from otel_events.kinds import EventType, ItemStatus, ItemType
from otel_events.log import Cursor, Entry, EventLog, Subscription
from otel_events.redaction import Content, scrub_secrets
from otel_events.sinks import JsonlSink, Sink

if TYPE_CHECKING:
    from otel_events.config import Telemetry, configure
    from otel_events.http_sink import HttpSink
    from otel_events.protocol import Event, encode_event, parse_event
    from otel_events.redis_sink import RedisSink

# Loaded on first use: name -> module.
_LAZY = {
    "Telemetry": "otel_events.config",
    "configure": "otel_events.config",
    "HttpSink": "otel_events.http_sink",
    "RedisSink": "otel_events.redis_sink",
    "Event": "otel_events.protocol",
    "encode_event": "otel_events.protocol",
    "parse_event": "otel_events.protocol",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'otel_events' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Cancelled",
    "Content",
    "Cursor",
    "Entry",
    "Event",
    "EventEmitter",
    "EventLog",
    "EventType",
    "HttpSink",
    "Item",
    "ItemStatus",
    "ItemType",
    "JsonlSink",
    "RedisSink",
    "Sink",
    "Subscription",
    "Telemetry",
    "Turn",
    "__version__",
    "configure",
    "encode_event",
    "parse_event",
    "scrub_secrets",
]
