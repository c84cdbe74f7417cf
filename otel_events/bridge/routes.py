"""The bridge's HTTP routes (interface version 1); they talk to the broker only."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sse_starlette import ServerSentEvent
from starlette.requests import ClientDisconnect

from otel_events.bridge.batch import NDJSON_TYPES, UnsupportedMediaType, parse_batch
from otel_events.bridge.broker import Broker, BrokerUnavailable, TooManyThreads
from otel_events.bridge.memory import THREAD_ID_PATTERN
from otel_events.bridge.settings import BridgeSettings
from otel_events.bridge.snapshot import state_json
from otel_events.bridge.sse import (
    SEND_DEADLINE_EXTENSION,
    SlowClientResponse,
    event_stream,
    incidents,
    parse_position,
)

__all__ = ["DROPPED_EXTENSION", "IngestResponse", "router"]

#: Set in ``scope["extensions"]`` by the bridge's uvicorn protocol when it dropped the
#: connection itself (a body too slow): that incident is counted there, not twice.
DROPPED_EXTENSION = "otel_events.dropped"

# Parsing a big body (pydantic, per line) moves to a worker thread so it cannot hold up
# the streams of every other client.
_PARSE_IN_THREAD_BYTES = 64 * 1024

router = APIRouter()


class IngestResponse(BaseModel):
    """What the bridge did with each line of an ingest request."""

    accepted: int
    #: Lines already accepted earlier (same producer seq and content): not delivered again.
    duplicates: int = 0
    #: Rejected lines, ``{"line", "error"}``: the first 1000 of them.
    rejected: list[dict[str, Any]] = []
    #: How many lines were rejected in all.
    rejected_count: int = 0
    #: The bridge's seq of the last event accepted, if any.
    last_seq: int | None = None


class ErrorBody(BaseModel):
    detail: str


ThreadId = Annotated[str, PathParam(pattern=THREAD_ID_PATTERN, max_length=128,
                                    description="Letters, digits and ._:- (at most 128).")]


def _broker(request: Request) -> Broker:
    broker: Broker = request.app.state.broker
    return broker


def _settings(request: Request) -> BridgeSettings:
    settings: BridgeSettings = request.app.state.settings
    return settings


class _Aborted(Exception):
    """The producer went away before its body was complete."""


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPException(413, f"the body is larger than {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise _Aborted from None
    return b"".join(chunks)


@router.get("/healthz", tags=["health"])
async def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> JSONResponse:
    """The bridge accepts events and clients (not shutting down, its store reachable)."""
    broker = _broker(request)
    if broker.closed:
        return JSONResponse({"status": "shutting down"}, status_code=503)
    if not await broker.ready():
        return JSONResponse({"status": "broker unavailable"}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.post(
    "/v1/threads/{thread_id}/events",
    tags=["v1"],
    response_model=IngestResponse,
    responses={207: {"model": IngestResponse, "description": "Some lines were rejected."},
               400: {"model": ErrorBody}, 401: {"model": ErrorBody},
               413: {"model": ErrorBody}, 415: {"model": ErrorBody},
               # Per-line rejections, or (no line read) a thread id the URL may not hold.
               422: {"description": "No line was accepted, or the thread id is invalid.",
                     "content": {"application/json": {"schema": {"anyOf": [
                         {"$ref": "#/components/schemas/IngestResponse"},
                         {"$ref": "#/components/schemas/HTTPValidationError"}]}}}},
               503: {"model": ErrorBody}},
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/x-ndjson": {"schema": {
            "type": "string",
            "description": "One ProtocolEvent as JSON per line; blank lines are skipped."}},
        "application/json": {"schema": {
            "type": "array", "minItems": 1,
            "items": {"$ref": "#/components/schemas/ProtocolEvent"}}},
    }}},
)
async def ingest(thread_id: ThreadId, request: Request) -> JSONResponse:
    """Accept a producer's events: each line is checked on its own.

    Status 200 when every line was accepted, 207 when some were rejected, 422 when
    none was. The bridge numbers accepted events (``seq``); a line sent again with the
    same producer ``seq`` and content is counted in ``duplicates``, not delivered.
    """
    broker, settings = _broker(request), _settings(request)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in NDJSON_TYPES and media_type != "application/json":
        raise HTTPException(415, "send application/x-ndjson or application/json")
    try:
        body = await _read_body(request, settings.max_body_bytes)
    except _Aborted:
        # Nothing of a cut-off body is used. The producer is gone, so this answer goes
        # nowhere; the incident is logged in one line, not as a crash with a traceback.
        if not request.scope.get("extensions", {}).get(DROPPED_EXTENSION):
            incidents(request.scope).report(
                "upload_aborted", "ingest requests abandoned by their producers "
                                  "before the end of the body (nothing of them was kept)")
        return JSONResponse({"detail": "the body was cut off"}, status_code=400)
    try:
        if len(body) > _PARSE_IN_THREAD_BYTES:
            batch = await anyio.to_thread.run_sync(parse_batch, body, media_type, thread_id)
        else:
            batch = parse_batch(body, media_type, thread_id)
    except UnsupportedMediaType:  # pragma: no cover - checked above
        raise HTTPException(415, "send application/x-ndjson or application/json") from None
    if broker.closed:
        raise HTTPException(503, "the bridge is shutting down")
    accepted = duplicates = 0
    last_seq: int | None = None
    if batch.events:
        try:
            appended = await broker.append(thread_id, batch.events)
        except TooManyThreads as exc:
            raise HTTPException(503, str(exc)) from None
        except BrokerUnavailable as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": "1"}) from None
        accepted, duplicates, last_seq = (appended.accepted, appended.duplicates,
                                          appended.last_seq)
    rejected = [{"line": line, "error": error} for line, error in batch.rejected]
    status = 200
    if rejected:
        status = 207 if accepted or duplicates else 422
    result = IngestResponse(accepted=accepted, duplicates=duplicates, rejected=rejected,
                            rejected_count=batch.rejected_count,
                            last_seq=last_seq)
    return JSONResponse(result.model_dump(), status_code=status)


@router.get(
    "/v1/threads/{thread_id}/events",
    tags=["v1"],
    response_class=SlowClientResponse,
    responses={200: {"content": {"text/event-stream": {}},
                     "description": "id: epoch:seq, event: type, data: the event as JSON."},
               401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def events(
    thread_id: ThreadId,
    request: Request,
    last_event_id: Annotated[str | None, Query(
        max_length=64, description="Resume after this position (for clients that cannot "
                                   "set the Last-Event-ID header).")] = None,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> Response:
    """The thread's events: retained ones first (or those after the position), then live.

    A position the bridge cannot resume from exactly (expired, from another epoch,
    unknown) first gets a ``reset`` event holding the thread's state; there is never a
    silent gap. A thread with no event yet is waited for, not created.
    """
    broker, settings = _broker(request), _settings(request)
    # The header wins: the browser sends the latest id there on its own reconnections,
    # while the query string still holds the id the page first connected with.
    header = last_event_id_header if last_event_id_header and last_event_id_header.strip() \
        else None
    position = parse_position(header if header is not None else last_event_id)
    if broker.closed:
        raise HTTPException(503, "the bridge is shutting down")
    if request.method == "HEAD":  # the head of a stream, without opening a reader
        return Response(media_type="text/event-stream", headers={"Cache-Control": "no-store"})
    return SlowClientResponse(
        event_stream(broker.reader(thread_id, position), settings.retry_ms,
                     settings.max_write_bytes),
        ping=settings.heartbeat,
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        sep="\n",
        # Under the bridge's own server a stalled write is timed once per connection
        # (``GuardedH11Protocol``); a cancel scope around every write would repeat it.
        send_timeout=None if SEND_DEADLINE_EXTENSION in request.scope.get("extensions", {})
        else settings.send_timeout,
    )


@router.get("/v1/threads", tags=["v1"], responses={401: {"model": ErrorBody}})
async def threads(request: Request) -> Response:
    """Every thread the bridge holds, with its running turn, current item and status."""
    # Every open page asks for this list every few seconds, and the event loop waits
    # meanwhile: encoded here at once, without FastAPI's pass over every value against
    # the return type (17 -> 12 ms for 10,000 threads; their lines are cached too).
    summaries = await _broker(request).summaries()
    return Response(state_json({"threads": summaries}), media_type="application/json")


@router.get("/v1/threads/{thread_id}", tags=["v1"],
            responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})
async def thread_state(thread_id: ThreadId, request: Request) -> Response:
    """One thread's state: turns, items, statuses, durations, token usage."""
    snapshot = await _broker(request).snapshot(thread_id)
    if snapshot is None:
        raise HTTPException(404, "no such thread")
    return Response(snapshot, media_type="application/json")


# HEAD works wherever GET does (the body left out by the server), without a second entry
# per route in the OpenAPI document.
for _route in list(router.routes):
    if isinstance(_route, APIRoute) and _route.methods == {"GET"}:
        router.add_api_route(_route.path, _route.endpoint, methods=["HEAD"],
                             include_in_schema=False, response_class=_route.response_class,
                             name=f"{_route.name}_head")
