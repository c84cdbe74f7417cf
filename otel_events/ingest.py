"""Replay a Codex JSONL stream (``codex exec --json``) as the spans and metrics the
emitter would have produced live: one trace per turn, one span per item id.

What the real CLI writes, and how it is read here:

* items and ``error`` events that come outside a turn (Codex's "Model metadata ... not
  found" comes before ``turn.started``) are held for the next turn; if none comes they
  stay with the thread (root spans), never a turn of their own;
* a top-level ``error`` event ("Reconnecting... 1/2") is an ``error`` event on the turn's
  span; it does not fail the turn;
* fields known only at completion (a web search's query) refresh the span;
* Codex's ``usage`` is summed over the session, across ``codex exec resume``: a
  ``UsageLedger`` turns it into each turn's own usage;
* a sub-agent's thread (spawned by a ``collab_tool_call``) continues the trace of the
  spawn, when both streams go through one ingester.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import (
    NonRecordingSpan,
    Span,
    SpanContext,
    Tracer,
    TracerProvider,
    set_span_in_context,
)
from pydantic import ValidationError

from otel_events.endings import ABANDONED, CANCELLED, ending_of
from otel_events.metrics import AgentMetrics
from otel_events.protocol import (
    ErrorEvent,
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
from otel_events.tracing import (
    end_span,
    set_item_status,
    set_usage,
    start_item_span,
    start_turn_span,
)

__all__ = ["IngestResult", "Ingester", "UsageLedger", "decode_line", "describe_item",
           "parse_line"]

# What the span's output attribute holds for Codex's item types, which have no `output`.
_OUTPUT_FIELDS = ("output", "aggregated_output", "result", "text", "changes", "items", "message")
# A collab_tool_call's outcome: the threads it reached and the agents' states.
_COLLAB_OUTPUT = ("receiver_thread_ids", "agents_states")
ItemEvent = ItemStarted | ItemUpdated | ItemCompleted
# Token counts as (input, cache read, cache write, output, reasoning).
Tokens = tuple[int, int, int, int, int]
_NO_TOKENS: Tokens = (0, 0, 0, 0, 0)


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
    extra = item.model_extra or {}
    if item.type == "collab_tool_call":
        found = {name: extra[name] for name in _COLLAB_OUTPUT if name in extra}
        if found:
            return found
    for name in _OUTPUT_FIELDS:
        value = getattr(item, name, None)
        if value is None:
            value = extra.get(name)
        if value is not None:
            return value
    return None


def _first_wins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Codex writes `id` twice in web_search items: its own item id, which every other
    # event uses, then the search call's id. Keep the first; the second is the call id.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key not in out:
            out[key] = value
        elif key == "id":
            out.setdefault("call_id", value)
    return out


def decode_line(line: str | bytes) -> Any:
    """One JSON line, decoded; a duplicated key keeps its first value (``_first_wins``).
    Raises ``ValueError`` for a line that is not JSON."""
    marker: Any = b'"id"' if isinstance(line, bytes) else '"id"'
    if line.count(marker) > 1:  # rare: only then pay for the Python-level decoder
        return json.loads(line, object_pairs_hook=_first_wins)
    return orjson.loads(line)


def parse_line(line: str | bytes) -> Event:
    """One line as an event, read as ``decode_line`` reads it."""
    marker: Any = b'"id"' if isinstance(line, bytes) else '"id"'
    if marker in line:
        try:
            return parse_event(decode_line(line))
        except ValueError:
            pass  # not JSON: let the validator word the error
    return parse_event(line)


class UsageLedger:
    """Turns Codex's session-wide usage into each turn's own.

    Codex's ``turn.completed.usage`` is the sum over every turn of the thread so far,
    resumes included. The ledger remembers, per thread, the sums it has seen, in order;
    a turn's usage is its sum minus the one before it. Replaying a stream gives the same
    answer (a sum seen before keeps its place). With ``path`` the ledger is a JSON file
    shared by runs (``otel-events run`` keeps one), so a ``codex exec resume`` in a later
    process is still reported per turn.
    """

    def __init__(self, path: str | Path | None = None, max_threads: int = 1000,
                 max_turns: int = 500) -> None:
        self.path = Path(path) if path is not None else None
        self.max_threads, self.max_turns = max_threads, max_turns
        self._threads: dict[str, list[Tokens]] = {}
        self._changed = False

    def per_turn(self, thread_id: str, total: Tokens) -> Tokens:
        """The share of ``total`` (the session's sum after this turn) that is this turn's."""
        with self._locked():
            sums = self._threads.setdefault(thread_id, [])
            if total in sums:
                index = sums.index(total)
                before = sums[index - 1] if index else _NO_TOKENS
            else:
                # The latest sum this one grew from; none: the first turn we see.
                before = next((s for s in reversed(sums)
                               if all(a <= b for a, b in zip(s, total, strict=True))),
                              _NO_TOKENS)
                sums.append(total)
                del sums[:-self.max_turns]
                self._threads.pop(thread_id)  # most recently used last
                self._threads[thread_id] = sums
                for stale in list(self._threads)[:-self.max_threads]:
                    del self._threads[stale]
                self._changed = True
        return _minus(total, before)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self._changed = False
        if self.path is None:
            yield
            return
        import fcntl  # the ledger file is shared by concurrent runs

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._load()
            yield
            if self._changed:
                self._save()

    def _load(self) -> None:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text())
            self._threads = {str(k): [_minus(tuple(s), _NO_TOKENS) for s in v]
                             for k, v in data.items()}
        except (OSError, ValueError, TypeError):
            self._threads = {}  # missing or unreadable: start afresh

    def _save(self) -> None:
        assert self.path is not None
        temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self._threads))
        os.replace(temporary, self.path)


def _minus(a: tuple[Any, ...], b: Tokens) -> Tokens:
    return (int(a[0]) - b[0], int(a[1]) - b[1], int(a[2]) - b[2], int(a[3]) - b[3],
            int(a[4]) - b[4])


def _tokens(usage: Usage) -> Tokens:
    extra = usage.model_extra or {}
    return (usage.input_tokens, usage.cached_input_tokens,
            int(extra.get("cache_write_input_tokens") or 0), usage.output_tokens,
            int(extra.get("reasoning_output_tokens") or 0))


@dataclass
class _OpenItem:
    span: Span
    start_ns: int
    operation: str | None
    item: ThreadItem
    description: str
    call_id: str | None


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
    """Folds events, one at a time, into spans and metrics.

    ``usage``: the ledger for Codex's session-wide usage (one per ingester by default).
    ``turn_prefix``: turns without an id are named ``{turn_prefix}{n}``.
    ``last_span`` is the span the latest event went to (None: held for a turn to come).
    """

    def __init__(self, tracer: Tracer, metrics: AgentMetrics, agent_name: str,
                 thread_id: str | None = None, content: Content | None = None,
                 usage: UsageLedger | None = None, turn_prefix: str = "turn_") -> None:
        self.tracer = tracer
        self.metrics = metrics
        self.agent_name = agent_name
        self.thread_id = thread_id or "unknown"
        self.content = content or Content()
        self.usage = usage or UsageLedger()
        self.result = IngestResult()
        self.last_span: Span | None = None
        self.turn_id: str | None = None
        #: The last ended turn's own tokens (input, cache read, cache write, output,
        #: reasoning), whatever the producer reported (Codex: the session's sums).
        self.last_usage: Tokens = _NO_TOKENS
        self.turn_prefix = turn_prefix
        self._turn: _OpenTurn | None = None
        self._turn_count = 0
        # Events that came outside a turn, with their times: they go to the next one.
        self._pending: list[tuple[Event, int]] = []
        # Threads spawned by a collab_tool_call -> the spawn's span.
        self._spawned: dict[str, SpanContext] = {}
        self._parent = otel_context.Context()
        # When the latest event happened, and whether any event carried its own time.
        self._last_ns = 0
        self._stamped = False

    @classmethod
    def from_providers(cls, tracer_provider: TracerProvider, meter_provider: MeterProvider,
                       agent_name: str | None = None, **options: Any) -> Ingester:
        """An ingester whose spans and metrics come from these providers under the
        emitter's instrumentation scope and agent name; ``options`` as ``__init__``'s."""
        from otel_events import __version__
        from otel_events.emitter import default_agent_name

        return cls(tracer_provider.get_tracer("otel_events", __version__),
                   AgentMetrics(meter_provider.get_meter("otel_events", __version__)),
                   agent_name or default_agent_name(tracer_provider), **options)

    def feed_lines(self, lines: Iterable[str | bytes]) -> IngestResult:
        """Ingest every line; a bad line is recorded as rejected and the rest go on."""
        for number, line in enumerate(lines, start=1):
            self.result.lines = number
            if not line.strip():
                continue
            try:
                self.feed(parse_line(line), time.time_ns())
            except ValidationError as exc:
                self.result.rejected.append((number, describe_error(exc)))
            except ValueError as exc:  # valid, yet not placeable in time (a leap second)
                self.result.rejected.append((number, f"timestamp: {exc}"))
        # A stamped stream (a file) ends with its last event; a live one ends now.
        self.finish(self._last_ns if self._stamped else time.time_ns())
        return self.result

    def feed(self, event: Event, read_ns: int) -> None:
        """One event; ``read_ns`` is used when the event carries no timestamp."""
        now = _event_ns(event.timestamp) if event.timestamp else read_ns
        self._stamped = self._stamped or event.timestamp is not None
        self.last_span = None
        if isinstance(event, ThreadStarted):
            # A new stream (the next `codex exec` of a file): what is still open was left.
            self._end_turn(self._last_ns or now, ABANDONED,
                           "the stream ended before the turn did")
            self._thread(event.thread_id, self._last_ns or now)
        elif isinstance(event, TurnStarted):
            self._end_turn(now, ABANDONED, "a new turn started before this one ended")
            self._start_turn(event.turn_id, now)
        elif isinstance(event, ItemStarted | ItemUpdated | ItemCompleted | ErrorEvent):
            if self._turn is None:
                self._pending.append((event, now))
            else:
                self._in_turn(self._turn, event, now)
        elif isinstance(event, TurnCompleted | TurnFailed):
            if self._turn is None:
                self._start_turn(event.turn_id, min([now, *(t for _, t in self._pending)]))
            usage = self._turn_usage(event)
            if isinstance(event, TurnCompleted):
                self._end_turn(now, None, None, usage)
            else:
                self._end_turn(now, event.error.type or "turn_failed", event.error.message,
                               usage)
        self._last_ns = now

    @property
    def open_turn_id(self) -> str | None:
        """The id of the turn in progress, if one is."""
        return self.turn_id if self._turn is not None else None

    def finish(self, now: int, message: str | None = None) -> None:
        """End of input: a turn still open was abandoned (``message`` says why); work
        held for a turn that never came stays with the thread."""
        self._end_turn(now, ABANDONED, message or "the stream ended before the turn did")
        self._orphans(now)

    # -- threads and turns ----------------------------------------------------------

    def _thread(self, thread_id: str | None, now: int) -> None:
        if thread_id and thread_id != self.thread_id:
            self._orphans(now)
            self.thread_id = thread_id
            spawn = self._spawned.get(thread_id)
            # A sub-agent's turns continue the trace of the call that spawned it.
            self._parent = (set_span_in_context(NonRecordingSpan(spawn)) if spawn
                            else otel_context.Context())

    def _start_turn(self, turn_id: str | None, now: int) -> _OpenTurn:
        self._turn_count += 1
        self.turn_id = turn_id or f"{self.turn_prefix}{self._turn_count}"
        span = start_turn_span(self.tracer, self.agent_name, self.thread_id, self.turn_id,
                               context=self._parent, start_time=now)
        turn = self._turn = _OpenTurn(span, now)
        self.last_span = span
        self.result.turns += 1
        self.result.trace_ids.append(format(span.get_span_context().trace_id, "032x"))
        pending, self._pending = self._pending, []
        for event, when in pending:
            self._in_turn(turn, event, max(when, now))
        self.last_span = span
        return turn

    def _turn_usage(self, event: TurnCompleted | TurnFailed) -> tuple[Tokens, bool]:
        """The turn's tokens, and whether the producer reported the extra counts."""
        if event.usage is None:
            return _NO_TOKENS, False
        tokens = _tokens(event.usage)
        extra = event.usage.model_extra or {}
        detailed = "cache_write_input_tokens" in extra or "reasoning_output_tokens" in extra
        # Codex's events carry no seq and sum usage over the session; ours are per turn.
        if event.seq is None and self.thread_id != "unknown":
            tokens = self.usage.per_turn(self.thread_id, tokens)
        return tokens, detailed

    def _end_turn(self, now: int, error_type: str | None, message: str | None,
                  usage: tuple[Tokens, bool] = (_NO_TOKENS, False)) -> None:
        turn, self._turn = self._turn, None
        if turn is None:
            return
        for open_item in list(turn.items.values()):
            self._end_item(turn, open_item, now, abandoned=True)
        tokens, detailed = usage
        self.last_usage = tokens
        input_tokens, cache_read, cache_write, output_tokens, reasoning = tokens
        set_usage(turn.span, input_tokens, output_tokens, cache_read)
        if detailed:
            turn.span.set_attribute("gen_ai.usage.cache_write.input_tokens", cache_write)
            turn.span.set_attribute("gen_ai.usage.reasoning.output_tokens", reasoning)
        ending = ending_of(message, error_type=error_type)
        end_span(turn.span, ending,
                 message=ending.message and self.content.text(ending.message), end_time=now)
        self.last_span = turn.span
        self.metrics.record_turn(self.agent_name, (now - turn.start_ns) / 1e9, error_type,
                                 input_tokens, output_tokens)

    # -- items ------------------------------------------------------------------------

    def _in_turn(self, turn: _OpenTurn, event: Event, now: int) -> None:
        if isinstance(event, ErrorEvent):
            # A retry notice or a warning: on record, and the turn goes on.
            turn.span.add_event("error", {"error.message": self.content.text(event.message)},
                                timestamp=now)
            self.last_span = turn.span
        elif isinstance(event, ItemStarted | ItemUpdated | ItemCompleted):
            self._item(turn, event, now, set_span_in_context(turn.span))

    def _item(self, turn: _OpenTurn, event: ItemEvent, now: int,
              parent: otel_context.Context, attributes: dict[str, str] | None = None,
              ) -> _OpenItem:
        item = event.item
        current = turn.items.get(item.id)
        if current is None:
            description = self.content.text(describe_item(item))
            # Nested as the emitter nests it live: under its parent item, while open.
            parent_item = turn.items.get(item.parent_id) if item.parent_id else None
            if parent_item is not None:
                parent = set_span_in_context(parent_item.span)
            span, operation = start_item_span(
                self.tracer, parent, item.id, item.type, description, item.name or item.tool,
                item.parent_id, start_time=now, call_id=item.call_id)
            if attributes:
                span.set_attributes(attributes)
            current = turn.items[item.id] = _OpenItem(span, now, operation, item, description,
                                                         item.call_id)
            self.result.items += 1
        current.item = item
        self.last_span = current.span
        if isinstance(event, ItemCompleted):
            self._end_item(turn, current, now)
        return current

    def _end_item(self, turn: _OpenTurn, open_item: _OpenItem, now: int,
                  abandoned: bool = False) -> None:
        item, span = open_item.item, open_item.span
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
            error_type, message = _failure(item)
        self._refresh(open_item)
        if item.exit_code is not None:
            span.set_attribute("process.exit.code", item.exit_code)
        output = _output_of(item)
        attributes = ({} if output is None
                      else self.content.output_attributes(self.content.encode(output)))
        set_item_status(attributes, status)
        if attributes:
            span.set_attributes(attributes)
        ending = ending_of(message, error_type=error_type)
        end_span(span, ending, message=ending.message and self.content.text(ending.message),
                 end_time=now)
        self.metrics.record_item(item.type, status, (now - open_item.start_ns) / 1e9,
                                 open_item.operation, item.name or item.tool or item.type,
                                 error_type, set_span_in_context(span))
        if item.type == "collab_tool_call" and item.tool in (None, "spawn_agent"):
            for thread_id in (item.model_extra or {}).get("receiver_thread_ids") or []:
                self._spawned.setdefault(str(thread_id), span.get_span_context())

    def _refresh(self, open_item: _OpenItem) -> None:
        """What is known only at the end (a web search's query) replaces the start's."""
        item, span = open_item.item, open_item.span
        description = self.content.text(describe_item(item))
        if description != open_item.description:
            span.set_attribute("otel_events.item.description", description)
        if (item.call_id and item.call_id != open_item.call_id
                and open_item.operation == "execute_tool"):
            span.set_attribute("gen_ai.tool.call.id", item.call_id)

    def _orphans(self, now: int) -> None:
        """Work that came outside any turn: spans of the thread, with no turn of their own."""
        pending, self._pending = self._pending, []
        if not pending:
            return
        holder = _OpenTurn(NonRecordingSpan(SpanContext(0, 0, False)), now)
        for event, when in pending:
            if isinstance(event, ErrorEvent):
                span = self.tracer.start_span("error", context=self._parent, start_time=when,
                                              attributes=self._thread_attributes())
                span.add_event("error", {"error.message": self.content.text(event.message)},
                               timestamp=when)
                span.end(end_time=when)
            elif isinstance(event, ItemStarted | ItemUpdated | ItemCompleted):
                self._item(holder, event, when, self._parent, self._thread_attributes())
        for open_item in list(holder.items.values()):
            self._end_item(holder, open_item, now, abandoned=True)

    def _thread_attributes(self) -> dict[str, str]:
        return {"gen_ai.conversation.id": self.thread_id}


def _failure(item: ThreadItem) -> tuple[str, str]:
    """``error.type`` and message of a failed item: a command's is its exit code, as in
    the GenAI conventions' command tool spans."""
    if item.error is not None:
        return item.error.type or f"{item.type}_failed", item.error.message
    if item.exit_code:
        return str(item.exit_code), f"exit code {item.exit_code}"
    return f"{item.type}_failed", f"{item.type} failed"


def _event_ns(timestamp: str) -> int:
    moment = datetime.fromisoformat(timestamp.replace("z", "Z"))
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
