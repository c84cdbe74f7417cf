"""``otel-events bridge``: the bridge in a uvicorn server that ends every SSE stream
when it shuts down (so shutdown does not wait on clients that never leave)."""

from __future__ import annotations

import ipaddress
import sys
from typing import Annotated, Any

import typer
import uvicorn

from otel_events.bridge.app import create_app
from otel_events.bridge.broker import Broker
from otel_events.bridge.settings import BROKER_ENV, TOKEN_ENV, BridgeSettings

__all__ = ["bridge_command", "create_server"]


class _BridgeServer(uvicorn.Server):
    """uvicorn, ending SSE streams first at shutdown so it need not wait for clients."""

    def __init__(self, config: uvicorn.Config, broker: Broker) -> None:
        super().__init__(config)
        self.broker = broker

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        self.broker.close()
        await super().shutdown(sockets)


def create_server(settings: BridgeSettings | None = None, *, broker: Broker | None = None,
                  log_level: str = "warning", access_log: bool = False,
                  **config: Any) -> uvicorn.Server:
    """A uvicorn server running the bridge (``server.run()`` or ``await server.serve()``)."""
    settings = settings or BridgeSettings()
    app = create_app(settings, broker)
    uv_config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level,
        access_log=access_log, timeout_graceful_shutdown=settings.shutdown_timeout,
        **config)
    return _BridgeServer(uv_config, app.state.broker)


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
    broker: Annotated[str | None, typer.Option(
        help="Where threads are kept: memory (default) or a Redis URL shared by replicas "
             "(redis://host:port/db, rediss://...).",
        envvar=BROKER_ENV, show_envvar=True)] = None,
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
        host=host, port=port, token=token or None, broker_url=broker or None,
        cors_origins=tuple(cors_origin or ()),
        max_body_bytes=max_body, retention_count=retention,
        retention_age=retention_age or None, idle_expiry=idle_expiry or None,
        tracing_ui_url=tracing_ui_url, heartbeat=heartbeat)
    if settings.token is None and not _is_loopback(host):
        print(f"warning: listening on {host} with no token: anyone who can reach it can "
              f"read and post events (set {TOKEN_ENV})", file=sys.stderr)
    create_server(settings, log_level=log_level, access_log=access_log).run()
