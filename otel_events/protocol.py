"""The wire protocol: one JSON object per line, discriminated by ``type``.

Every event ``codex exec --json`` writes parses here with Codex's own field names.
otel-events adds a superset on the events it emits (``thread_id``, ``turn_id``, ``seq``,
``timestamp``, ``trace_id``, ``span_id``; ``description``, ``status``, ``output`` and
timings on items) and a few event types of its own (``progress.update``,
``token.count``, ``stream.overflow``).

Nothing unknown is lost: unknown fields, item types and event types are kept, so
``parse_event(line)`` then ``encode_event(event)`` gives back the same JSON object.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    ValidationError,
)

from otel_events.kinds import (
    TERMINAL_EVENT_TYPES,
    TRANSIENT_EVENT_TYPES,
    EventType,
    ItemStatus,
    ItemType,
)

__all__ = [
    "TERMINAL_EVENT_TYPES",
    "TRANSIENT_EVENT_TYPES",
    "ErrorEvent",
    "ErrorInfo",
    "Event",
    "EventType",
    "ItemCompleted",
    "ItemStarted",
    "ItemStatus",
    "ItemType",
    "ItemUpdated",
    "ProgressUpdate",
    "StreamOverflow",
    "ThreadItem",
    "ThreadStarted",
    "TokenCount",
    "TurnCompleted",
    "TurnFailed",
    "TurnStarted",
    "UnknownEvent",
    "Usage",
    "describe_error",
    "encode_event",
    "event_json_schema",
    "parse_event",
]


# RFC 3339 with a mandatory offset. A pattern (checked in Rust) rather than a parse, and the
# string kept as it came, so a round trip is byte-exact and validation stays cheap.
_RFC3339 = (
    r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])[Tt ]([01]\d|2[0-3]):[0-5]\d:([0-5]\d|60)"
    r"(\.\d+)?([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
Timestamp = Annotated[str, Field(pattern=_RFC3339, json_schema_extra={"format": "date-time"})]
TraceId = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
SpanId = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class _Open(BaseModel):
    """Base of every model: unknown fields are kept and written back."""

    model_config = ConfigDict(extra="allow", use_enum_values=True)


class Usage(_Open):
    """Token usage, in Codex's field names."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0

    def model_post_init(self, context: Any, /) -> None:
        # Codex always writes all three counts; so do we, even when built with fewer.
        self.__pydantic_fields_set__.update(("input_tokens", "cached_input_tokens",
                                             "output_tokens"))


class ErrorInfo(_Open):
    """An error: Codex's ``{message}``, plus a low-cardinality ``type`` of ours."""

    message: str
    type: str | None = None


# ---------------------------------------------------------------------------
# Items
# ---------------------------------------------------------------------------


class ThreadItem(_Open):
    """One step of a turn. Fields of Codex's item types are optional members here."""

    id: str
    #: An ``ItemType`` value or any other string.
    type: str
    #: ``in_progress``, ``completed``, ``failed`` or ``declined`` (any string accepted).
    status: ItemStatus | str | None = None
    # -- otel-events superset --
    #: A brief human-readable line: what this step is doing.
    description: str | None = None
    #: Tool, data source or guardrail name; the span name uses it.
    name: str | None = None
    #: The enclosing item's id when items nest.
    parent_id: str | None = None
    #: The model's id for this tool call (``gen_ai.tool.call.id`` on the span).
    call_id: str | None = None
    output: Any = None
    error: ErrorInfo | None = None
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    duration_ms: float | None = None
    # -- Codex's type-specific fields --
    #: agent_message, reasoning, plan.
    text: str | None = None
    #: command_execution.
    command: str | None = None
    aggregated_output: str | None = None
    exit_code: int | None = None
    #: file_change: ``[{path, kind}]``.
    changes: list[dict[str, Any]] | None = None
    #: mcp_tool_call.
    server: str | None = None
    tool: str | None = None
    arguments: Any = None
    result: Any = None
    #: web_search.
    query: str | None = None
    #: todo_list: ``[{text, completed}]``.
    items: list[dict[str, Any]] | None = None
    #: error items.
    message: str | None = None


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


class _Event(_Open):
    type: str
    #: The thread (conversation) this event belongs to.
    thread_id: str | None = None
    #: The turn this event belongs to.
    turn_id: str | None = None
    #: Per-thread sequence number, strictly increasing from 1: the resume cursor.
    seq: int | None = None
    #: When the event happened (RFC 3339, with offset).
    timestamp: Timestamp | None = None
    #: W3C trace id (32 hex) of the span this event belongs to.
    trace_id: TraceId | None = None
    #: W3C span id (16 hex) of the span this event belongs to.
    span_id: SpanId | None = None


class ThreadStarted(_Event):
    """The first event of a thread."""

    type: Literal["thread.started"] = "thread.started"
    thread_id: str | None = None


class TurnStarted(_Event):
    """A turn begins: the agent starts working on one prompt."""

    type: Literal["turn.started"] = "turn.started"


class TurnCompleted(_Event):
    """A turn ended well, with its token usage."""

    type: Literal["turn.completed"] = "turn.completed"
    usage: Usage = Field(default_factory=Usage)
    duration_ms: float | None = None


class TurnFailed(_Event):
    """A turn ended with an error."""

    type: Literal["turn.failed"] = "turn.failed"
    error: ErrorInfo
    usage: Usage | None = None
    duration_ms: float | None = None


class ItemStarted(_Event):
    """An item begins; its status is ``in_progress``."""

    type: Literal["item.started"] = "item.started"
    item: ThreadItem


class ItemUpdated(_Event):
    """An item in progress changed (partial output, new fields)."""

    type: Literal["item.updated"] = "item.updated"
    item: ThreadItem


class ItemCompleted(_Event):
    """An item ended: ``completed``, ``failed`` or ``declined``."""

    type: Literal["item.completed"] = "item.completed"
    item: ThreadItem


class ItemPlanDelta(_Event):
    """Codex: a piece of plan text streamed for an item."""

    type: Literal["item.plan.delta"] = "item.plan.delta"
    item_id: str | None = None
    delta: str | None = None


class RequestUserInput(_Event):
    """Codex: the agent asks the user something; fields kept as they come."""

    type: Literal["request_user_input"] = "request_user_input"


class ErrorEvent(_Event):
    """A stream-level error that does not end the turn by itself."""

    type: Literal["error"] = "error"
    message: str


class ProgressUpdate(_Event):
    """How far an item has got: a fraction in [0, 1] and/or a message."""

    type: Literal["progress.update"] = "progress.update"
    item_id: str
    fraction: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    message: str | None = None


class TokenCount(_Event):
    """Running token usage of the current turn."""

    type: Literal["token.count"] = "token.count"
    usage: Usage


class StreamOverflow(_Event):
    """Sent to a reader that fell too far behind, as its last event: it was cut off."""

    type: Literal["stream.overflow"] = "stream.overflow"
    #: The last seq this reader was given; resume from there (for example via the bridge).
    last_seq: int | None = None
    #: How many events it missed, at least.
    missed: int = 0
    message: str = "subscriber fell behind the event buffer and was cut off"


class UnknownEvent(_Event):
    """An event type this version does not know: kept whole."""

    type: str


_KNOWN: dict[str, type[_Event]] = {
    cls.model_fields["type"].default: cls
    for cls in (ThreadStarted, TurnStarted, TurnCompleted, TurnFailed, ItemStarted,
                ItemUpdated, ItemCompleted, ItemPlanDelta, RequestUserInput, ErrorEvent,
                ProgressUpdate, TokenCount, StreamOverflow)
}


def _event_tag(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    # A "type" that is not a string (a list, say) goes to the catch-all, whose model then
    # refuses it with a ValidationError: never a TypeError from looking it up.
    return kind if isinstance(kind, str) and kind in _KNOWN else "unknown"


Event = Annotated[
    Annotated[ThreadStarted, Tag("thread.started")]
    | Annotated[TurnStarted, Tag("turn.started")]
    | Annotated[TurnCompleted, Tag("turn.completed")]
    | Annotated[TurnFailed, Tag("turn.failed")]
    | Annotated[ItemStarted, Tag("item.started")]
    | Annotated[ItemUpdated, Tag("item.updated")]
    | Annotated[ItemCompleted, Tag("item.completed")]
    | Annotated[ItemPlanDelta, Tag("item.plan.delta")]
    | Annotated[RequestUserInput, Tag("request_user_input")]
    | Annotated[ErrorEvent, Tag("error")]
    | Annotated[ProgressUpdate, Tag("progress.update")]
    | Annotated[TokenCount, Tag("token.count")]
    | Annotated[StreamOverflow, Tag("stream.overflow")]
    | Annotated[UnknownEvent, Tag("unknown")],
    Discriminator(_event_tag),
]
"""Any event of the protocol."""

EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


# The validator of each model the union picks, called directly: ``model_validate`` only
# passes its defaults on, and its Python-level handling of them costs a quarter of the
# validation of a typical event (the bridge validates every line it is sent).
_VALIDATORS = {kind: cls.__pydantic_validator__ for kind, cls in _KNOWN.items()}
_UNKNOWN_VALIDATOR = UnknownEvent.__pydantic_validator__


def parse_event(data: str | bytes | dict[str, Any]) -> Event:
    """Validate one event (a JSON line or a decoded object); raises ``ValidationError``."""
    if isinstance(data, dict):
        kind = data.get("type")
        if isinstance(kind, str):
            # The model the union would pick, validated alone: the same event at about
            # half the cost of the union's dispatch. A failure is validated again
            # through the union below, so the error's locations are the protocol's.
            try:
                event: Event = _VALIDATORS.get(kind, _UNKNOWN_VALIDATOR).validate_python(data)
                return event
            except ValidationError:
                pass
        return EVENT_ADAPTER.validate_python(data)
    return EVENT_ADAPTER.validate_json(data)


def describe_error(error: ValidationError) -> str:
    """A short account of why an event was refused: where and what, never the value."""
    parts = []
    for detail in error.errors(include_url=False, include_input=False)[:3]:
        where = ".".join(str(part) for part in detail["loc"]) or "event"
        parts.append(f"{where}: {detail['msg']}")
    return "; ".join(parts)


def encode_event(event: Event) -> bytes:
    """The event as one compact JSON line (without the newline), as it was given."""
    if "type" in event.model_fields_set:
        return event.model_dump_json(exclude_unset=True).encode()
    # Built in Python with its default ``type``: that field must still be written.
    return orjson.dumps({"type": event.type, **event.model_dump(mode="json", exclude_unset=True)})


def event_json_schema(ref_template: str = "#/$defs/{model}") -> dict[str, Any]:
    """JSON Schema of one line of the protocol (``ref_template`` as pydantic takes it)."""
    schema = EVENT_ADAPTER.json_schema(ref_template=ref_template)
    # ``UnknownEvent`` takes any type a newer producer may send, so a known event matches
    # its own model and that one too: "one of" would reject every known event.
    if "oneOf" in schema:
        schema["anyOf"] = schema.pop("oneOf")
    schema["title"] = "otel-events protocol event"
    return schema
