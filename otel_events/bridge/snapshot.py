"""A thread's state folded from its events: what ``reset`` and ``/v1/threads`` report.

The fold sees every event the bridge accepts, so it stays right after the replay ring
has forgotten old events. It is bounded too: only the latest ``max_turns`` turns and
``max_items`` items per turn are kept (the rest are counted), whatever the thread's age.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import datetime
from typing import Any

from otel_events.protocol import Event, ThreadItem, Usage

__all__ = ["ItemState", "ThreadSnapshot", "TurnState"]

_USAGE_FIELDS = ("input_tokens", "cached_input_tokens", "output_tokens")


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
    return {name: int(getattr(usage, name) or 0) for name in _USAGE_FIELDS}


class ItemState:
    """One item as last reported."""

    __slots__ = ("completed_at", "description", "duration_ms", "error", "id", "name",
                 "parent_id", "progress", "progress_message", "started_at", "status", "type")

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
        if item.error is not None:
            self.error = {"message": item.error.message, "type": item.error.type}
        elif ending and self.status == "failed" and item.message:
            self.error = {"message": item.message, "type": None}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "description": self.description,
                "name": self.name, "parent_id": self.parent_id, "status": self.status,
                "failed": self.status == "failed", "started_at": self.started_at,
                "completed_at": self.completed_at, "duration_ms": self.duration_ms,
                "error": self.error, "progress": self.progress,
                "progress_message": self.progress_message}


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
        return {"turn_id": self.id, "status": self.status, "failed": self.status == "failed",
                "started_at": self.started_at, "completed_at": self.completed_at,
                "duration_ms": self.duration_ms, "usage": self.usage, "error": self.error,
                "trace_id": self.trace_id, "span_id": self.span_id,
                "failed_items": self.failed_items, "items_dropped": self.items_dropped,
                "items": [item.to_dict() for item in self.items.values()]}


class ThreadSnapshot:
    """Folds one thread's events, in seq order, into its current state."""

    def __init__(self, thread_id: str, max_turns: int = 20, max_items: int = 200) -> None:
        self.thread_id = thread_id
        self.max_turns = max_turns
        self.max_items = max_items
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
                turn.items.popitem(last=False)
                turn.items_dropped += 1
        was_failed = state.status == "failed"
        state.merge(item, event.timestamp, ending)
        if state.status == "failed" and not was_failed:
            turn.failed_items += 1

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
