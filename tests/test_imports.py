"""Agent code pays only for the light core: heavy modules stay out of ``import otel_events``."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Modules the core must not load on import (the protocol's pydantic models, the bridge's
# server stack, HttpSink's HTTP client, the SDK configure() brings, rich).
HEAVY = ("pydantic", "httpx", "redis", "fastapi", "uvicorn", "starlette", "sse_starlette", "rich",
         "asyncio", "otel_events.bridge", "otel_events.protocol", "otel_events.http_sink",
         "opentelemetry.sdk")


def loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return set(out.split())


def heavy_in(modules: set[str], names: tuple[str, ...] = HEAVY) -> set[str]:
    return {name for name in names
            if any(m == name or m.startswith(name + ".") for m in modules)}


def ours(statement: str) -> set[str]:
    """Heavy modules ``statement`` loads beyond what the OpenTelemetry API itself loads
    (some API versions import asyncio, for one)."""
    api = heavy_in(loaded_after("import opentelemetry.trace, opentelemetry.metrics"))
    return heavy_in(loaded_after(statement)) - api


def test_import_otel_events_loads_no_heavy_module() -> None:
    assert ours("import otel_events") == set()


def test_an_emitter_at_work_still_loads_no_heavy_module() -> None:
    statement = ("import otel_events; e = otel_events.EventEmitter('t', 'a'); "
                 "t = e.turn(); t.item('command_execution', 'ls').complete(output={'ok': 1}); "
                 "t.complete(); e.close()")
    assert ours(statement) == set()


def test_the_cli_does_not_load_the_bridge_or_an_http_client() -> None:
    server_side = ("fastapi", "uvicorn", "starlette", "sse_starlette", "httpx",
                   "otel_events.bridge")
    assert heavy_in(loaded_after("import otel_events.cli"), server_side) == set()


@pytest.mark.parametrize(("name", "module"), [
    ("HttpSink", "otel_events.http_sink"), ("RedisSink", "otel_events.redis_sink"),
    ("configure", "otel_events.config"),
    ("parse_event", "otel_events.protocol")])
def test_lazy_names_load_on_first_use(name: str, module: str) -> None:
    import otel_events

    if name in ("HttpSink", "RedisSink"):
        pytest.importorskip("httpx" if name == "HttpSink" else "redis",
                            reason="a sink of an extra ([http], [redis])")
    value = getattr(otel_events, name)
    assert value is getattr(sys.modules[module], name)
