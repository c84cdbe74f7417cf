"""A thread's state folded from its events: what ``reset`` and ``/v1/threads`` report.

The fold sees every event the bridge accepts, so it stays right after the replay ring
has forgotten old events. It is bounded too, whatever the thread's age: only the latest
``max_turns`` turns and ``max_items`` items per turn are kept (the rest are counted), an
item keeps at most ``max_item_content`` characters of its content (output, text,
command output...; what was cut is listed in its ``truncated``), and the content of a
whole thread is capped at ``max_content`` characters, the oldest items' content going
first (``content_dropped``). Statuses, timings and ids are always kept.

The live page (``static/state.js``) folds events the same way, with the same field
names, so a ``reset`` and a live stream describe a thread identically.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from datetime import datetime
from typing import Any

import orjson

from otel_events.protocol import Event, ThreadItem, Usage

__all__ = ["CONTENT_FIELDS", "ItemState", "ThreadSnapshot", "TurnState", "outcome", "state_json"]

_USAGE_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens")
# Codex's detailed counts, kept on a turn when the producer sends them (not summed).
_EXTRA_USAGE_FIELDS = ("cache_write_input_tokens", "reasoning_output_tokens")

#: An item's content, in the order it gets the item's budget: the short fields that say
#: what ran (each capped to an eighth of the budget), then what a person reads (an
#: agent's message, a tool's output), then what explains it.
CONTENT_FIELDS = ("command", "exit_code", "server", "tool", "query", "message", "text",
                  "output", "aggregated_output", "result", "arguments", "changes", "items")
_LABEL_FIELDS = frozenset(CONTENT_FIELDS[:6])
_CONTENT_SET = frozenset(CONTENT_FIELDS)
# Error types that are not failures of the work itself: the page shows them apart.
_SOFT_ERRORS = ("cancelled", "abandoned")


def outcome(status: str, error: dict[str, Any] | None) -> str:
    """How a turn or item ended, as a person reads it.

    ``status`` as reported, except that a failure whose ``error.type`` is ``cancelled``
    or ``abandoned`` is that (stopped on purpose, or never closed) and not ``failed``.
    """
    if status == "failed" and error is not None and error.get("type") in _SOFT_ERRORS:
        return str(error["type"])
    return status


def _ms_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    except ValueError:
        return None
    return round(delta.total_seconds() * 1e3, 3)


def _usage(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    out = {name: int(getattr(usage, name) or 0) for name in _USAGE_FIELDS}
    extra = usage.model_extra or {}
    for name in _EXTRA_USAGE_FIELDS:
        value = extra.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
    return out


def _bounded(value: Any, room: int) -> tuple[Any, int, bool]:
    """``value`` within ``room`` characters: (kept value, its size, whether it was cut).

    Strings are cut as they are; anything else is kept whole if its JSON fits, else
    replaced by the start of its JSON (a string, marked cut), so the page can still
    show what the output began with.
    """
    if isinstance(value, str):
        return (value, len(value), False) if len(value) <= room else (value[:room], room, True)
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # pragma: no cover - validated events are JSON
        text = str(value)
    if len(text) <= room:
        return value, len(text), False
    return text[:room], room, True


class ItemState:
    """One item as last reported."""

    __slots__ = ("completed_at", "content", "content_at", "content_dropped", "content_size",
                 "description", "duration_ms", "error", "id", "name", "parent_id",
                 "progress", "progress_message", "span_id", "started_at", "status",
                 "trace_id", "truncated", "type", "usage")

    def __init__(self, item_id: str, item_type: str) -> None:
        self.id = item_id
        self.type = item_type
        self.description: str | None = None
        self.name: str | None = None
        self.parent_id: str | None = None
        self.status = "in_progress"
        self.started_at: str | None = None
        self.completed_at: str | None = None
        self.duration_ms: float | None = None
        self.error: dict[str, Any] | None = None
        self.progress: float | None = None
        self.progress_message: str | None = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.usage: dict[str, int] | None = None
        #: Content fields as reported (bounded), and the names of those that were cut.
        self.content: dict[str, Any] = {}
        self.truncated: list[str] = []
        self.content_size = 0
        #: When the content last came (the thread's count of content updates): the
        #: oldest goes first when the thread's content passes its budget.
        self.content_at = 0
        #: The content was let go to keep the thread's state within its budget.
        self.content_dropped = False

    def take_content(self, item: ThreadItem, budget: int) -> bool:
        """Keep the item's content fields within ``budget`` characters; True if any came."""
        # Only fields the producer set can hold content (the others are None): most
        # events set none of them, and this set operation spares thirteen lookups.
        present = _CONTENT_SET.intersection(item.model_fields_set)
        if not present:
            return False
        given = {name: value for name in CONTENT_FIELDS
                 if name in present and (value := getattr(item, name, None)) is not None}
        if not given:
            return False
        # A field the event leaves out keeps its earlier (already bounded) value: Codex's
        # completed events may omit what the started one had (an agent message's text).
        fields = {**self.content, **given}
        cut_before = set(self.truncated) - given.keys()
        content: dict[str, Any] = {}
        truncated: list[str] = []
        room = budget
        for name in CONTENT_FIELDS:
            if name not in fields:
                continue
            limit = min(room, budget // 8) if name in _LABEL_FIELDS else room
            value, size, cut = _bounded(fields[name], limit)
            content[name] = value
            if cut or name in cut_before:
                truncated.append(name)
            room -= size
        self.content = content
        self.truncated = truncated
        self.content_size = budget - room
        self.content_dropped = False
        return True

    def drop_content(self) -> None:
        self.content = {}
        self.truncated = []
        self.content_size = 0
        self.content_dropped = True

    def merge(self, item: ThreadItem, timestamp: str | None, ending: bool) -> None:
        # Codex's completed events may omit fields the started event had: keep those.
        self.type = item.type or self.type
        for name in ("description", "name", "parent_id"):
            value = getattr(item, name)
            if value is not None:
                setattr(self, name, value)
        if item.started_at is not None:
            self.started_at = item.started_at
        elif self.started_at is None and not ending:
            self.started_at = timestamp
        if ending:
            self.status = str(item.status or "completed")
            self.completed_at = item.completed_at or timestamp
            self.duration_ms = (item.duration_ms if item.duration_ms is not None
                                else _ms_between(self.started_at, self.completed_at))
        elif item.status is not None:
            self.status = str(item.status)
        usage = (item.model_extra or {}).get("usage")
        if isinstance(usage, dict):  # not in the protocol, but some producers send it
            counts = [(name, value) for name, value in usage.items()
                      if isinstance(value, int) and not isinstance(value, bool)]
            self.usage = dict(counts[:8])  # a handful of counts, not whatever was sent
        if item.error is not None:
            self.error = {"message": item.error.message, "type": item.error.type}
        elif ending and self.status == "failed" and item.message:
            self.error = {"message": item.message, "type": None}

    def to_dict(self) -> dict[str, Any]:
        body = {"id": self.id, "type": self.type, "description": self.description,
                "name": self.name, "parent_id": self.parent_id, "status": self.status,
                "outcome": outcome(self.status, self.error),
                "failed": self.status == "failed", "started_at": self.started_at,
                "completed_at": self.completed_at, "duration_ms": self.duration_ms,
                "error": self.error, "progress": self.progress,
                "progress_message": self.progress_message, "trace_id": self.trace_id,
                "span_id": self.span_id, "usage": self.usage, "truncated": self.truncated,
                "content_dropped": self.content_dropped}
        body.update(self.content)
        return body


class TurnState:
    """One turn and its latest items."""

    __slots__ = ("completed_at", "duration_ms", "error", "failed_items", "id", "items",
                 "items_dropped", "span_id", "started_at", "status", "trace_id", "usage")

    def __init__(self, turn_id: str) -> None:
        self.id = turn_id
        self.status = "running"
        self.started_at: str | None = None
        self.completed_at: str | None = None
        self.duration_ms: float | None = None
        self.usage: dict[str, int] | None = None
        self.error: dict[str, Any] | None = None
        self.trace_id: str | None = None
        self.span_id: str | None = None
        self.items: OrderedDict[str, ItemState] = OrderedDict()
        self.items_dropped = 0
        self.failed_items = 0

    def current_item(self) -> ItemState | None:
        for item in reversed(self.items.values()):
            if item.status == "in_progress":
                return item
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"turn_id": self.id, "status": self.status,
                "outcome": "running" if self.status == "running"
                else outcome(self.status, self.error),
                "failed": self.status == "failed",
                "started_at": self.started_at, "completed_at": self.completed_at,
                "duration_ms": self.duration_ms, "usage": self.usage, "error": self.error,
                "trace_id": self.trace_id, "span_id": self.span_id,
                "failed_items": self.failed_items, "items_dropped": self.items_dropped,
                "items": [item.to_dict() for item in self.items.values()]}


class ThreadSnapshot:
    """Folds one thread's events, in seq order, into its current state.

    Every attribute in ``vars()`` is plain data (the Redis broker checkpoints them as
    JSON); ``_holders`` is derived from the items (their ``content_at``), so it lives in
    a slot, out of ``vars()``, and is rebuilt when missing.
    """

    __slots__ = ("__dict__", "__weakref__", "_holders")

    def __init__(self, thread_id: str, max_turns: int = 20, max_items: int = 200,
                 max_item_content: int = 4096, max_content: int = 256 * 1024) -> None:
        self.thread_id = thread_id
        self.max_turns = max_turns
        self.max_items = max_items
        self.max_item_content = max_item_content
        self.max_content = max_content
        # Items holding content, least recently given some first (made on first use), and
        # their total size: the oldest let theirs go past ``max_content``.
        self._holders: OrderedDict[int, ItemState] | None = None
        self._content_size = 0
        self._content_clock = 0
        #: Seq of the last event folded in.
        self.seq = 0
        self.started_at: str | None = None
        self.updated_at: str | None = None
        self.turns: OrderedDict[str, TurnState] = OrderedDict()
        self.turns_dropped = 0
        # Ids of the turns let go most recently (bounded), to ignore their late events.
        self._dropped_ids: dict[str, None] = {}
        #: Items reported outside any turn.
        self.loose = TurnState("")
        self.last_error: str | None = None
        self._turn_count = 0
        self._running: TurnState | None = None
        # Usage of turns that ended, including those no longer kept.
        self._ended_usage = dict.fromkeys(_USAGE_FIELDS, 0)

    # -- folding ---------------------------------------------------------------

    def apply(self, event: Event, seq: int) -> None:
        """Fold one event (already numbered ``seq``) into the state."""
        self.seq = seq
        timestamp = event.timestamp
        if timestamp is not None:
            self.updated_at = timestamp
            if self.started_at is None:
                self.started_at = timestamp
        kind = event.type
        if kind == "turn.started":
            self._start_turn(event.turn_id, event)
        elif kind in ("turn.completed", "turn.failed"):
            self._end_turn(event, failed=kind == "turn.failed")
        elif kind in ("item.started", "item.updated", "item.completed"):
            item: ThreadItem | None = getattr(event, "item", None)
            if item is not None:
                self._item(event, item, ending=kind == "item.completed")
        elif kind == "progress.update":
            self._progress(event)
        elif kind == "token.count":
            turn = self._turn_for(event.turn_id)
            if turn is not None:
                turn.usage = _usage(getattr(event, "usage", None))
        elif kind == "error":
            self.last_error = getattr(event, "message", None)

    def _turn_for(self, turn_id: str | None) -> TurnState | None:
        if turn_id is None:
            return self._running
        turn = self.turns.get(turn_id)
        if turn is None:
            if turn_id in self._dropped_ids:
                return None  # a late event of a turn already let go: not running again
            # Its turn.started was never seen (the producer joined late): make one.
            turn = self._start_turn(turn_id, None)
        return turn

    def _start_turn(self, turn_id: str | None, event: Event | None) -> TurnState:
        self._turn_count += 1
        turn = TurnState(turn_id or f"turn_{self._turn_count}")
        if event is not None:
            turn.started_at = event.timestamp
            turn.trace_id = event.trace_id
            turn.span_id = event.span_id
        self.turns[turn.id] = turn
        self.turns.move_to_end(turn.id)
        while len(self.turns) > self.max_turns:
            dropped_id, dropped = self.turns.popitem(last=False)
            self.turns_dropped += 1
            for gone in dropped.items.values():
                self._release(gone)
            self._dropped_ids[dropped_id] = None
            if len(self._dropped_ids) > 4 * self.max_turns:
                del self._dropped_ids[next(iter(self._dropped_ids))]
            if dropped is self._running:
                self._running = None
        self._running = turn
        return turn

    def _end_turn(self, event: Event, failed: bool) -> None:
        turn = self._turn_for(event.turn_id)
        if turn is None:
            turn = self._start_turn(None, None)
        if turn.status != "running":
            return
        turn.status = "failed" if failed else "completed"
        turn.completed_at = event.timestamp
        duration = getattr(event, "duration_ms", None)
        turn.duration_ms = (duration if duration is not None
                            else _ms_between(turn.started_at, turn.completed_at))
        usage = _usage(getattr(event, "usage", None))
        if usage is not None:
            turn.usage = usage
        if turn.usage is not None:
            for name in _USAGE_FIELDS:
                self._ended_usage[name] += turn.usage[name]
        error = getattr(event, "error", None)
        if failed and error is not None:
            turn.error = {"message": error.message, "type": error.type}
        if turn.trace_id is None:
            turn.trace_id = event.trace_id
        if self._running is turn:
            self._running = None

    def _item(self, event: Event, item: ThreadItem, ending: bool) -> None:
        turn = self._turn_for(event.turn_id) or self.loose
        state = turn.items.get(item.id)
        if state is None:
            state = ItemState(item.id, item.type)
            turn.items[item.id] = state
            if len(turn.items) > self.max_items:
                self._release(turn.items.popitem(last=False)[1])
                turn.items_dropped += 1
        was_failed = state.status == "failed"
        state.merge(item, event.timestamp, ending)
        if event.trace_id is not None:
            state.trace_id = event.trace_id
        if event.span_id is not None:
            state.span_id = event.span_id
        before = state.content_size
        if state.take_content(item, self.max_item_content):
            holders = self._holder_map()
            self._content_size += state.content_size - before
            self._content_clock += 1
            state.content_at = self._content_clock
            holders[id(state)] = state
            holders.move_to_end(id(state))
            while self._content_size > self.max_content and holders:
                self._release(next(iter(holders.values())), dropped=True)
        if state.status == "failed" and not was_failed:
            turn.failed_items += 1

    def _holder_map(self) -> OrderedDict[int, ItemState]:
        holders = self._holders
        if holders is None:
            # Rebuilt from the items (a restored checkpoint has none): oldest first.
            held = [item for turn in (*self.turns.values(), self.loose)
                    for item in turn.items.values() if item.content_size]
            held.sort(key=lambda item: item.content_at)
            holders = self._holders = OrderedDict((id(item), item) for item in held)
        return holders

    def _release(self, item: ItemState, dropped: bool = False) -> None:
        """Stop counting ``item``'s content (it left the state, or ``dropped`` it)."""
        if self._holder_map().pop(id(item), None) is None:
            return
        self._content_size -= item.content_size
        if dropped:
            item.drop_content()

    def _progress(self, event: Event) -> None:
        item_id = getattr(event, "item_id", None)
        turn = self._turn_for(event.turn_id) or self.loose
        state = turn.items.get(item_id) if item_id is not None else None
        if state is not None:
            state.progress = getattr(event, "fraction", None)
            state.progress_message = getattr(event, "message", None)

    # -- reporting -------------------------------------------------------------

    @property
    def running_turn(self) -> TurnState | None:
        return self._running

    @property
    def status(self) -> str:
        """``running``, ``failed``, ``completed`` (by the latest turn) or ``idle``."""
        if self._running is not None:
            return "running"
        last = next(reversed(self.turns.values()), None)
        return last.status if last is not None else "idle"

    @property
    def outcome(self) -> str:
        """``status``, with a latest turn cancelled or abandoned told apart from failed."""
        status = self.status
        if status != "failed":
            return status
        last = next(reversed(self.turns.values()))
        return outcome(last.status, last.error)

    @property
    def content_size(self) -> int:
        """Characters of item content held (at most ``max_content``)."""
        return self._content_size

    def usage(self) -> dict[str, int]:
        """Token usage of the whole thread, the running turn's so far included."""
        total = dict(self._ended_usage)
        running = self._running
        if running is not None and running.usage is not None:
            for name in _USAGE_FIELDS:
                total[name] += running.usage[name]
        return total

    def summary(self) -> dict[str, Any]:
        """One line of ``GET /v1/threads``."""
        running = self._running
        current = running.current_item() if running is not None else None
        return {
            "thread_id": self.thread_id,
            "last_seq": self.seq,
            "status": self.status,
            "outcome": self.outcome,
            "failed": self.status == "failed",
            "running_turn": running.id if running is not None else None,
            "current_item": (
                {"id": current.id, "type": current.type, "description": current.description}
                if current is not None else None),
            "turn_count": self.turns_dropped + len(self.turns),
            "failed_turns": sum(turn.status == "failed" for turn in self.turns.values()),
            "usage": self.usage(),
            "started_at": self.started_at,
            "updated_at": self.updated_at,
        }

    def to_dict(self) -> dict[str, Any]:
        """The whole state: ``GET /v1/threads/{id}`` and the ``reset`` event's snapshot."""
        body = self.summary()
        body["turns_dropped"] = self.turns_dropped
        body["turns"] = [turn.to_dict() for turn in self.turns.values()]
        body["items"] = [item.to_dict() for item in self.loose.items.values()]
        body["last_error"] = self.last_error
        return body

    def to_json(self) -> bytes:
        """``to_dict`` as compact JSON, whatever the numbers in it."""
        return state_json(self.to_dict())


def state_json(state: Any) -> bytes:
    """Thread state (a snapshot, a list of summaries) as compact JSON, whatever the
    numbers in it."""
    try:
        return orjson.dumps(state)
    except orjson.JSONEncodeError:
        # Sums of producers' counts (token usage) can pass 64 bits, which orjson
        # refuses; the standard encoder writes any integer.
        return json.dumps(state, separators=(",", ":"), default=str).encode()
