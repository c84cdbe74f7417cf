"""The bridge as an ASGI application: agents post their events, browsers follow them.

``create_app(settings, broker)`` builds it: the routes (``otel_events.bridge.routes``),
the page, bearer-token auth and CORS, and a sweeper that applies retention. The broker
(memory by default) is the only place threads are kept; nothing here knows which.

HTTP interface, version 1 (docs/bridge.md):

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
import importlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, QueryParams
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from otel_events import __version__
from otel_events.bridge.broker import Broker
from otel_events.bridge.memory import MemoryBroker
from otel_events.bridge.routes import router
from otel_events.bridge.settings import BridgeSettings

__all__ = ["create_app"]

_STATIC = Path(__file__).parent / "static"


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


def make_broker(settings: BridgeSettings) -> Broker:
    """The broker ``settings.broker_url`` names: memory by default, or Redis."""
    url = settings.broker_url
    if url is None or url == "memory":
        return MemoryBroker(
            retention_count=settings.retention_count, retention_age=settings.retention_age,
            idle_expiry=settings.idle_expiry, max_threads=settings.max_threads,
            batch=settings.batch)
    if url.split(":", 1)[0] in ("redis", "rediss", "unix"):
        # Loaded only when asked for: redis-py is the [redis] extra.
        redis_module = importlib.import_module("otel_events.bridge.redis")
        broker: Broker = redis_module.RedisBroker.from_settings(settings)
        return broker
    raise ValueError("broker must be 'memory' or a redis://, rediss:// or unix:// URL")


def _page(settings: BridgeSettings) -> bytes:
    text = (_STATIC / "index.html").read_text(encoding="utf-8")
    return text.replace("{{TRACING_UI_URL}}", html.escape(settings.tracing_ui_url)).encode()


def create_app(settings: BridgeSettings | None = None,
               broker: Broker | None = None) -> FastAPI:
    """The bridge as an ASGI application; ``app.state.broker`` holds the threads."""
    settings = settings or BridgeSettings()
    # sse-starlette logs every chunk it sends at DEBUG: that is event content, which
    # must never reach the bridge's logs, whatever level the application picks.
    logging.getLogger("sse_starlette").setLevel(logging.INFO)
    broker = broker or make_broker(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(settings.sweep_interval)
                await broker.expire()

        sweeper = asyncio.create_task(sweep())
        try:
            yield
        finally:
            sweeper.cancel()
            broker.close()

    app = FastAPI(
        title="otel-events bridge",
        version=__version__,
        summary="Live agent events over Server-Sent Events, resumable by Last-Event-ID.",
        lifespan=lifespan,
    )
    app.state.broker = broker
    app.state.settings = settings
    page = _page(settings)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    app.include_router(router)
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
