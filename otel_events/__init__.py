"""otel-events: make an AI agent's work observable, live and after the fact.

Report each step once through an ``EventEmitter``; get a Codex-compatible JSONL event
stream, OpenTelemetry spans and metrics, and (through the bridge) Server-Sent Events.
"""

__version__ = "0.1.0"

from otel_events.broker import Entry, EventLog, Subscription
from otel_events.config import Telemetry, configure
from otel_events.emitter import EventEmitter, Item, Turn
from otel_events.http_sink import HttpSink
from otel_events.protocol import (
    Event,
    EventType,
    ItemStatus,
    ItemType,
    encode_event,
    parse_event,
)
from otel_events.redaction import Content, scrub_secrets
from otel_events.sinks import JsonlSink, Sink

__all__ = [
    "Content",
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
