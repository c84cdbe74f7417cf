"""The in-process pattern: a chat endpoint that streams the agent's events as it works.

``POST /chat/stream`` subscribes to the thread's emitter *before* starting the agent (so
no event is missed), runs the agent in a background task, and streams its events as SSE
until the turn ends. If the client goes away first, its subscription is closed and the
agent finishes its turn anyway (its spans and metrics still matter).

Set ``OTEL_EVENTS_BRIDGE_URL`` (and ``OTEL_EVENTS_BRIDGE_TOKEN``) to also send every
event to a running ``otel-events bridge``, where the live page and other clients see it.

Run: ``uvicorn examples.chat_app:app --port 8000``, then
``curl -N -X POST localhost:8000/chat/stream -H 'content-type: application/json'
-d '{"message": "How many orders last week?"}'``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse

from otel_events import Cancelled, EventEmitter
from otel_events.bridge.sse import frame
from otel_events.http_sink import HttpSink

app = FastAPI(title="otel-events chat example")

# One emitter per conversation; a real app would also expire them.
_emitters: dict[str, EventEmitter] = {}
# Background tasks are referenced until done: the loop keeps only weak references.
_tasks: set[asyncio.Task[None]] = set()
END_OF_TURN = frozenset({"turn.completed", "turn.failed"})


class ChatRequest(BaseModel):
    message: str = Field(min_length=1, max_length=10_000)
    thread_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._:-]{1,128}$")


def emitter_for(thread_id: str | None) -> EventEmitter:
    emitter = _emitters.get(thread_id or "")
    if emitter is None:
        sinks = []
        bridge = os.environ.get("OTEL_EVENTS_BRIDGE_URL")
        if bridge:
            sinks.append(HttpSink(bridge, token=os.environ.get("OTEL_EVENTS_BRIDGE_TOKEN")))
        emitter = EventEmitter(thread_id, agent_name="chat-example", sinks=sinks)
        _emitters[emitter.thread_id] = emitter
    return emitter


async def run_agent(emitter: EventEmitter, message: str) -> None:
    """A stand-in agent: plan, query, answer. Replace with your own."""
    async with emitter.turn() as turn:
        async with turn.item("reasoning", "Working out what the question needs"):
            await asyncio.sleep(0.05)
        async with turn.item("sql_execution", "Counting last week's orders",
                             name="warehouse") as query:
            query.progress(0.5, "scanning orders")
            await asyncio.sleep(0.05)
            query.complete(output={"rows": 1, "orders": 1284})
        turn.add_usage(input_tokens=420, output_tokens=36)
        async with turn.item("agent_message", "Answering") as answer:
            answer.complete(output=f"1,284 orders last week (you asked: {message[:40]})")


@app.post("/chat/stream")
async def chat_stream(request: ChatRequest) -> EventSourceResponse:
    emitter = emitter_for(request.thread_id)
    subscription = emitter.subscribe()
    task = asyncio.create_task(run_agent(emitter, request.message))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)

    async def frames() -> AsyncIterator[bytes]:
        # The finally runs when the turn ends and when the client goes away
        # (sse-starlette cancels this generator on disconnect).
        try:
            async for entry in subscription.entries():
                yield frame(entry.seq, entry.type, entry.json)
                if entry.type in END_OF_TURN:
                    return
        finally:
            subscription.close()
            # The user closed the tab: stop the work, and say it was stopped on purpose
            # (the turn ends "cancelled", which pages nobody), not lost ("abandoned").
            if not task.done():
                task.cancel(Cancelled("client disconnected"))

    return EventSourceResponse(frames(), sep="\n",
                               headers={"X-Thread-Id": emitter.thread_id})
