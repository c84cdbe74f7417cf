"""The seed design note's emitter, made runnable (imports, aware timestamps), as a baseline.

Its algorithm is kept as written: a pydantic model per event, one unbounded
``asyncio.Queue`` per subscriber, and ``await queue.put`` to each subscriber in turn.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field


class EventType(str, Enum):  # noqa: UP042 - the seed, as written
    ITEM_STARTED = "item.started"
    ITEM_COMPLETED = "item.completed"


class EventItem(BaseModel):
    id: str
    type: str
    description: str
    status: Literal["in_progress", "completed", "failed"]
    output: Any | None = None
    error: str | None = None
    started_at: datetime
    completed_at: datetime | None = None


class Event(BaseModel):
    type: EventType
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    thread_id: str
    turn_id: str | None = None
    item: EventItem | None = None


class SeedEmitter:
    def __init__(self, thread_id: str) -> None:
        self.thread_id = thread_id
        self._subscribers: list[asyncio.Queue[Event]] = []
        self._item_counter = 0

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        self._subscribers.append(queue)
        return queue

    async def emit(self, event: Event) -> None:
        for queue in self._subscribers:
            await queue.put(event)

    async def start_item(self, item_type: str, description: str) -> str:
        self._item_counter += 1
        item_id = f"item_{self._item_counter}"
        await self.emit(Event(type=EventType.ITEM_STARTED, thread_id=self.thread_id,
                              item=EventItem(id=item_id, type=item_type,
                                             description=description, status="in_progress",
                                             started_at=datetime.now(UTC))))
        return item_id

    async def complete_item(self, item_id: str, output: Any = None) -> None:
        now = datetime.now(UTC)
        await self.emit(Event(type=EventType.ITEM_COMPLETED, thread_id=self.thread_id,
                              item=EventItem(id=item_id, type="agent_message",
                                             description="Completed", status="completed",
                                             output=output, started_at=now, completed_at=now)))
