"""The sidecar SSE bridge: agents post their events, browsers and tools read them live.

``create_app(settings)`` builds the FastAPI application; ``create_server(settings)`` wraps
it in a uvicorn server that ends every SSE stream when it shuts down (so shutdown does
not wait on clients that never leave); ``otel-events bridge`` runs that server.

HTTP interface, version 1:

* ``POST /v1/threads/{thread_id}/events``: NDJSON or a JSON array of events.
* ``GET /v1/threads/{thread_id}/events``: ``text/event-stream``, resumable.
* ``GET /v1/threads`` and ``GET /v1/threads/{thread_id}``: state folded from events.
* ``GET /healthz``, ``GET /readyz``; ``GET /``: the live progress page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import ipaddress
import logging
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import anyio
import typer
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.datastructures import Headers, QueryParams
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from otel_events import __version__
from otel_events.batch import NDJSON_TYPES, UnsupportedMediaType, parse_batch
from otel_events.sse import SlowClientResponse, event_stream
from otel_events.threads import THREAD_ID_PATTERN, ThreadRegistry, TooManyThreads

__all__ = ["BridgeSettings", "bridge_command", "create_app", "create_server"]

_STATIC = Path(__file__).parent / "static"
TOKEN_ENV = "OTEL_EVENTS_BRIDGE_TOKEN"
# Parsing a big body (pydantic, per line) moves to a worker thread so it cannot hold up
# the streams of every other client.
_PARSE_IN_THREAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class BridgeSettings:
    """Everything the bridge can be told; the defaults are safe on a workstation."""

    host: str = "127.0.0.1"
    port: int = 8765
    #: Bearer token guarding ``/v1/``; ``None``: no token (then keep it on loopback).
    token: str | None = None
    #: Origins allowed to read from browsers on other origins (CORS); none by default.
    cors_origins: Sequence[str] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    #: Events kept per thread for replay, by count and by age (seconds).
    retention_count: int = 4096
    retention_age: float | None = 3600.0
    #: A thread with no event and no reader for this long is forgotten.
    idle_expiry: float | None = 3600.0
    max_threads: int = 10_000
    #: Where the page's "view trace" links go.
    tracing_ui_url: str = "http://127.0.0.1:16686/trace/{trace_id}"
    #: Seconds between heartbeat comments on an idle stream.
    heartbeat: float = 15.0
    #: The reconnection delay the SSE ``retry:`` field asks of clients.
    retry_ms: int = 2000
    #: A client that cannot take one batch in this long is disconnected (it may resume).
    send_timeout: float | None = 30.0
    sweep_interval: float = 30.0
    #: Most events sent to one client in one write.
    batch: int = 512
    #: Seconds uvicorn waits for requests at shutdown before cancelling them.
    shutdown_timeout: int = 5

    def __post_init__(self) -> None:
        if "{trace_id}" not in self.tracing_ui_url:
            raise ValueError("tracing_ui_url must contain {trace_id}")
        if self.retention_count < 2:
            raise ValueError("retention_count must be at least 2")
        if self.max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        if self.token is not None and not self.token.isascii():
            raise ValueError("the token must be ASCII")


class IngestResult(BaseModel):
    """What the bridge did with each line of an ingest request."""

    accepted: int
    #: Lines already accepted earlier (same producer seq and content): not delivered again.
    duplicates: int = 0
    rejected: list[dict[str, Any]] = []
    #: The bridge's seq of the last event accepted, if any.
    last_seq: int | None = None


class ErrorBody(BaseModel):
    detail: str


ThreadId = Annotated[str, PathParam(pattern=THREAD_ID_PATTERN, max_length=128,
                                    description="Letters, digits and ._:- (at most 128).")]


class _BearerAuth:
    """Guards ``/v1/``: without the token a request gets 401 and learns nothing else.

    Browsers' EventSource cannot set headers, so ``?access_token=`` (RFC 6750) is
    accepted too; it can end up in access logs, which the bridge keeps off by default.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if (scope["type"] == "http" and scope["method"] != "OPTIONS"
                and (path == "/v1" or path.startswith("/v1/"))
                and not self._allowed(scope)):
            response = JSONResponse({"detail": "unauthorized"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        given = Headers(scope=scope).get("authorization")
        if given is not None:
            return hmac.compare_digest(given.encode(), self._expected)
        query = QueryParams(scope.get("query_string", b"")).get("access_token")
        return query is not None and hmac.compare_digest(query.encode(), self._token)


def _last_event_id(header: str | None, query: int | None) -> int | None:
    # The header wins: the browser sends the latest id there on its own reconnections,
    # while the query string still holds the id the page first connected with.
    if header is not None and header.strip():
        value = header.strip()
        if not value.isdigit():
            raise HTTPException(422, "Last-Event-ID must be a non-negative integer (a seq)")
        return int(value)
    return query


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPException(413, f"the body is larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _page(settings: BridgeSettings) -> bytes:
    text = (_STATIC / "index.html").read_text(encoding="utf-8")
    return text.replace("{{TRACING_UI_URL}}", html.escape(settings.tracing_ui_url)).encode()


def create_app(settings: BridgeSettings | None = None,
               registry: ThreadRegistry | None = None) -> FastAPI:
    """The bridge as an ASGI application; its ``state.registry`` holds the threads."""
    settings = settings or BridgeSettings()
    # sse-starlette logs every chunk it sends at DEBUG: that is event content, which
    # must never reach the bridge's logs, whatever level the application picks.
    logging.getLogger("sse_starlette").setLevel(logging.INFO)
    registry = registry or ThreadRegistry(
        retention_count=settings.retention_count, retention_age=settings.retention_age,
        idle_expiry=settings.idle_expiry, max_threads=settings.max_threads)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(settings.sweep_interval)
                registry.sweep()

        sweeper = asyncio.create_task(sweep())
        try:
            yield
        finally:
            sweeper.cancel()
            registry.close()

    app = FastAPI(
        title="otel-events bridge",
        version=__version__,
        summary="Live agent events over Server-Sent Events, resumable by Last-Event-ID.",
        lifespan=lifespan,
    )
    app.state.registry = registry
    app.state.settings = settings
    page = _page(settings)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"model": ErrorBody}})
    async def readyz() -> JSONResponse:
        """The bridge accepts events and clients (not shutting down)."""
        if registry.closed:
            return JSONResponse({"status": "shutting down"}, status_code=503)
        return JSONResponse({"status": "ready"})

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    @app.post(
        "/v1/threads/{thread_id}/events",
        tags=["v1"],
        response_model=IngestResult,
        responses={207: {"model": IngestResult, "description": "Some lines were rejected."},
                   401: {"model": ErrorBody}, 413: {"model": ErrorBody},
                   415: {"model": ErrorBody},
                   422: {"model": IngestResult, "description": "No line was accepted."}},
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
        }}},
    )
    async def ingest(thread_id: ThreadId, request: Request) -> JSONResponse:
        """Accept a producer's events: each line is checked on its own.

        Status 200 when every line was accepted, 207 when some were rejected, 422 when
        none was. The bridge numbers accepted events (``seq``); a line sent again with the
        same producer ``seq`` and content is counted in ``duplicates``, not delivered.
        """
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in NDJSON_TYPES and media_type != "application/json":
            raise HTTPException(415, "send application/x-ndjson or application/json")
        body = await _read_body(request, settings.max_body_bytes)
        try:
            if len(body) > _PARSE_IN_THREAD_BYTES:
                batch = await anyio.to_thread.run_sync(parse_batch, body, media_type,
                                                       thread_id)
            else:
                batch = parse_batch(body, media_type, thread_id)
        except UnsupportedMediaType:  # pragma: no cover - checked above
            raise HTTPException(415, "send application/x-ndjson or application/json") from None
        if registry.closed:
            raise HTTPException(503, "the bridge is shutting down")
        accepted = duplicates = 0
        last_seq: int | None = None
        if batch.events:
            try:
                thread = registry.get_or_create(thread_id)
            except TooManyThreads as exc:
                raise HTTPException(503, str(exc)) from None
            for index, (_, event, digest, raw) in enumerate(batch.events, 1):
                if index % 500 == 0:
                    # A big batch lets the streams run now and then (order is kept:
                    # each event still gets the next seq).
                    await asyncio.sleep(0)
                seq = thread.publish(event, digest, raw)
                if seq is None:
                    duplicates += 1
                else:
                    accepted += 1
                    last_seq = seq
        rejected = [{"line": line, "error": error} for line, error in batch.rejected]
        status = 200
        if rejected:
            status = 207 if accepted or duplicates else 422
        result = IngestResult(accepted=accepted, duplicates=duplicates, rejected=rejected,
                              last_seq=last_seq)
        return JSONResponse(result.model_dump(), status_code=status)

    @app.get(
        "/v1/threads/{thread_id}/events",
        tags=["v1"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}},
                         "description": "id: seq, event: type, data: the event as JSON."},
                   401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def events(
        thread_id: ThreadId,
        last_event_id: Annotated[int | None, Query(
            ge=0, description="Resume after this seq (for clients that cannot set "
                              "the Last-Event-ID header).")] = None,
        last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    ) -> SlowClientResponse:
        """The thread's events: retained ones first (or those after the cursor), then live.

        A cursor older than what is retained, or unknown to this bridge, first gets a
        ``reset`` event (no id) holding the thread's state; there is never a silent gap.
        """
        cursor = _last_event_id(last_event_id_header, last_event_id)
        if registry.closed:
            raise HTTPException(503, "the bridge is shutting down")
        try:
            thread = registry.get_or_create(thread_id)
        except TooManyThreads as exc:
            raise HTTPException(503, str(exc)) from None
        return SlowClientResponse(
            event_stream(thread, cursor, settings.retry_ms, settings.batch),
            ping=settings.heartbeat,
            ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
            sep="\n",
            send_timeout=settings.send_timeout,
        )

    @app.get("/v1/threads", tags=["v1"], responses={401: {"model": ErrorBody}})
    async def threads() -> dict[str, Any]:
        """Every thread the bridge holds, with its running turn, current item and status."""
        return {"threads": [thread.snapshot.summary() for thread in registry]}

    @app.get("/v1/threads/{thread_id}", tags=["v1"],
             responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}})
    async def thread_state(thread_id: ThreadId) -> Response:
        """One thread's state: turns, items, statuses, durations, token usage."""
        thread = registry.get(thread_id)
        if thread is None:
            raise HTTPException(404, "no such thread")
        return Response(thread.snapshot_json(), media_type="application/json")

    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    if settings.token is not None:
        app.add_middleware(_BearerAuth, token=settings.token)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    return app


class _BridgeServer(uvicorn.Server):
    """uvicorn, ending SSE streams first at shutdown so it need not wait for clients."""

    def __init__(self, config: uvicorn.Config, registry: ThreadRegistry) -> None:
        super().__init__(config)
        self.registry = registry

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self.registry.close()
        await super().shutdown(sockets)


def create_server(settings: BridgeSettings | None = None, *, log_level: str = "warning",
                  access_log: bool = False, **config: Any) -> uvicorn.Server:
    """A uvicorn server running the bridge (``server.run()`` or ``await server.serve()``)."""
    settings = settings or BridgeSettings()
    app = create_app(settings)
    uv_config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level,
        access_log=access_log, timeout_graceful_shutdown=settings.shutdown_timeout,
        **config)
    return _BridgeServer(uv_config, app.state.registry)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bridge_command(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    token: Annotated[str | None, typer.Option(
        help="Bearer token required on /v1/ (or set the environment variable).",
        envvar=TOKEN_ENV, show_envvar=True)] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="An origin allowed to read through CORS (repeatable; none by default).")]
    = None,
    max_body: Annotated[int, typer.Option(help="Largest ingest body, in bytes.")]
    = 4 * 1024 * 1024,
    retention: Annotated[int, typer.Option(help="Events kept per thread for replay.")] = 4096,
    retention_age: Annotated[float, typer.Option(
        help="Seconds an event is kept for replay (0: no age limit).")] = 3600.0,
    idle_expiry: Annotated[float, typer.Option(
        help="Seconds before an idle thread with no reader is forgotten (0: never).")]
    = 3600.0,
    tracing_ui_url: Annotated[str, typer.Option(
        help="Trace link template of the page; {trace_id} is replaced.")]
    = "http://127.0.0.1:16686/trace/{trace_id}",
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeat comments.")] = 15.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    access_log: Annotated[bool, typer.Option(
        help="Log each request (paths only; a query token would show there).")] = False,
) -> None:
    """Run the SSE bridge: agents post events, browsers and tools follow them live."""
    settings = BridgeSettings(
        host=host, port=port, token=token or None, cors_origins=tuple(cors_origin or ()),
        max_body_bytes=max_body, retention_count=retention,
        retention_age=retention_age or None, idle_expiry=idle_expiry or None,
        tracing_ui_url=tracing_ui_url, heartbeat=heartbeat)
    if settings.token is None and not _is_loopback(host):
        print(f"warning: listening on {host} with no token: anyone who can reach it can "
              f"read and post events (set {TOKEN_ENV})", file=sys.stderr)
    create_server(settings, log_level=log_level, access_log=access_log).run()
