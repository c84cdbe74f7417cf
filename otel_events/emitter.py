"""The emitter: agent code reports each step once; events, spans and metrics follow.

One ``EventEmitter`` per thread (conversation). ``emitter.turn()`` opens a turn (a span
``invoke_agent {agent}``); ``turn.item(...)`` opens an item (a child span). Both are
context managers for sync and async code, and both can be ended explicitly.

The emitting path does no I/O: an event is encoded once (orjson) and written into the
emitter's ``EventLog``; subscribers and sinks read it from there. Spans go to whatever
span processors the tracer provider has (a batch processor keeps exporters off this path).
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import os
import threading
import time
import uuid
import weakref
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self

import orjson
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Span

from otel_events import __version__
from otel_events.endings import ABANDONED, CANCELLED, Ending, ending_of
from otel_events.kinds import ItemStatus, ItemType
from otel_events.log import Entry, EventLog, Subscription
from otel_events.metrics import AgentMetrics
from otel_events.redaction import Content
from otel_events.tracing import (
    end_span,
    set_item_status,
    set_usage,
    start_item_span,
    start_turn_span,
)

if TYPE_CHECKING:
    from types import TracebackType

    from otel_events.protocol import Event
    from otel_events.sinks import Sink

__all__ = ["EventEmitter", "Item", "Turn"]

_current_item: contextvars.ContextVar[Item | None] = contextvars.ContextVar(
    "otel_events_item", default=None
)
_current_turn: contextvars.ContextVar[Turn | None] = contextvars.ContextVar(
    "otel_events_turn", default=None
)

_IN_PROGRESS = ItemStatus.IN_PROGRESS.value
_COMPLETED = ItemStatus.COMPLETED.value
_FAILED = ItemStatus.FAILED.value
_DECLINED = ItemStatus.DECLINED.value
_CANCELLED = ItemStatus.CANCELLED.value

# What the emitter writes on every event; a caller's event cannot set these.
_STAMPED = ("type", "thread_id", "turn_id", "seq", "timestamp", "trace_id", "span_id")


# "000" .. "999": the microseconds are written as two of these (a third cheaper than
# formatting a six-digit int on every event).
_DIGITS3 = [f"{i:03d}" for i in range(1000)]


class _Clock:
    """RFC 3339 UTC timestamps from ``time.time_ns()``, formatting the date once a second."""

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached = (-1, "")

    def format(self, ns: int) -> str:
        second, rest = divmod(ns, 1_000_000_000)
        # One tuple, replaced whole: threads formatting at once never mix two seconds.
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
            self._cached = (second, prefix)
        micros = rest // 1000
        return f"{prefix}{_DIGITS3[micros // 1000]}{_DIGITS3[micros % 1000]}Z"


def _encode(body: dict[str, Any]) -> bytes:
    # orjson returns its result in a buffer of at least 4 KiB; the log holds thousands of
    # events, so it keeps an exact-size copy (slicing off an appended newline makes one).
    return orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)[:-1]


def _hex_ids(span: Span) -> tuple[str | None, str | None]:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    # W3C hex; bytes.hex() is about twice as fast as formatting the int.
    return ctx.trace_id.to_bytes(16, "big").hex(), ctx.span_id.to_bytes(8, "big").hex()


def _open_parent(emitter: EventEmitter, turn: Turn | None) -> Item | None:
    """The current item, if it is still open and of the same emitter and turn."""
    parent = _current_item.get()
    if (parent is None or parent.emitter is not emitter or parent.turn is not turn
            or parent.status != _IN_PROGRESS):
        return None
    return parent


def default_agent_name(provider: trace.TracerProvider) -> str:
    resource = getattr(provider, "resource", None)
    name = resource.attributes.get("service.name") if resource is not None else None
    if not isinstance(name, str) or name.startswith("unknown_service"):
        name = os.environ.get("OTEL_SERVICE_NAME") or "agent"
    return name


class _Scope:
    """Shared by turns and items: context-manager plumbing and context propagation.

    Entering makes the scope current twice over: for otel-events (so a nested
    ``turn.item(...)`` finds its parent) and for OpenTelemetry (so spans the application
    starts inside become children of this one). Leaving ends the scope: completed, or
    as ``otel_events.endings`` rules for the exception passing through.
    """

    # Slots: an item is made for every step; without a __dict__ it is smaller, faster to
    # read and one allocation fewer.
    __slots__ = ("_context", "_otel_token", "_var_token", "span", "span_id", "trace_id",
                 "turn_id")
    _current: ClassVar[contextvars.ContextVar[Any]]
    span: Span
    trace_id: str | None
    span_id: str | None
    turn_id: str | None
    _context: otel_context.Context | None
    _var_token: contextvars.Token[Any] | None
    _otel_token: object | None
    #: Whether it has ended (completed, failed...), by any path.
    ended: bool

    def _start_scope(self) -> None:
        self._context = self._var_token = self._otel_token = None

    @property
    def context(self) -> otel_context.Context:
        """An OpenTelemetry context with this span current (made once)."""
        if self._context is None:
            self._context = trace.set_span_in_context(self.span)
        return self._context

    def complete(self) -> None:
        raise NotImplementedError

    def fail(self, error: BaseException | str, *, error_type: str | None = None) -> None:
        raise NotImplementedError

    def cancel(self, reason: str | None = None) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._otel_token = otel_context.attach(self.context)
        self._var_token = self._current.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A context entered in one task and left in another cannot be reset; the work is
        # still ended correctly, so that is not worth an error. (try/except, not
        # contextlib.suppress: this runs for every item, and costs nothing when all is well.)
        if self._var_token is not None:
            try:
                self._current.reset(self._var_token)
            except ValueError:
                pass
            self._var_token = None
        if self._otel_token is not None:
            otel_context.detach(self._otel_token)  # type: ignore[arg-type]  # logs, never raises
            self._otel_token = None
        if exc is not None:
            self.fail(exc)
        elif not self.ended:  # as a rule the block ended it already (``item.complete(...)``)
            self.complete()

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


class _Recorder:
    """What turns and items of one emitter share: the one small interface between them.

    It numbers and stamps events, encodes them once into the log, and keeps the open
    turns and items that closing the emitter must end.
    """

    def __init__(self, thread_id: str, tracer: trace.Tracer, metrics: AgentMetrics,
                 content: Content, capacity: int, max_bytes: int) -> None:
        self.thread_id = thread_id
        self.tracer = tracer
        self.metrics = metrics
        self.content = content
        self.log = EventLog(capacity, max_bytes=max_bytes)
        self.lock = threading.Lock()
        self.clock = _Clock()
        self.open_turns: dict[str, Turn] = {}
        self.open_items: dict[str, Item] = {}
        self._turn_ids = itertools.count(1)
        self._item_ids = itertools.count(1)
        self._started = False

    def next_turn_id(self) -> str:
        return f"turn_{next(self._turn_ids)}"

    def next_item_id(self) -> str:
        return f"item_{next(self._item_ids)}"

    def fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Extra event fields, through the content pass (``None`` when not captured)."""
        content = self.content
        if not content.capture:
            return dict.fromkeys(fields)
        return {key: orjson.Fragment(content.encode(value)) for key, value in fields.items()}

    def publish(self, kind: str, scope: Turn | Item | None, payload: dict[str, Any],
                timestamp: str | None = None) -> Entry:
        """Stamp, encode once and append to the log. The only place events are made."""
        if timestamp is None:
            timestamp = self.clock.format(time.time_ns())
        log = self.log
        # acquire/release rather than ``with``: a third cheaper, on every event; nothing
        # between them can leave the lock taken (try/finally).
        self.lock.acquire()
        try:
            if not self._started:
                self._started = True
                log.append("thread.started", _encode({
                    "type": "thread.started", "thread_id": self.thread_id,
                    "seq": log.next_seq, "timestamp": timestamp}))
            if scope is None:
                body = {"type": kind, "thread_id": self.thread_id, "seq": log.next_seq,
                        "timestamp": timestamp, **payload}
            else:
                body = {"type": kind, "thread_id": self.thread_id, "turn_id": scope.turn_id,
                        "seq": log.next_seq, "timestamp": timestamp,
                        "trace_id": scope.trace_id, "span_id": scope.span_id, **payload}
                # Rare: an item outside any turn, or a tracer that records nothing.
                if scope.turn_id is None:
                    del body["turn_id"]
                if scope.trace_id is None:
                    del body["trace_id"], body["span_id"]
            return log.append(kind, _encode(body))
        finally:
            self.lock.release()


class Item(_Scope):
    """One step of a turn. Ends exactly once: complete, fail, decline or cancel."""

    __slots__ = ("_head", "_operation", "_rec", "call_id", "description", "emitter", "id",
                 "name", "parent_id", "started_at", "started_ns", "status", "turn", "type")
    _current = _current_item

    def __init__(
        self,
        emitter: EventEmitter,
        turn: Turn | None,
        item_type: ItemType | str,
        description: str | None,
        *,
        name: str | None,
        call_id: str | None = None,
        parent: Item | None,
        fields: dict[str, Any],
    ) -> None:
        self._start_scope()
        self.emitter = emitter
        self.turn = turn
        rec = self._rec = emitter._recorder
        self.id = rec.next_item_id()
        self.type = str(item_type)
        self.description = rec.content.text(description) if description else description
        self.name = name
        self.call_id = call_id
        self.parent_id = parent.id if parent is not None else None
        #: ``in_progress`` until the item ends (an ``ItemStatus`` value, kept as a plain str).
        self.status: str = _IN_PROGRESS
        if parent is not None:
            parent_context = parent.context
        elif turn is not None:
            parent_context = turn.context
        else:
            parent_context = otel_context.get_current()
        self.turn_id = turn.id if turn is not None else None
        self.started_ns = time.time_ns()
        self.span, self._operation = start_item_span(
            rec.tracer, parent_context, self.id, self.type, self.description, name,
            self.parent_id, self.started_ns, call_id,
        )
        if turn is not None and turn.trace_id is not None:
            # Same trace as its turn: only the span id needs formatting.
            self.trace_id = turn.trace_id
            self.span_id = self.span.get_span_context().span_id.to_bytes(8, "big").hex()
        else:
            self.trace_id, self.span_id = _hex_ids(self.span)
        self.started_at = rec.clock.format(self.started_ns)
        # Which item an event is about, first in every item event: built once, copied
        # for each event (a copy is a third of the cost of building the dict again).
        head: dict[str, Any] = {"id": self.id, "type": self.type,
                                "description": self.description, "status": _IN_PROGRESS}
        self._head = head
        if name is not None:
            head["name"] = name
        if call_id is not None:
            head["call_id"] = call_id
        if self.parent_id is not None:
            head["parent_id"] = self.parent_id
        item = head.copy()
        item["started_at"] = self.started_at
        if fields:
            item.update(rec.fields(fields))
        if turn is not None:
            turn._open_items[self.id] = self
        rec.open_items[self.id] = self
        rec.publish("item.started", self, {"item": item}, self.started_at)

    @property
    def ended(self) -> bool:  # type: ignore[override]  # derived: the status says it
        return self.status != _IN_PROGRESS

    # -- reporting -----------------------------------------------------------------

    def update(self, **fields: Any) -> None:
        """Publish ``item.updated`` with new fields (partial output, text so far...)."""
        if self.status != _IN_PROGRESS:
            return
        item = self._head.copy()
        item.update(self._rec.fields(fields))
        self._rec.publish("item.updated", self, {"item": item})

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Publish ``progress.update``: a fraction in [0, 1] and/or a short message."""
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be within [0, 1], got {fraction}")
        if self.status != _IN_PROGRESS:
            return
        body: dict[str, Any] = {"item_id": self.id, "fraction": fraction}
        if message is not None:
            body["message"] = self._rec.content.text(message)
        self._rec.publish("progress.update", self, body)

    def complete(self, output: Any = None, **fields: Any) -> None:
        """End the item as completed, with its output."""
        self._end(_COMPLETED, None, output, fields)

    def fail(self, error: BaseException | str, *, error_type: str | None = None,
             output: Any = None) -> None:
        """End the item as failed; ``error_type`` defaults to the exception's class name
        (cancellations and abandonment are told apart by ``otel_events.endings``)."""
        ending = ending_of(error, error_type=error_type)
        self._end(_CANCELLED if ending.error_type == CANCELLED else _FAILED, ending,
                  output, {})

    def decline(self, reason: str | None = None) -> None:
        """End the item as declined (not run, for example refused by a guardrail)."""
        self._end(_DECLINED, None, None, {}, reason)

    def cancel(self, reason: str | None = None) -> None:
        """End the item as cancelled: stopped on purpose, not a failure of the service."""
        self._end(_CANCELLED, ending_of(reason or "cancelled", error_type=CANCELLED),
                  None, {})

    # -- ending ---------------------------------------------------------------------

    def _end(self, status: str, ending: Ending | None, output: Any,
             fields: dict[str, Any], note: str | None = None) -> None:
        rec = self._rec
        # Whoever takes the item out of the open set ends it: exactly once, from any
        # thread, with no lock to take (a dict's pop is atomic).
        if self.status != _IN_PROGRESS or rec.open_items.pop(self.id, None) is None:
            return
        self.status = status
        end_ns = time.time_ns()
        content = rec.content
        duration_ms = (end_ns - self.started_ns) // 1000 / 1000  # to the microsecond
        item = self._head.copy()
        item["status"] = status
        span = self.span
        attributes: dict[str, Any]
        if output is not None:
            encoded = content.encode(output)
            if content.capture:
                item["output"] = orjson.Fragment(encoded)
            else:
                item["output_length"] = len(encoded)
            attributes = content.output_attributes(encoded)
        else:
            attributes = {}
        if fields:
            item.update(rec.fields(fields))
        message = note if ending is None else ending.message
        if message is not None:
            message = content.text(message)
            error: dict[str, Any] = {"message": message}
            if ending is not None and ending.error_type is not None:
                error["type"] = ending.error_type
            item["error"] = error
        item["started_at"] = self.started_at
        item["completed_at"] = completed_at = rec.clock.format(end_ns)
        item["duration_ms"] = duration_ms
        set_item_status(attributes, status)
        span.set_attributes(attributes)  # bulky attributes last, in one call
        if self.turn is not None:
            self.turn._open_items.pop(self.id, None)
        rec.publish("item.completed", self, {"item": item}, completed_at)
        error_type = None if ending is None else ending.error_type
        if ending is not None:
            end_span(span, ending, message=message, end_time=end_ns)
        else:
            span.end(end_time=end_ns)
        # The item's context if it was entered (``with turn.item(...)``): exemplars then
        # point at its span. Made for this alone it would cost 5K instructions an item
        # (a sixth of its events'), so an item ended without it leaves the current one.
        rec.metrics.record_item(self.type, status, duration_ms / 1e3, self._operation,
                                self.name or self.type, error_type, self._context)


class Turn(_Scope):
    """One turn of the thread: the agent working on one prompt."""

    __slots__ = ("_open_items", "_rec", "cached_input_tokens", "emitter", "ended", "id",
                 "input_tokens", "output_tokens", "started_ns")
    _current = _current_turn

    def __init__(self, emitter: EventEmitter) -> None:
        self._start_scope()
        self.emitter = emitter
        rec = self._rec = emitter._recorder
        self.id = self.turn_id = rec.next_turn_id()
        self.input_tokens = 0
        self.cached_input_tokens = 0
        self.output_tokens = 0
        self.ended = False
        self._open_items: dict[str, Item] = {}
        self.started_ns = time.time_ns()
        # No explicit context: the current span (say an HTTP request) becomes the parent.
        self.span = start_turn_span(rec.tracer, emitter.agent_name, emitter.thread_id,
                                    self.id, start_time=self.started_ns)
        self.trace_id, self.span_id = _hex_ids(self.span)
        rec.open_turns[self.id] = self
        rec.publish("turn.started", self, {}, rec.clock.format(self.started_ns))

    def item(self, item_type: ItemType | str, description: str | None = None, *,
             name: str | None = None, call_id: str | None = None, **fields: Any) -> Item:
        """Start an item; use it as a context manager or end it explicitly.

        Opened inside another item's context, it becomes that item's child.
        ``name`` is the tool, data source or guardrail name (the span name uses it);
        ``call_id`` the model's id for a tool call. Other fields go into the event.
        """
        if self.ended:
            raise RuntimeError(f"{self.id} has ended: start a new turn for more items")
        return Item(self.emitter, self, item_type, description, name=name, call_id=call_id,
                    parent=_open_parent(self.emitter, self), fields=fields)

    start_item = item

    def add_usage(self, input_tokens: int = 0, output_tokens: int = 0,
                  cached_input_tokens: int = 0) -> None:
        """Add token usage to the turn; publishes the running total as ``token.count``."""
        with self._rec.lock:
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            self.cached_input_tokens += cached_input_tokens
            usage = self._usage()
        self._rec.publish("token.count", self, {"usage": usage})

    def _usage(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens,
                "cached_input_tokens": self.cached_input_tokens,
                "output_tokens": self.output_tokens}

    def complete(self) -> None:
        """End the turn as completed (items still open are ended as abandoned)."""
        self._end(ending_of())

    def fail(self, error: BaseException | str, *, error_type: str | None = None) -> None:
        """End the turn as failed (or cancelled/abandoned, as ``otel_events.endings``
        rules for ``error``)."""
        self._end(ending_of(error, error_type=error_type))

    def cancel(self, reason: str | None = None) -> None:
        """End the turn as cancelled: its user or the application stopped it.

        Published as ``turn.failed`` with ``error.type`` ``cancelled`` (Codex readers
        see the turn end); the span's status stays UNSET and alert rules skip it.
        """
        self._end(ending_of(reason or "cancelled", error_type=CANCELLED))

    def _end(self, ending: Ending) -> None:
        rec = self._rec
        # As for items: whoever takes the turn out of the open set ends it, once.
        if self.ended or rec.open_turns.pop(self.id, None) is None:
            return
        self.ended = True
        # Items still open end the way the turn did when it was cancelled, else abandoned.
        inner = CANCELLED if ending.error_type == CANCELLED else ABANDONED
        for item in list(self._open_items.values()):
            item.fail("turn ended before the item did", error_type=inner)
        end_ns = time.time_ns()
        duration_ms = (end_ns - self.started_ns) // 1000 / 1000  # to the microsecond
        span = self.span
        set_usage(span, self.input_tokens, self.output_tokens, self.cached_input_tokens)
        message = ending.message
        body: dict[str, Any]
        if ending.error_type is None:
            body = {"usage": self._usage(), "duration_ms": duration_ms}
            rec.publish("turn.completed", self, body, rec.clock.format(end_ns))
        else:
            message = rec.content.text(message or ending.error_type)
            body = {"error": {"message": message, "type": ending.error_type},
                    "usage": self._usage(), "duration_ms": duration_ms}
            rec.publish("turn.failed", self, body, rec.clock.format(end_ns))
        end_span(span, ending, message=message, end_time=end_ns)
        rec.metrics.record_turn(self.emitter.agent_name, duration_ms / 1e3, ending.error_type,
                                self.input_tokens, self.output_tokens)


class EventEmitter:
    """Reports one thread's turns and items as events, spans and metrics.

    ``tracer_provider`` / ``meter_provider`` default to the global ones (whatever the
    application set up); the emitter never replaces them. ``buffer_size`` and
    ``buffer_bytes`` bound the events held for subscribers and sinks, in count and in
    bytes of JSON (see ``otel_events.log`` for the overflow policy): large outputs
    cannot make the emitter hold more than ``buffer_bytes`` whatever a reader does.
    """

    def __init__(
        self,
        thread_id: str | None = None,
        agent_name: str | None = None,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        content: Content | None = None,
        buffer_size: int = 4096,
        buffer_bytes: int = 16 * 2**20,
        sinks: Iterable[Sink] = (),
    ) -> None:
        tracer_provider = tracer_provider or trace.get_tracer_provider()
        meter_provider = meter_provider or metrics.get_meter_provider()
        self.tracer_provider = tracer_provider
        self.thread_id = thread_id or str(uuid.uuid4())
        self.agent_name = agent_name or default_agent_name(tracer_provider)
        self.content = content or Content()
        self._recorder = _Recorder(
            self.thread_id, tracer_provider.get_tracer("otel_events", __version__),
            AgentMetrics(meter_provider.get_meter("otel_events", __version__)),
            self.content, buffer_size, buffer_bytes)
        self.log = self._recorder.log
        self._closed = False
        self._sinks: list[Sink] = []
        for sink in sinks:
            self.add_sink(sink)
        _live.add(self)
        _register_exit_hook()
        # Dropped without close(): still stop the sinks' threads (they hold only the log).
        weakref.finalize(self, _release, self.log, self._sinks)

    # -- the API ----------------------------------------------------------------------

    def turn(self) -> Turn:
        """Start a turn; use it as a (sync or async) context manager or end it explicitly."""
        return Turn(self)

    def current_turn(self) -> Turn | None:
        """The turn of the current context, else the latest one still open."""
        turn = _current_turn.get()
        if turn is not None and turn.emitter is self and not turn.ended:
            return turn
        return next(reversed(self._recorder.open_turns.values()), None)

    def open_work(self) -> list[Turn | Item]:
        """Turns and items started and not yet ended (what ``close`` would abandon)."""
        rec = self._recorder
        return [*rec.open_turns.values(), *rec.open_items.values()]

    def subscribe(self, after: int | None = None) -> Subscription:
        """An async iterator of this thread's events from now on (or after seq ``after``)."""
        return self.log.subscribe(after)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a subscription (``subscription.close()`` does the same)."""
        subscription.close()

    def add_sink(self, sink: Sink) -> None:
        """Attach a sink (JSONL file, HTTP bridge...): it reads events off the hot path."""
        sink.start(self.log, self.thread_id)
        self._sinks.append(sink)

    def close(self, timeout: float = 5.0) -> None:
        """End open turns and items as abandoned, flush sinks, end subscriptions."""
        if self._closed:
            return
        self._closed = True
        rec = self._recorder
        for turn in list(rec.open_turns.values()):
            turn.fail("emitter closed before the turn ended", error_type=ABANDONED)
        for item in list(rec.open_items.values()):
            item.fail("emitter closed before the item ended", error_type=ABANDONED)
        self.log.close()
        for sink in self._sinks:
            sink.close(timeout)

    # -- the original design's calls ----------------------------------------------

    async def start_item(self, item_type: ItemType | str, description: str | None = None,
                         **fields: Any) -> str:
        """Start an item in the current turn (or outside any turn); returns its id."""
        turn = self.current_turn()
        if turn is not None:
            return turn.item(item_type, description, **fields).id
        return Item(self, None, item_type, description, name=fields.pop("name", None),
                    call_id=fields.pop("call_id", None), parent=_open_parent(self, None),
                    fields=fields).id

    async def complete_item(self, item_id: str, output: Any = None, **fields: Any) -> None:
        """Complete the open item with this id."""
        item = self._recorder.open_items.get(item_id)
        if item is None:
            raise KeyError(f"no open item {item_id!r}")
        item.complete(output, **fields)

    async def emit(self, event: Event) -> None:
        """Publish an event built by the caller, stamped with thread, seq and time."""
        self.publish(event)

    def publish(self, event: Event) -> Entry:
        """``emit`` for sync code. The emitter stamps thread, turn, seq, time and ids;
        the event's other fields go through the redaction hook and scrubbing (the
        capture switch does not apply: it would leave required fields empty)."""
        body = event.model_dump(mode="json", exclude_unset=True)
        for key in _STAMPED:
            body.pop(key, None)
        encode = self.content.encode
        payload = {key: orjson.Fragment(encode(value)) for key, value in body.items()}
        return self._recorder.publish(event.type, self.current_turn(), payload)


_live: weakref.WeakSet[EventEmitter] = weakref.WeakSet()


def _reset_locks_in_child() -> None:
    # A lock another thread held at the fork stays held in the child, where that thread
    # does not exist: the child's first event would wait forever.
    for emitter in list(_live):
        emitter._recorder.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_locks_in_child)


def _release(log: EventLog, sinks: list[Sink]) -> None:
    log.close()
    for sink in sinks:
        sink.close(0.0)


def abandon_open_work(tracer_provider: trace.TracerProvider | None = None) -> None:
    """End open turns and items as abandoned (of the emitters using ``tracer_provider``,
    or of all); run at exit, before the providers flush."""
    for emitter in list(_live):
        if tracer_provider is None or emitter.tracer_provider is tracer_provider:
            emitter.close(timeout=2.0)


_hooked = False


def _register_exit_hook() -> None:
    # atexit runs hooks last-registered first. Registering when the first emitter is made
    # (after the application set up its providers, as a rule) ends open work as
    # abandoned before those providers flush at exit.
    global _hooked
    if not _hooked:
        _hooked = True
        atexit.register(abandon_open_work)
