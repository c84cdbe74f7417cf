"""The emitter: agent code reports each step once; events, spans and metrics follow.

One ``EventEmitter`` per thread (conversation). ``emitter.turn()`` opens a turn (a span
``invoke_agent {agent}``); ``turn.item(...)`` opens an item (a child span). Both are
context managers for sync and async code, and both can be ended explicitly.

The emitting path does no I/O: an event is encoded once (orjson) and written into the
emitter's ``EventLog``; subscribers and sinks read it from there. Spans go to whatever
span processors the tracer provider has (a batch processor keeps exporters off this path).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
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
from otel_events.broker import Entry, EventLog, Subscription
from otel_events.metrics import AgentMetrics
from otel_events.protocol import Event, ItemStatus, ItemType
from otel_events.redaction import Content
from otel_events.tracing import (
    ABANDONED,
    end_span,
    set_usage,
    start_item_span,
    start_turn_span,
)

if TYPE_CHECKING:
    from types import TracebackType

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

# What the emitter writes on every event; a caller's event cannot set these.
_STAMPED = ("type", "thread_id", "turn_id", "seq", "timestamp", "trace_id", "span_id")

# Exceptions that mean "the work was not finished", not "the work failed".
_ABANDONING = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


class _Clock:
    """RFC 3339 UTC timestamps from ``time.time_ns()``, formatting the date once a second."""

    __slots__ = ("_cached",)

    def __init__(self) -> None:
        self._cached = (-1, "")

    def format(self, ns: int) -> str:
        second, frac = divmod(ns, 1_000_000_000)
        # One tuple, replaced whole: threads formatting at once never mix two seconds.
        cached_second, prefix = self._cached
        if second != cached_second:
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._cached = (second, prefix)
        return f"{prefix}.{frac // 1000:06d}Z"


def _encode(body: dict[str, Any]) -> bytes:
    # orjson returns its result in a buffer of at least 4 KiB; the log holds thousands of
    # events, so it keeps an exact-size copy (slicing off an appended newline makes one).
    return orjson.dumps(body, option=orjson.OPT_APPEND_NEWLINE)[:-1]


def _hex_ids(span: Span) -> tuple[str | None, str | None]:
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None, None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def _error_type(error: BaseException | str | None) -> str:
    if isinstance(error, _ABANDONING):
        return ABANDONED
    if isinstance(error, BaseException):
        return type(error).__qualname__
    return "error"


def _open_parent(emitter: EventEmitter, turn: Turn | None) -> Item | None:
    """The current item, if it is still open and of the same emitter and turn."""
    parent = _current_item.get()
    if (parent is None or parent.emitter is not emitter or parent.turn is not turn
            or parent.status != _IN_PROGRESS):
        return None
    return parent


def _default_agent_name(provider: trace.TracerProvider) -> str:
    resource = getattr(provider, "resource", None)
    name = resource.attributes.get("service.name") if resource is not None else None
    if not isinstance(name, str) or name.startswith("unknown_service"):
        name = os.environ.get("OTEL_SERVICE_NAME") or "agent"
    return name


class _Scope:
    """Shared by turns and items: context-manager plumbing and context propagation.

    Entering makes the scope current twice over: for otel-events (so a nested
    ``turn.item(...)`` finds its parent) and for OpenTelemetry (so spans the application
    starts inside become children of this one). Leaving ends the scope: failed if an
    exception is passing through (``abandoned`` for cancellation), else completed.
    """

    _current: ClassVar[contextvars.ContextVar[Any]]
    span: Span
    trace_id: str | None
    span_id: str | None
    turn_id: str | None
    _context: otel_context.Context | None = None
    _var_token: contextvars.Token[Any] | None = None
    _otel_token: object | None = None

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

    def __enter__(self) -> Self:
        self._otel_token = otel_context.attach(self.context)
        self._var_token = self._current.set(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # A context entered in one task and left in another cannot be reset; the work is
        # still ended correctly, so that is not worth an error.
        if self._var_token is not None:
            with contextlib.suppress(ValueError):
                self._current.reset(self._var_token)
            self._var_token = None
        if self._otel_token is not None:
            with contextlib.suppress(Exception):
                otel_context.detach(self._otel_token)  # type: ignore[arg-type]
            self._otel_token = None
        if exc is not None:
            self.fail(exc)
        else:
            self.complete()

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.__exit__(exc_type, exc, tb)


class Item(_Scope):
    """One step of a turn. Ends exactly once: complete, fail or decline."""

    _current = _current_item

    def __init__(
        self,
        emitter: EventEmitter,
        turn: Turn | None,
        item_type: str,
        description: str | None,
        name: str | None,
        parent: Item | None,
        fields: dict[str, Any],
    ) -> None:
        self.emitter = emitter
        self.turn = turn
        self.id = f"item_{next(emitter._item_ids)}"
        self.type = str(item_type)
        self.description = emitter.content.text(description) if description else description
        self.name = name
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
            emitter._tracer, parent_context, self.id, self.type, self.description, name,
            self.parent_id, self.started_ns,
        )
        if turn is not None and turn.trace_id is not None:
            # Same trace as its turn: only the span id needs formatting.
            self.trace_id = turn.trace_id
            self.span_id = format(self.span.get_span_context().span_id, "016x")
        else:
            self.trace_id, self.span_id = _hex_ids(self.span)
        self.started_at = emitter._clock.format(self.started_ns)
        item = self._identity(_IN_PROGRESS)
        item["started_at"] = self.started_at
        if fields:
            item.update(emitter._encode_fields(fields))
        if turn is not None:
            turn._open_items[self.id] = self
        emitter._open_items[self.id] = self
        emitter._publish("item.started", self, {"item": item}, self.started_at)

    def _identity(self, status: str) -> dict[str, Any]:
        """The fields that say which item an event is about, first in every item."""
        item: dict[str, Any] = {"id": self.id, "type": self.type,
                                "description": self.description, "status": status}
        if self.name is not None:
            item["name"] = self.name
        if self.parent_id is not None:
            item["parent_id"] = self.parent_id
        return item

    # -- reporting -----------------------------------------------------------------

    def update(self, **fields: Any) -> None:
        """Publish ``item.updated`` with new fields (partial output, text so far...)."""
        if self.status != _IN_PROGRESS:
            return
        item = {"id": self.id, "type": self.type, "description": self.description,
                "status": "in_progress", **self.emitter._encode_fields(fields)}
        self.emitter._publish("item.updated", self, {"item": item})

    def progress(self, fraction: float | None = None, message: str | None = None) -> None:
        """Publish ``progress.update``: a fraction in [0, 1] and/or a short message."""
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be within [0, 1], got {fraction}")
        if self.status != _IN_PROGRESS:
            return
        body: dict[str, Any] = {"item_id": self.id, "fraction": fraction}
        if message is not None:
            body["message"] = self.emitter.content.text(message)
        self.emitter._publish("progress.update", self, body)

    def complete(self, output: Any = None, **fields: Any) -> None:
        """End the item as completed, with its output."""
        self._end(_COMPLETED, output, fields, None, None, None)

    def fail(self, error: BaseException | str, *, error_type: str | None = None,
             output: Any = None) -> None:
        """End the item as failed; ``error_type`` defaults to the exception's class name."""
        message = str(error) or type(error).__name__
        self._end(_FAILED, output, {}, error_type or _error_type(error), message,
                  error if isinstance(error, BaseException) else None)

    def decline(self, reason: str | None = None) -> None:
        """End the item as declined (not run, for example refused by a guardrail)."""
        self._end(_DECLINED, None, {}, None, reason, None)

    # -- ending ---------------------------------------------------------------------

    def _end(
        self,
        status: str,
        output: Any,
        fields: dict[str, Any],
        error_type: str | None,
        message: str | None,
        exception: BaseException | None,
    ) -> None:
        emitter = self.emitter
        with emitter._lock:
            if self.status != _IN_PROGRESS:
                return
            self.status = status
        end_ns = time.time_ns()
        content = emitter.content
        duration_ms = (end_ns - self.started_ns) // 1000 / 1000  # to the microsecond
        item = self._identity(status)
        span = self.span
        attributes: dict[str, Any] = {}
        if output is not None:
            encoded = content.encode(output)
            if content.capture:
                item["output"] = orjson.Fragment(encoded)
            else:
                item["output_length"] = len(encoded)
            attributes.update(content.output_attributes(encoded))
        if fields:
            item.update(emitter._encode_fields(fields))
        if message is not None:
            message = content.text(message)
            error: dict[str, Any] = {"message": message}
            if error_type is not None:
                error["type"] = error_type
            item["error"] = error
        item["started_at"] = self.started_at
        item["completed_at"] = completed_at = emitter._clock.format(end_ns)
        item["duration_ms"] = duration_ms
        attributes["otel_events.item.status"] = status
        span.set_attributes(attributes)  # bulky attributes last, in one call
        if self.turn is not None:
            self.turn._open_items.pop(self.id, None)
        emitter._open_items.pop(self.id, None)
        emitter._publish("item.completed", self, {"item": item}, completed_at)
        end_span(span, error_type, message, exception, end_ns)
        emitter._metrics.record_item(self.type, status, duration_ms / 1e3,
                                     self._operation, self.name or self.type, error_type)


class Turn(_Scope):
    """One turn of the thread: the agent working on one prompt."""

    _current = _current_turn

    def __init__(self, emitter: EventEmitter) -> None:
        self.emitter = emitter
        self.id = self.turn_id = f"turn_{next(emitter._turn_ids)}"
        self.input_tokens = 0
        self.cached_input_tokens = 0
        self.output_tokens = 0
        self.ended = False
        self._open_items: dict[str, Item] = {}
        self.started_ns = time.time_ns()
        # No explicit context: the current span (say an HTTP request) becomes the parent.
        self.span = start_turn_span(emitter._tracer, emitter.agent_name, emitter.thread_id,
                                    self.id, start_time=self.started_ns)
        self.trace_id, self.span_id = _hex_ids(self.span)
        emitter._open_turns[self.id] = self
        emitter._publish("turn.started", self, {}, emitter._clock.format(self.started_ns))

    def item(self, item_type: ItemType | str, description: str | None = None, *,
             name: str | None = None, **fields: Any) -> Item:
        """Start an item; use it as a context manager or end it explicitly.

        Opened inside another item's context, it becomes that item's child.
        ``name`` is the tool, data source or guardrail name (the span name uses it).
        """
        if self.ended:
            raise RuntimeError(f"{self.id} has ended: start a new turn for more items")
        return Item(self.emitter, self, str(item_type), description, name,
                    _open_parent(self.emitter, self), fields)

    start_item = item

    def add_usage(self, input_tokens: int = 0, output_tokens: int = 0,
                  cached_input_tokens: int = 0) -> None:
        """Add token usage to the turn; publishes the running total as ``token.count``."""
        with self.emitter._lock:
            self.input_tokens += input_tokens
            self.output_tokens += output_tokens
            self.cached_input_tokens += cached_input_tokens
            usage = self._usage()
        self.emitter._publish("token.count", self, {"usage": usage})

    def _usage(self) -> dict[str, int]:
        return {"input_tokens": self.input_tokens,
                "cached_input_tokens": self.cached_input_tokens,
                "output_tokens": self.output_tokens}

    def complete(self) -> None:
        """End the turn as completed (items still open are ended as abandoned)."""
        self._end(None, None, None)

    def fail(self, error: BaseException | str, *, error_type: str | None = None) -> None:
        """End the turn as failed."""
        message = str(error) or type(error).__name__
        self._end(error_type or _error_type(error), message,
                  error if isinstance(error, BaseException) else None)

    def _end(self, error_type: str | None, message: str | None,
             exception: BaseException | None) -> None:
        emitter = self.emitter
        with emitter._lock:
            if self.ended:
                return
            self.ended = True
        for item in list(self._open_items.values()):
            item.fail("turn ended before the item did", error_type=ABANDONED)
        end_ns = time.time_ns()
        duration_ms = (end_ns - self.started_ns) // 1000 / 1000  # to the microsecond
        span = self.span
        set_usage(span, self.input_tokens, self.output_tokens, self.cached_input_tokens)
        body: dict[str, Any]
        if message is None:
            body = {"usage": self._usage(), "duration_ms": duration_ms}
            emitter._publish("turn.completed", self, body, emitter._clock.format(end_ns))
        else:
            message = emitter.content.text(message)
            body = {"error": {"message": message, "type": error_type},
                    "usage": self._usage(), "duration_ms": duration_ms}
            emitter._publish("turn.failed", self, body, emitter._clock.format(end_ns))
        emitter._open_turns.pop(self.id, None)
        end_span(span, error_type, message, exception, end_ns)
        emitter._metrics.record_turn(emitter.agent_name, duration_ms / 1e3, error_type,
                                     self.input_tokens, self.output_tokens)


class EventEmitter:
    """Reports one thread's turns and items as events, spans and metrics.

    ``tracer_provider`` / ``meter_provider`` default to the global ones (whatever the
    application set up); the emitter never replaces them. ``buffer_size`` bounds the
    events held for subscribers (see ``otel_events.broker`` for the overflow policy).
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
        sinks: Iterable[Sink] = (),
    ) -> None:
        tracer_provider = tracer_provider or trace.get_tracer_provider()
        meter_provider = meter_provider or metrics.get_meter_provider()
        self.tracer_provider = tracer_provider
        self.thread_id = thread_id or str(uuid.uuid4())
        self.agent_name = agent_name or _default_agent_name(tracer_provider)
        self.content = content or Content()
        self._tracer = tracer_provider.get_tracer("otel_events", __version__)
        self._metrics = AgentMetrics(meter_provider.get_meter("otel_events", __version__))
        self.log = EventLog(buffer_size)
        self._lock = threading.Lock()
        self._clock = _Clock()
        self._turn_ids = itertools.count(1)
        self._item_ids = itertools.count(1)
        self._open_turns: dict[str, Turn] = {}
        self._open_items: dict[str, Item] = {}
        self._started = False
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
        return next(reversed(self._open_turns.values()), None)

    def subscribe(self, after: int | None = None) -> Subscription:
        """An async iterator of this thread's events from now on (or after seq ``after``)."""
        return self.log.subscribe(after)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop a subscription (the seed's call; ``subscription.close()`` does the same)."""
        subscription.close()

    def add_sink(self, sink: Sink) -> None:
        """Attach a sink (JSONL file, HTTP bridge...): it reads events off the hot path."""
        sink.start(self.log)
        self._sinks.append(sink)

    def close(self, timeout: float = 5.0) -> None:
        """End open turns and items as abandoned, flush sinks, end subscriptions."""
        if self._closed:
            return
        self._closed = True
        for turn in list(self._open_turns.values()):
            turn.fail("emitter closed before the turn ended", error_type=ABANDONED)
        for item in list(self._open_items.values()):
            item.fail("emitter closed before the item ended", error_type=ABANDONED)
        self.log.close()
        for sink in self._sinks:
            sink.close(timeout)

    # -- the seed's calls ---------------------------------------------------------

    async def start_item(self, item_type: ItemType | str, description: str | None = None,
                         **fields: Any) -> str:
        """Start an item in the current turn (or outside any turn); returns its id."""
        turn = self.current_turn()
        if turn is not None:
            return turn.item(item_type, description, **fields).id
        return Item(self, None, str(item_type), description, fields.pop("name", None),
                    _open_parent(self, None), fields).id

    async def complete_item(self, item_id: str, output: Any = None, **fields: Any) -> None:
        """Complete the open item with this id."""
        item = self._open_items.get(item_id)
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
        return self._publish(event.type, self.current_turn(), payload)

    # -- internals ---------------------------------------------------------------

    def _encode_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        content = self.content
        if not content.capture:
            return {key: None for key in fields}
        return {key: orjson.Fragment(content.encode(value)) for key, value in fields.items()}

    def _publish(self, kind: str, scope: Turn | Item | None, payload: dict[str, Any],
                 timestamp: str | None = None) -> Entry:
        """Stamp, encode once and append to the log. The only place events are made."""
        if timestamp is None:
            timestamp = self._clock.format(time.time_ns())
        log = self.log
        with self._lock:
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


_live: weakref.WeakSet[EventEmitter] = weakref.WeakSet()


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
