"""``otel-events bridge``: the bridge in a uvicorn server that ends every SSE stream
when it shuts down (so shutdown does not wait on clients that never leave), and that
drops connections too slow to send their request (slowloris) or to read their stream.

uvicorn bounds a request head's size (h11: 16 KiB) but not the time it takes, and its
keep-alive timeout only runs between requests: a client trickling its headers or body a
byte at a time holds its connection for ever; and a client that does not read what it
is sent holds it as long, with the unsent bytes. ``GuardedH11Protocol`` gives each
request a deadline for its head and one for its body, one to each write, and lets the
application abort a connection for real (``ABORT_EXTENSION``: the socket reset and its
buffers freed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import struct
import sys
from typing import Annotated, Any, cast

import h11
import typer
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from otel_events.bridge.app import create_app
from otel_events.bridge.broker import Broker
from otel_events.bridge.incidents import Incidents
from otel_events.bridge.routes import DROPPED_EXTENSION
from otel_events.bridge.settings import BROKER_ENV, TOKEN_ENV, BridgeSettings, is_loopback
from otel_events.bridge.sse import (
    ABORT_EXTENSION,
    SEND_DEADLINE_EXTENSION,
    send_timeout_incident,
)
from otel_events.retention import DEFAULTS

__all__ = ["GuardedH11Protocol", "bridge_command", "create_server"]

_REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                    b"connection: close\r\ncontent-length: 37\r\n\r\n"
                    b"the request was not sent in time: 408")
# uvicorn's per-request warnings that a flood of bad or excess requests repeats line by
# line: counted as incidents instead.
_FLOOD_WARNINGS = {
    "Exceeded concurrency limit.": (
        "over_capacity", "requests refused with 503: over the connection cap"),
    "Invalid HTTP request received.": (
        "invalid_http", "invalid HTTP requests refused with 400"),
}


class _ConnectionLog:
    """uvicorn's error logger as one connection uses it, its flood-prone warnings
    counted (``Incidents``); everything else, tracebacks of real errors included, passes."""

    def __init__(self, logger: logging.Logger, incidents: Incidents) -> None:
        self._logger = logger
        self._incidents = incidents

    def __getattr__(self, name: str) -> Any:
        return getattr(self._logger, name)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:
        quiet = _FLOOD_WARNINGS.get(str(msg))
        if quiet is not None and not args:
            self._incidents.report(*quiet)
        else:
            self._logger.warning(msg, *args, **kwargs)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head and body.

    The head deadline runs from the connection (or the end of the previous response)
    until the request line and headers are in; the body deadline from then until the
    body is in. A partial head past its deadline gets 408; a body past its deadline gets
    the connection aborted (the application sees a disconnect). The other way round, a
    write the client does not take within ``send_timeout``, or an answer still unread
    when the next head is due, resets the connection. Set the class attributes in a
    subclass (``create_server`` does).
    """

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    #: A write that waits this long for the client to take bytes drops the connection.
    send_timeout: float | None = 30.0
    incidents: Incidents = Incidents()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A wrapper standing in for the logger: uvicorn calls only its methods.
        self.logger = cast(logging.Logger, _ConnectionLog(self.logger, self.incidents))
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._write_deadline: asyncio.TimerHandle | None = None
        self._paused_at: float | None = None
        self._aborted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        # The client does not take what was written: uvicorn waits for it to drain, with
        # no limit (an SSE stream has its own; an ordinary response, or a pipelined
        # request behind one, has none). Past ``send_timeout`` the connection goes.
        super().pause_writing()
        if self.send_timeout is not None:
            self._paused_at = self.loop.time()
            if self._write_deadline is None:
                self._write_deadline = self.loop.call_later(self.send_timeout, self._stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        # The timer stays: a busy stream pauses and resumes at every large write, and
        # one timer re-checked when due is cheaper than one made and cancelled each time.
        self._paused_at = None

    def _stalled(self) -> None:
        self._write_deadline = None
        if self._paused_at is None or self._aborted or self.send_timeout is None:
            return
        waited = self.loop.time() - self._paused_at
        if waited < self.send_timeout:  # paused again since: the rest of this pause
            self._write_deadline = self.loop.call_later(self.send_timeout - waited,
                                                         self._stalled)
            return
        self.incidents.report(*send_timeout_incident(self.send_timeout))
        self.abort()

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not None and self.cycle is not cycle:
            # A new request: its application may abort the connection (a stalled stream),
            # and need not time its writes: ``pause_writing`` does, once per connection.
            extensions = _extensions(self.cycle)
            extensions[ABORT_EXTENSION] = functools.partial(self.abort, self.cycle)
            if self.send_timeout is not None:
                extensions[SEND_DEADLINE_EXTENSION] = self.send_timeout
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def abort(self, cycle: RequestResponseCycle | None = None) -> bool:
        """Drop the connection now: reset it, freeing what is queued for it. False if
        it was dropped already (the incident is counted once).

        ``close()`` would wait for the write buffer to drain, which a stalled client
        never lets happen; a plain abort still leaves the kernel's send queue to a
        lingering socket. SO_LINGER 0 makes the close a reset.
        """
        if self._aborted:
            return False
        if cycle is not None and cycle is not self.cycle:
            return True  # that request is over; this connection serves another
        self._aborted = True
        if self.cycle is not None and not self.cycle.response_complete:
            # The application's sends become no-ops and its receive() says disconnect;
            # uvicorn then does not report the cut-off response as an error.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()
        return True

    def timeout_keep_alive_handler(self) -> None:
        # uvicorn closes an idle keep-alive connection politely, which waits for the
        # last response to drain: a client that does not read it would keep the socket
        # and the response's bytes for ever. While a response is unread the head
        # deadline decides instead (and resets the connection if it is still unread).
        if self.transport.is_closing() or not self.transport.get_write_buffer_size():
            super().timeout_keep_alive_handler()

    def _drop_unread(self) -> None:
        if self._aborted:
            return
        self.incidents.report(
            "unread_response", "connections reset: a response not read within the "
                               "keep-alive or head timeout")
        self.abort()

    # -- deadlines -----------------------------------------------------------------

    def _follow(self) -> None:
        """Arm the deadline of what the connection waits for from the client, if any."""
        phase: str | None
        if self.transport.is_closing():
            # Closed after its response (``Connection: close``): the close waits for the
            # client to read that response, which it has as long as a head to do so.
            phase = "drain" if self.transport.get_write_buffer_size() else None
        else:
            state = self.conn.their_state
            phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase == self._phase:
            return
        self._disarm()
        self._phase = phase
        if phase is not None:
            timeout = self.body_timeout if phase == "body" else self.header_timeout
            self._deadline = self.loop.call_later(timeout, self._expired, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = None

    def _expired(self, phase: str) -> None:
        self._deadline = None
        if phase in ("head", "drain") and self.transport.get_write_buffer_size():
            self._drop_unread()  # the last answer still sits unread
            return
        if self.transport.is_closing():
            return
        if phase == "head" and self.conn.their_state is h11.IDLE:
            if self.conn.trailing_data[0]:
                self.incidents.report(
                    "slow_head", f"connections dropped: request head not in within "
                                 f"{self.header_timeout}s (408)")
                self.transport.write(_REQUEST_TIMEOUT)
            # A connection that sent nothing at all is closed quietly, as uvicorn closes
            # idle keep-alive connections.
            self.transport.close()
        elif phase == "body" and self.conn.their_state is h11.SEND_BODY:
            self.incidents.report(
                "slow_body", f"connections dropped: request body not in within "
                             f"{self.body_timeout}s")
            if self.cycle is not None:
                _extensions(self.cycle)[DROPPED_EXTENSION] = True
            self.abort()


def _extensions(cycle: RequestResponseCycle) -> dict[str, Any]:
    """The request's ``scope["extensions"]`` (the scope is the application's too)."""
    scope = cast(dict[str, Any], cycle.scope)
    extensions: dict[str, Any] = scope.setdefault("extensions", {})
    return extensions


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
    """A uvicorn server running the bridge (``server.run()`` or ``await server.serve()``).

    It speaks HTTP/1.1 through ``GuardedH11Protocol`` (the settings' head and body
    timeouts) and caps connections at ``settings.max_connections``.
    """
    settings = settings or BridgeSettings()
    app = create_app(settings, broker)
    protocol = type("BridgeH11Protocol", (GuardedH11Protocol,), {
        "header_timeout": settings.header_timeout, "body_timeout": settings.body_timeout,
        "send_timeout": settings.send_timeout, "incidents": app.state.incidents})
    options: dict[str, Any] = {"http": protocol, "limit_concurrency": settings.max_connections,
                               **config}
    uv_config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=log_level,
        access_log=access_log, timeout_graceful_shutdown=settings.shutdown_timeout,
        **options)
    return _BridgeServer(uv_config, app.state.broker)


def _bytes_or_none(value: int) -> int | None:
    return value or None


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
    allowed_host: Annotated[list[str] | None, typer.Option(
        help="A Host name the bridge answers to, any port (repeatable; '*': any). "
             "Default: the loopback names when bound to loopback, any otherwise.")]
    = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        help="An origin allowed to read through CORS (repeatable; none by default).")]
    = None,
    max_body: Annotated[int, typer.Option(help="Largest ingest body, in bytes.")]
    = 4 * 1024 * 1024,
    retention: Annotated[int, typer.Option(help="Events kept per thread for replay.")]
    = DEFAULTS.count,
    retention_age: Annotated[float, typer.Option(
        help="Seconds an event is kept for replay (0: no age limit).")]
    = DEFAULTS.age or 0.0,
    retention_bytes: Annotated[int, typer.Option(
        help="Bytes of events kept per thread for replay (0: no byte limit).")]
    = DEFAULTS.bytes or 0,
    retention_total_bytes: Annotated[int, typer.Option(
        help="Bytes of events kept for replay over all threads (0: no limit).")]
    = DEFAULTS.total_bytes or 0,
    idle_expiry: Annotated[float, typer.Option(
        help="Seconds before an idle thread with no reader is forgotten (0: never).")]
    = DEFAULTS.idle_expiry or 0.0,
    max_write_bytes: Annotated[int, typer.Option(
        help="Most bytes of events in one write to one client (what a stalled client "
             "can pin).")] = 256 * 1024,
    send_timeout: Annotated[float, typer.Option(
        help="Seconds a client has to take one write before it is dropped (0: never).")]
    = 30.0,
    header_timeout: Annotated[float, typer.Option(
        help="Seconds a client has to send a request's line and headers.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(
        help="Seconds a client has to send a request's whole body.")] = 60.0,
    max_connections: Annotated[int, typer.Option(
        help="Most connections served at once; beyond, requests get 503 (0: no cap).")] = 0,
    tracing_ui_url: Annotated[str, typer.Option(
        help="Trace link template of the page; {trace_id} is replaced.")]
    = "http://127.0.0.1:16686/trace/{trace_id}",
    heartbeat: Annotated[float, typer.Option(help="Seconds between heartbeat comments.")] = 15.0,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    access_log: Annotated[bool, typer.Option(
        help="Log each request (paths only; a query token would show there).")] = False,
) -> None:
    """Run the SSE bridge: agents post events, browsers and tools follow them live."""
    try:
        settings = BridgeSettings(
            host=host, port=port, token=token or None, broker_url=broker or None,
            allowed_hosts=tuple(allowed_host) if allowed_host else None,
            cors_origins=tuple(cors_origin or ()),
            max_body_bytes=max_body, retention_count=retention,
            retention_age=retention_age or None,
            retention_bytes=_bytes_or_none(retention_bytes),
            retention_total_bytes=_bytes_or_none(retention_total_bytes),
            idle_expiry=idle_expiry or None, max_write_bytes=max_write_bytes,
            send_timeout=send_timeout or None, header_timeout=header_timeout,
            body_timeout=body_timeout, max_connections=max_connections or None,
            tracing_ui_url=tracing_ui_url, heartbeat=heartbeat)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not is_loopback(host):
        if settings.token is None:
            print(f"warning: listening on {host} with no token: anyone who can reach it can "
                  f"read and post events (set {TOKEN_ENV})", file=sys.stderr)
        if settings.allowed_hosts is None:
            print("warning: any Host name is answered; name this bridge's with "
                  "--allowed-host", file=sys.stderr)
    # The bridge's own lines (incidents) look like uvicorn's, on the same stream.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s:  %(message)s")
    create_server(settings, log_level=log_level, access_log=access_log).run()
