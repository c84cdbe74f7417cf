"""The bridge's life: readiness while shutting down, the sweeper's expiry and age
retention, and the command's warning when it listens beyond loopback with no token."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from otel_events.bridge import BridgeSettings, create_app
from tests.bridge_support import read_events, running_bridge, turn_events, wait_for


async def test_readyz_reports_shutting_down_while_healthz_stays_alive() -> None:
    app = create_app(BridgeSettings())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        assert (await client.get("/readyz")).status_code == 200
        app.state.broker.close()  # what the server does first when it shuts down
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (503, {"status": "shutting down"})
        assert (await client.get("/healthz")).status_code == 200


def test_the_sweeper_forgets_idle_threads() -> None:
    with running_bridge(sweep_interval=0.05, idle_expiry=0.2) as bridge:
        assert bridge.post("idle", turn_events("t1", 1)).status_code == 200
        assert bridge.client.get("/v1/threads/idle").status_code == 200
        wait_for(lambda: bridge.client.get("/v1/threads/idle").status_code == 404,
                 what="the idle thread to expire")
        assert bridge.client.get("/v1/threads").json() == {"threads": []}


async def test_age_retention_lets_old_events_go_and_a_new_reader_gets_a_reset() -> None:
    with running_bridge(sweep_interval=0.05, retention_age=0.2) as bridge:
        events = turn_events("t1", 2)
        assert bridge.post("aged", events).status_code == 200
        async with httpx.AsyncClient(base_url=bridge.url) as client:
            deadline = time.monotonic() + 10
            while True:  # poll with a deadline until the sweeper trimmed them
                got = await read_events(client, "/v1/threads/aged/events", 1)
                if got[0].event == "reset" or time.monotonic() > deadline:
                    break
        assert got[0].event == "reset"
        body = got[0].json()
        assert body["reason"] == "history_expired"
        # The state outlives the events it was folded from.
        assert body["snapshot"]["turns"][0]["status"] == "completed"


@pytest.mark.parametrize(("host", "warned"), [("0.0.0.0", True), ("127.0.0.1", False)])
def test_the_command_warns_when_listening_beyond_loopback_without_a_token(
        host: str, warned: bool) -> None:
    command = [str(Path(sys.executable).parent / "otel-events"), "bridge", "--host", host,
               "--port", "0", "--log-level", "info"]
    env = {k: v for k, v in os.environ.items() if k != "OTEL_EVENTS_BRIDGE_TOKEN"}
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    try:
        seen: list[str] = []
        assert process.stderr is not None
        for line in process.stderr:  # uvicorn says when it is up: stop reading there
            seen.append(line)
            if "Uvicorn running" in line or "Application startup complete" in line:
                break
    finally:
        process.terminate()
        process.wait(10)
    text = "".join(seen)
    assert ("warning: listening on 0.0.0.0 with no token" in text) is warned, text


async def test_a_failing_sweep_is_reported_and_the_sweeper_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    # A store error that is not "unreachable" (Redis answering READONLY during a
    # failover, OOM...) must not end the sweeper: retention and expiry would stop for
    # the life of the process, silently.
    from otel_events.bridge.memory import MemoryBroker

    third = asyncio.Event()

    class Flaky(MemoryBroker):
        calls = 0

        async def expire(self) -> int:
            Flaky.calls += 1
            if Flaky.calls == 3:
                third.set()
            if Flaky.calls == 1:
                raise RuntimeError("READONLY You can't write against a read only replica.")
            return await super().expire()

    flaky = Flaky()
    app = create_app(BridgeSettings(sweep_interval=0.01), broker=flaky)
    assert app.state.broker is flaky  # an empty memory broker is falsy: it was replaced
    caplog.set_level("WARNING", logger="otel_events.bridge")
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(third.wait(), 10)  # two sweeps after the failed one
    lines = [r.getMessage() for r in caplog.records if "sweep" in r.getMessage()]
    assert lines and "RuntimeError" in lines[0]
    assert "READONLY" not in lines[0]  # an error's text may quote stored data: type only
