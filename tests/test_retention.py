"""``Retention`` is the one place the limits' defaults are written: every place that
applies them takes them from it (the literals appear nowhere else, here included)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from otel_events.bridge import command
from otel_events.bridge.memory import MemoryBroker
from otel_events.bridge.redis import RedisBroker
from otel_events.bridge.settings import BridgeSettings
from otel_events.redis_sink import RedisSink
from otel_events.retention import Retention

DEFAULTS = Retention()
# With Redis the total over all threads is Redis's maxmemory, not a limit of ours.
PER_THREAD = dataclasses.replace(DEFAULTS, total_bytes=None)


def settings_limits(settings: BridgeSettings) -> Retention:
    return Retention(
        count=settings.retention_count, age=settings.retention_age,
        bytes=settings.retention_bytes, total_bytes=settings.retention_total_bytes,
        idle_expiry=settings.idle_expiry, max_threads=settings.max_threads)


def test_bridge_settings_default_to_it() -> None:
    assert settings_limits(BridgeSettings()) == DEFAULTS


def test_the_bridge_command_without_flags_runs_with_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[BridgeSettings] = []

    class Server:
        def run(self) -> None:
            pass

    def create_server(settings: BridgeSettings, **options: Any) -> Server:
        started.append(settings)
        return Server()

    monkeypatch.setattr(command, "create_server", create_server)
    app = typer.Typer(add_completion=False)
    app.command()(command.bridge_command)
    result = CliRunner().invoke(app, [])
    assert result.exit_code == 0, result.output
    assert settings_limits(started[0]) == DEFAULTS


def test_the_memory_broker_defaults_to_it() -> None:
    broker = MemoryBroker()
    assert Retention(
        count=broker.retention_count, age=broker.retention_age,
        bytes=broker.retention_bytes, total_bytes=broker.budget.limit,
        idle_expiry=broker.idle_expiry, max_threads=broker.max_threads) == DEFAULTS


def test_the_redis_broker_defaults_to_it() -> None:
    assert RedisBroker().retention == PER_THREAD  # no connection until first used


def test_the_redis_sink_falls_back_to_it() -> None:
    assert RedisSink("redis://127.0.0.1:1/0").retention == PER_THREAD
