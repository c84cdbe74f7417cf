"""``BridgeSettings``: everything the bridge can be told, with defaults safe on a
workstation (loopback, no CORS, bounded retention)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["BROKER_ENV", "TOKEN_ENV", "BridgeSettings"]

TOKEN_ENV = "OTEL_EVENTS_BRIDGE_TOKEN"
BROKER_ENV = "OTEL_EVENTS_BRIDGE_BROKER"


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
