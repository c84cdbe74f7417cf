"""Replay a Codex JSONL stream (``codex exec --json``) as the spans and metrics the
emitter would have produced live: one trace per turn, one span per item id.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Span, Tracer, set_span_in_context
from pydantic import ValidationError

from otel_events.metrics import AgentMetrics
from otel_events.protocol import (
    Event,
    ItemCompleted,
    ItemStarted,
    ItemUpdated,
    ThreadItem,
    ThreadStarted,
    TurnCompleted,
    TurnFailed,
    TurnStarted,
    Usage,
    describe_error,
    parse_event,
)
from otel_events.redaction import Content
from otel_events.endings import ABANDONED, CANCELLED, ending_of
from otel_events.tracing import end_span, set_usage, start_item_span, start_turn_span

__all__ = ["IngestResult", "Ingester", "describe_item"]

# What the span's output attribute holds for Codex's item types, which have no `output`.
_OUTPUT_FIELDS = ("output", "aggregated_output", "result", "text", "changes", "items", "message")


def describe_item(item: ThreadItem) -> str:
    """A brief line for items that came without a description (Codex's never have one)."""
    if item.description:
        return item.description
    if item.command:
        return f"Running {item.command}"
    if item.changes is not None:
        paths = ", ".join(str(change.get("path")) for change in item.changes[:3])
        return f"Changing {paths}" if paths else "Changing files"
    if item.tool:
        return f"Calling {item.server + '.' if item.server else ''}{item.tool}"
    if item.query:
        return f"Searching for {item.query}"
    text = item.text or item.message
    if text:
        line = text.strip().splitlines()[0] if text.strip() else ""
        return line[:117] + "..." if len(line) > 120 else line
    return item.type.replace("_", " ")


def _output_of(item: ThreadItem) -> Any:
    for name in _OUTPUT_FIELDS:
        value = getattr(item, name, None)
        if value is None and item.model_extra:
            value = item.model_extra.get(name)
        if value is not None:
            return value
    return None


@dataclass
class _OpenItem:
    span: Span
    start_ns: int
    operation: str | None
    item: ThreadItem


@dataclass
class _OpenTurn:
    span: Span
    start_ns: int
    items: dict[str, _OpenItem] = field(default_factory=dict)


@dataclass
class IngestResult:
    """What one ingest did: counts, and the lines it rejected with why."""

    lines: int = 0
    turns: int = 0
    items: int = 0
    trace_ids: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str]] = field(default_factory=list)


class Ingester:
    """Folds events, one at a time, into spans and metrics."""

    def __init__(self, tracer: Tracer, metrics: AgentMetrics, agent_name: str,
                 thread_id: str | None = None, content: Content | None = None) -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.agent_name = agent_name
        self.thread_id = thread_id or "unknown"
        self.content = content or Content()
        self.result = IngestResult()
        self._turn: _OpenTurn | None = None
        self._turn_count = 0

    def feed_lines(self, lines: Iterable[str | bytes]) -> IngestResult:
        """Ingest every line; a bad line is recorded as rejected and the rest go on."""
        for number, line in enumerate(lines, start=1):
            self.result.lines = number
            if not line.strip():
                continue
            try:
                event = parse_event(line)
                self.feed(event, time.time_ns())
            except ValidationError as exc:
                self.result.rejected.append((number, describe_error(exc)))
            except ValueError as exc:  # valid, yet not placeable in time (a leap second)
                self.result.rejected.append((number, f"timestamp: {exc}"))
        self.finish(time.time_ns())
        return self.result

    def feed(self, event: Event, read_ns: int) -> None:
        """One event; ``read_ns`` is used when the event carries no timestamp."""
        now = _event_ns(event.timestamp) if event.timestamp else read_ns
        if isinstance(event, ThreadStarted):
            self.thread_id = event.thread_id or self.thread_id
        elif isinstance(event, TurnStarted):
            self._end_turn(now, ABANDONED, "a new turn started before this one ended")
            self._start_turn(event.turn_id, now)
        elif isinstance(event, ItemStarted | ItemUpdated | ItemCompleted):
            turn = self._turn or self._start_turn(event.turn_id, now)
            self._item(turn, event, now)
        elif isinstance(event, TurnCompleted):
            if self._turn is None:
                self._start_turn(event.turn_id, now)
            usage = event.usage
            self._end_turn(now, None, None, usage.input_tokens, usage.output_tokens,
                           usage.cached_input_tokens)
        elif isinstance(event, TurnFailed):
            if self._turn is None:
                self._start_turn(event.turn_id, now)
            failed_usage = event.usage or Usage()
            self._end_turn(now, event.error.type or "turn_failed", event.error.message,
                           failed_usage.input_tokens, failed_usage.output_tokens,
                           failed_usage.cached_input_tokens)

    def finish(self, now: int) -> None:
        """End of input: a turn still open was abandoned."""
        self._end_turn(now, ABANDONED, "the stream ended before the turn did")

    def _start_turn(self, turn_id: str | None, now: int) -> _OpenTurn:
        self._turn_count += 1
        # An empty context: every turn is the root of its own trace.
        span = start_turn_span(self.tracer, self.agent_name, self.thread_id,
                               turn_id or f"turn_{self._turn_count}",
                               context=otel_context.Context(), start_time=now)
        self._turn = _OpenTurn(span, now)
        self.result.turns += 1
        self.result.trace_ids.append(format(span.get_span_context().trace_id, "032x"))
        return self._turn

    def _item(self, turn: _OpenTurn, event: ItemStarted | ItemUpdated | ItemCompleted,
              now: int) -> None:
        item = event.item
        current = turn.items.get(item.id)
        if current is None:
            span, operation = start_item_span(
                self.tracer, set_span_in_context(turn.span), item.id, item.type,
                describe_item(item), item.name or item.tool, item.parent_id, start_time=now)
            current = turn.items[item.id] = _OpenItem(span, now, operation, item)
            self.result.items += 1
        current.item = item
        if isinstance(event, ItemCompleted):
            self._end_item(turn, current, now)

    def _end_item(self, turn: _OpenTurn, open_item: _OpenItem, now: int,
                  abandoned: bool = False) -> None:
        item = open_item.item
        turn.items.pop(item.id, None)
        status = "failed" if abandoned else str(item.status or "completed")
        error_type: str | None = None
        message: str | None = None
        if abandoned:
            error_type, message = ABANDONED, "the turn ended before the item did"
        elif status == "cancelled":
            error_type = CANCELLED
            message = item.error.message if item.error else "cancelled"
        elif status == "failed":
            error_type = (item.error.type if item.error and item.error.type
                          else f"{item.type}_failed")
            message = item.error.message if item.error else _failure_message(item)
        span = open_item.span
        output = _output_of(item)
        if output is not None:
            span.set_attributes(self.content.output_attributes(self.content.encode(output)))
        span.set_attribute("otel_events.item.status", status)
        ending = ending_of(message, error_type=error_type)
        end_span(span, ending, message=ending.message and self.content.text(ending.message),
                 end_time=now)
        self.metrics.record_item(item.type, status, (now - open_item.start_ns) / 1e9,
                                 open_item.operation, item.name or item.tool or item.type,
                                 error_type)

    def _end_turn(self, now: int, error_type: str | None, message: str | None,
                  input_tokens: int = 0, output_tokens: int = 0,
                  cached_input_tokens: int = 0) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        for open_item in list(turn.items.values()):
            self._end_item(turn, open_item, now, abandoned=True)
        set_usage(turn.span, input_tokens, output_tokens, cached_input_tokens)
        ending = ending_of(message, error_type=error_type)
        end_span(turn.span, ending,
                 message=ending.message and self.content.text(ending.message), end_time=now)
        self.metrics.record_turn(self.agent_name, (now - turn.start_ns) / 1e9, error_type,
                                 input_tokens, output_tokens)


def _failure_message(item: ThreadItem) -> str:
    if item.exit_code is not None:
        return f"exit code {item.exit_code}"
    return f"{item.type} failed"


def _event_ns(timestamp: str) -> int:
    moment = datetime.fromisoformat(timestamp.replace("z", "Z"))
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
