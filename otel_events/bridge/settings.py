"""``BridgeSettings``: everything the bridge can be told, with defaults safe on a
workstation (loopback, no CORS, bounded retention)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from otel_events.retention import DEFAULTS

__all__ = ["BROKER_ENV", "TOKEN_ENV", "BridgeSettings", "is_loopback"]

TOKEN_ENV = "OTEL_EVENTS_BRIDGE_TOKEN"
BROKER_ENV = "OTEL_EVENTS_BRIDGE_BROKER"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``, IPv6 with or without brackets)
    names this machine's loopback interface."""
    host = host.lower().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class BridgeSettings:
    """Everything the bridge can be told; the defaults are safe on a workstation."""

    host: str = "127.0.0.1"
    port: int = 8765
    #: Bearer token guarding ``/v1/``; ``None``: no token (then keep it on loopback).
    token: str | None = None
    #: Where threads are kept: ``None`` or ``memory`` (this process), or a Redis URL
    #: (``redis://``, ``rediss://``, ``unix://``) shared by every replica.
    broker_url: str | None = None
    #: Origins allowed to read from browsers on other origins (CORS); none by default.
    cors_origins: Sequence[str] = ()
    #: Host names (``Host`` header, any port) this bridge answers to; others get 421,
    #: which stops DNS rebinding. ``None``: the loopback names when bound to loopback,
    #: any host otherwise (then name yours). ``"*"`` in the list allows any.
    allowed_hosts: Sequence[str] | None = None
    max_body_bytes: int = 4 * 1024 * 1024
    #: Events kept per thread for replay, by count and by age (seconds).
    retention_count: int = DEFAULTS.count
    retention_age: float | None = DEFAULTS.age
    #: Bytes of event JSON kept for replay, per thread and over all threads together
    #: (``None``: no byte bound). A thread's own bound keeps at least its newest event;
    #: the total holds whatever the events (biggest threads trimmed first).
    retention_bytes: int | None = DEFAULTS.bytes
    retention_total_bytes: int | None = DEFAULTS.total_bytes
    #: A thread with no event and no reader for this long is forgotten.
    idle_expiry: float | None = DEFAULTS.idle_expiry
    max_threads: int = DEFAULTS.max_threads
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
    #: Most bytes of events in one write to one client (a write holds at least one
    #: event): what a client that stops reading can pin, beside uvicorn's 64 KiB.
    max_write_bytes: int = 256 * 1024
    #: Seconds a client has to send a request's head (line and headers), counted from
    #: the connection (or the end of the previous response), and its whole body.
    #: Slower ones are dropped: a trickle cannot hold a connection (slowloris).
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    #: Most connections served at once (uvicorn's ``limit_concurrency``: beyond it new
    #: requests get 503); ``None``: no cap. Every SSE client holds one.
    max_connections: int | None = None
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
        for name in ("retention_bytes", "retention_total_bytes", "max_connections"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive (or None)")
        if self.max_write_bytes < 1:
            raise ValueError("max_write_bytes must be positive")
        if self.header_timeout <= 0 or self.body_timeout <= 0:
            raise ValueError("header_timeout and body_timeout must be positive")

    def host_allowed(self, host: str) -> bool:
        """Whether a request's ``Host`` name (port removed) is one this bridge answers.

        Loopback literals and ``localhost`` can only come from a page on this machine's
        own origin; any other name reaching a loopback bridge is a rebinding attempt.
        """
        host = host.lower().rstrip(".")
        if self.allowed_hosts is None:
            return not is_loopback(self.host) or is_loopback(host)
        allowed = {name.lower().rstrip(".") for name in self.allowed_hosts}
        return "*" in allowed or host in allowed or host.strip("[]") in allowed
