"""The bridge as an ASGI application: agents post their events, browsers follow them.

``create_app(settings, broker)`` builds it: the routes (``otel_events.bridge.routes``),
the page, bearer-token auth and CORS, and a sweeper that applies retention. The broker
(memory by default) is the only place threads are kept; nothing here knows which.

HTTP interface, version 1 (docs/bridge.md):

* ``POST /v1/threads/{thread_id}/events``: NDJSON or a JSON array of events.
* ``GET /v1/threads/{thread_id}/events``: ``text/event-stream``, resumable.
* ``GET /v1/threads`` and ``GET /v1/threads/{thread_id}``: state folded from events.
* ``GET /healthz``, ``GET /readyz``; ``GET /``: the live progress page.

Every response carries the security headers below; a request whose ``Host`` this bridge
does not answer to gets 421 before anything else (DNS rebinding); OPTIONS is answered
with the methods of the path; validation errors never echo the submitted value.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import logging
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, QueryParams
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from otel_events import __version__
from otel_events.bridge.broker import Broker, BrokerUnavailable
from otel_events.bridge.incidents import Incidents
from otel_events.bridge.memory import MemoryBroker
from otel_events.bridge.routes import router
from otel_events.bridge.settings import BridgeSettings

__all__ = ["SECURITY_HEADERS", "create_app"]

_STATIC = Path(__file__).parent / "static"

#: On every response. The page loads nothing from elsewhere (no CDN, no inline script),
#: so the policy can be strict; no site may frame the page or read its referrer.
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_SECURITY_RAW = [(name.lower().encode(), value.encode())
                 for name, value in SECURITY_HEADERS.items()]
_SECURITY_NAMES = frozenset(name for name, _ in _SECURITY_RAW)

# The only route a browser reads with EventSource, which cannot set headers.
_STREAM_PATH = re.compile(r"^/v1/threads/[^/]+/events$")


class _SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every response, error pages (even a 500) included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(name, value) for name, value in message.get("headers", [])
                           if name.lower() not in _SECURITY_NAMES]
                message = {**message, "headers": headers + _SECURITY_RAW}
            await send(message)

        await self.app(scope, receive, send_secured)


def host_name(value: str | None) -> str | None:
    """The name in a ``Host`` header, port removed (``[::1]`` keeps its brackets)."""
    if value is None:
        return None
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        name, port = value[:end + 1], value[end + 1:]
        if end < 0 or (port and not port.startswith(":")):
            return None
        port = port[1:]
    else:
        name, _, port = value.partition(":")
    if port and not port.isdigit():
        return None
    return name or None


class _AllowedHosts:
    """Answers 421 to a request for a ``Host`` this bridge does not serve.

    A page on any site can point its own name at 127.0.0.1 (DNS rebinding) and then read
    a token-less loopback bridge as same-origin; its requests still carry that name, so
    the Host header tells them apart. Starlette's TrustedHostMiddleware would do, but it
    cuts ``[::1]:8765`` at the first colon and answers 400 without saying why.
    """

    def __init__(self, app: ASGIApp, settings: BridgeSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            name = host_name(Headers(scope=scope).get("host"))
            if name is None or not self.settings.host_allowed(name):
                response = JSONResponse(
                    {"detail": "this bridge does not serve that Host (see --allowed-host)"},
                    status_code=421)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Options:
    """OPTIONS gets 204 with the path's methods in ``Allow`` (404 for unknown paths).

    Only the methods are revealed, so this runs before authentication, like a CORS
    preflight (which ``CORSMiddleware``, outside this, answers when it is configured).
    """

    def __init__(self, app: ASGIApp, routes: Sequence[Sequence[BaseRoute]]) -> None:
        self.app = app
        # Lists of routes, read at each request (routes may be added after this is made).
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            methods: set[str] = set()
            for route in (route for routes in self.routes for route in routes):
                if not hasattr(route, "path"):
                    continue  # an included router: its own routes are listed too
                match, _ = route.matches(scope)
                if match is not Match.NONE:
                    methods |= getattr(route, "methods", None) or {"GET", "HEAD"}
            if methods:
                allow = ", ".join(sorted(methods | {"OPTIONS"}))
                await Response(status_code=204, headers={"Allow": allow})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _BearerAuth:
    """Guards ``/v1/``: without the token a request gets 401 and learns nothing else.

    The scheme is case-insensitive (RFC 7235). Browsers' EventSource cannot set headers,
    so ``?access_token=`` (RFC 6750) is accepted on the event stream, and only there:
    a query string can end up in logs and histories, so no other route takes it.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
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
            scheme, _, credentials = given.strip().partition(" ")
            return (scheme.lower() == "bearer"
                    and hmac.compare_digest(credentials.strip().encode(), self._token))
        if scope["method"] not in ("GET", "HEAD") or not _STREAM_PATH.match(scope["path"]):
            return False
        query = QueryParams(scope.get("query_string", b"")).get("access_token")
        return query is not None and hmac.compare_digest(query.encode(), self._token)


class _Bridge(FastAPI):
    """FastAPI with the security headers outside everything, its error pages included."""

    def build_middleware_stack(self) -> ASGIApp:
        return _SecurityHeaders(super().build_middleware_stack())

    def openapi(self) -> dict[str, Any]:
        return _openapi(self)


async def _broker_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 with Retry-After from any route whose broker's store is unreachable (Redis)."""
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the field and the problem, never the value (FastAPI echoes it)."""
    assert isinstance(exc, RequestValidationError)
    detail = [{"type": error.get("type", "invalid"), "loc": list(error.get("loc", ())),
               "msg": error.get("msg", "invalid")} for error in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document, with the protocol's event schema as ``ProtocolEvent``."""
    if app.openapi_schema is None:
        from otel_events.protocol import event_json_schema

        document = get_openapi(title=app.title, version=app.version, summary=app.summary,
                               routes=app.routes)
        event = event_json_schema(ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for name, schema in event.pop("$defs", {}).items():
            if name in schemas:  # pragma: no cover - a protocol model named like an API one
                raise RuntimeError(f"OpenAPI component {name} defined twice")
            schemas[name] = schema
        # The protocol's union is told apart by a function, which JSON Schema cannot say,
        # and its UnknownEvent takes any type: ``anyOf`` (see event_json_schema).
        schemas["ProtocolEvent"] = {"title": "otel-events protocol event",
                                    "anyOf": event.pop("anyOf")}
        app.openapi_schema = document
    return app.openapi_schema


def make_broker(settings: BridgeSettings) -> Broker:
    """The broker ``settings.broker_url`` names: memory by default, or Redis."""
    url = settings.broker_url
    if url is None or url == "memory":
        return MemoryBroker(
            retention_count=settings.retention_count, retention_age=settings.retention_age,
            idle_expiry=settings.idle_expiry, max_threads=settings.max_threads,
            batch=settings.batch, batch_bytes=settings.max_write_bytes,
            retention_bytes=settings.retention_bytes,
            retention_total_bytes=settings.retention_total_bytes)
    if url.split(":", 1)[0] in ("redis", "rediss", "unix"):
        # Loaded only when asked for: redis-py is the [redis] extra.
        from otel_events.bridge.redis import RedisBroker

        return RedisBroker.from_settings(settings)
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
    # Not ``broker or ...``: a memory broker with no thread yet is falsy (``len``).
    broker = broker if broker is not None else make_broker(settings)
    incidents = Incidents(logging.getLogger("otel_events.bridge"))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(settings.sweep_interval)
                try:
                    await broker.expire()
                except Exception as exc:  # the next sweep may succeed
                    # An error the broker does not absorb (a Redis replica answering
                    # READONLY in a failover, OOM) must not end the sweeper: retention
                    # and expiry would stop for the life of the process. Its type only:
                    # a store's error text may quote stored data.
                    incidents.report("sweep_failed", f"the retention sweep failed "
                                     f"({type(exc).__name__}); retrying every "
                                     f"{settings.sweep_interval:g} s")

        async def report() -> None:
            while True:
                await asyncio.sleep(incidents.interval)
                incidents.flush()

        tasks = [asyncio.create_task(sweep()), asyncio.create_task(report())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            broker.close()
            incidents.flush()

    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN, a third
    # party the page's policy does not trust. /openapi.json stays.
    app = _Bridge(
        title="otel-events bridge",
        version=__version__,
        summary="Live agent events over Server-Sent Events, resumable by Last-Event-ID.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        exception_handlers={RequestValidationError: _validation_error,
                            BrokerUnavailable: _broker_unavailable},
    )
    app.state.broker = broker
    app.state.settings = settings
    app.state.incidents = incidents
    page = _page(settings)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    app.include_router(router)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    # Added innermost first: the Host check, then CORS preflights, then OPTIONS, then
    # the token (the security headers wrap them all, see ``_Bridge``).
    if settings.token is not None:
        app.add_middleware(_BearerAuth, token=settings.token)
    app.add_middleware(_Options, routes=(app.router.routes, router.routes))
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "HEAD", "POST"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(_AllowedHosts, settings=settings)
    return app
